//! Durations and sizes as the file writes them: humantime strings (`"90s"`, `"1h 30m"`, `"0"`)
//! through `humantime-serde`, byte sizes (`"50GiB"`, `"1 MB"`) through `bytesize`. Whole numbers
//! are accepted too: seconds (the upstream timeouts were always written so) and bytes.

use std::fmt;
use std::time::Duration;

use serde::de::{self, IntoDeserializer as _, Unexpected};
use serde::{Deserialize, Deserializer};

/// A duration from the file: a humantime string or whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HumanDuration(pub Duration);

/// A byte size from the file: a string with an optional unit, or whole bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HumanSize(pub u64);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanDuration;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"90s\", \"5m\" or \"1h 30m\", or whole seconds")
            }

            fn visit_u64<E: de::Error>(self, secs: u64) -> Result<HumanDuration, E> {
                Ok(HumanDuration(Duration::from_secs(secs)))
            }

            fn visit_i64<E: de::Error>(self, secs: i64) -> Result<HumanDuration, E> {
                let secs = u64::try_from(secs).map_err(|_| E::invalid_value(Unexpected::Signed(secs), &self))?;
                self.visit_u64(secs)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanDuration, E> {
                // Trimmed: the hand-written parser this replaces accepted " 0 ".
                humantime_serde::deserialize(text.trim().into_deserializer())
                    .map(HumanDuration)
                    .map_err(|e: E| E::custom(format!("invalid duration {text:?}: {e}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl<'de> Deserialize<'de> for HumanSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = HumanSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"50GiB\" or \"500MB\", or whole bytes")
            }

            fn visit_u64<E: de::Error>(self, bytes: u64) -> Result<HumanSize, E> {
                Ok(HumanSize(bytes))
            }

            fn visit_i64<E: de::Error>(self, bytes: i64) -> Result<HumanSize, E> {
                let bytes = u64::try_from(bytes).map_err(|_| E::invalid_value(Unexpected::Signed(bytes), &self))?;
                self.visit_u64(bytes)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<HumanSize, E> {
                let size = bytesize::ByteSize::deserialize(text.trim().into_deserializer())
                    .map_err(|_: E| E::invalid_value(Unexpected::Str(text), &self))?;
                Ok(HumanSize(size.as_u64()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A size given on the command line, read as the file's are: `"50GiB"`, `"500MB"`, `"1048576"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: Result<HumanSize, de::value::Error> = HumanSize::deserialize(text.into_deserializer());
    size.map(|s| s.0).map_err(|e| format!("size {text:?}: {e}"))
}

/// A duration given on the command line, read as the file's are: `"0"`, `"90s"`, `"7d"`,
/// `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration: Result<HumanDuration, de::value::Error> = HumanDuration::deserialize(text.into_deserializer());
    duration.map(|d| d.0).map_err(|e| format!("duration {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases: [(&str, Option<Duration>); 8] = [
            ("0", Some(Duration::ZERO)),
            (" 0 ", Some(Duration::ZERO)),
            ("0s", Some(Duration::ZERO)),
            ("90s", Some(Duration::from_secs(90))),
            ("1h 30m", Some(Duration::from_secs(5400))),
            ("200ms", Some(Duration::from_millis(200))),
            ("7d", Some(Duration::from_secs(7 * 86400))),
            ("soon", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), want, "{text:?}");
        }
        let err = parse_duration("soon").unwrap_err();
        assert!(err.contains("soon") && err.contains("duration"), "{err}");
    }

    #[test]
    fn sizes() {
        let cases: [(&str, Option<u64>); 8] = [
            ("0", Some(0)),
            ("1048576", Some(1 << 20)),
            ("50GiB", Some(50 << 30)),
            (" 2TiB ", Some(2 << 40)),
            ("1 MB", Some(1_000_000)),
            ("64KiB", Some(64 << 10)),
            ("5%", None),
            ("lots", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_size(text).ok(), want, "{text:?}");
        }
        assert!(parse_size("lots").unwrap_err().contains("lots"));
    }

    #[test]
    fn whole_numbers_are_seconds_and_bytes() {
        #[derive(Deserialize)]
        struct T {
            d: HumanDuration,
            s: HumanSize,
        }
        let t: T = toml::from_str("d = 10\ns = 4096").unwrap();
        assert_eq!((t.d.0, t.s.0), (Duration::from_secs(10), 4096));
        assert!(toml::from_str::<T>("d = -1\ns = 1").is_err());
        assert!(toml::from_str::<T>("d = 1\ns = -1").is_err());
    }
}
