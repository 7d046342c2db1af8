//! The `Range` request header: one `bytes=` range, or nothing.

use crate::cache::RangeRequest;

/// The single byte range asked for. Anything else — several ranges, other units, a last position
/// before the first, garbage — is ignored, as RFC 9110 allows, and the whole blob is served.
/// Positions too large for a `u64` saturate to `u64::MAX`: past the end of any blob, which
/// [`RangeRequest::resolve`] then treats like any other position.
pub fn parse_range(value: &str) -> Option<RangeRequest> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        // Only digits, so the one way parsing fails is overflow.
        Some(s.parse().unwrap_or(u64::MAX))
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(RangeRequest::Suffix(num(b)?)),
        (false, true) => Some(RangeRequest::From(num(a)?, None)),
        (false, false) => {
            let (start, end) = (num(a)?, num(b)?);
            (start <= end).then_some(RangeRequest::From(start, Some(end)))
        }
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("bytes=0-99", Some(RangeRequest::From(0, Some(99)))),
            ("bytes=100-", Some(RangeRequest::From(100, None))),
            ("bytes=-500", Some(RangeRequest::Suffix(500))),
            (" bytes= 5 - 9 ", Some(RangeRequest::From(5, Some(9)))),
            ("bytes=9-5", None),
            ("bytes=0-1,4-5", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("bytes=+1-2", None),
            ("items=0-1", None),
            ("", None),
            ("bytes=0-18446744073709551615", Some(RangeRequest::From(0, Some(u64::MAX)))),
            ("bytes=5-18446744073709551615", Some(RangeRequest::From(5, Some(u64::MAX)))),
            ("bytes=99999999999999999999999-", Some(RangeRequest::From(u64::MAX, None))),
            ("bytes=0-99999999999999999999999", Some(RangeRequest::From(0, Some(u64::MAX)))),
            ("bytes=-99999999999999999999999", Some(RangeRequest::Suffix(u64::MAX))),
            ("bytes=99999999999999999999999-5", None),
            ("bytes=-0", Some(RangeRequest::Suffix(0))),
            ("bytes=5", None),
            ("bytes=--5", None),
            ("bytes=1-2-3", None),
            ("bytes=0x10-", None),
            ("bytes=\u{0661}-", None),
            ("bytes", None),
            ("Bytes=0-1", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_range(input), want, "{input:?}");
        }
    }
}
