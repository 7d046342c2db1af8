//! The log lines on stderr: `key=value` text for people or one JSON object per line for log
//! shippers (`log_format`), and the request id that ties a request's access line to what the
//! client (or the proxy in front) logged.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use http::{HeaderMap, HeaderValue};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The header a request id comes in and goes back out in.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// The longest request id a client may choose; a longer one is replaced.
pub const MAX_REQUEST_ID: usize = 128;

/// Start writing log lines on stderr in `format`, filtered by `RUST_LOG` if it is set. A second
/// call keeps the first one's logs.
pub fn init(format: LogFormat) {
    // object_store reports each retry at info, rustls-platform-verifier each certificate it
    // refuses at error: the one line a bucket failure deserves is ours, with the cause.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,object_store=warn,rustls_platform_verifier=off".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // Err: a subscriber is already set (a test, or a second call); its lines go on.
    let _ = match format {
        LogFormat::Text => builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).try_init(),
        LogFormat::Json => builder.event_format(JsonLines).try_init(),
    };
}

/// One JSON object per event: `timestamp`, `level`, `target`, `message`, and the event's fields
/// at the top level (where log shippers look for them), numbers as numbers.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(&self, _ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert("timestamp".into(), humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string().into());
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        event.record(&mut JsonFields(&mut line));
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects an event's fields into a JSON object.
struct JsonFields<'a>(&'a mut Map<String, Value>);

impl Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
}

/// A request's id: the client's `X-Request-Id` when it is printable ASCII of at most
/// [`MAX_REQUEST_ID`] characters, else one made here (unique in this process, and across
/// processes by a random prefix). It is logged on the access line and sent back in `X-Request-Id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// The client's id in `headers` if it is one worth keeping, else a new one.
    pub fn from_headers(headers: &HeaderMap) -> RequestId {
        headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| is_valid(v))
            .map_or_else(RequestId::new, |v| RequestId(v.to_owned()))
    }

    /// A new id: this process's random prefix and a count.
    pub fn new() -> RequestId {
        static PREFIX: OnceLock<u32> = OnceLock::new();
        static COUNT: AtomicU64 = AtomicU64::new(0);
        // RandomState's keys are random per process: the first 32 bits of a hash made with them.
        let prefix = *PREFIX.get_or_init(|| RandomState::new().build_hasher().finish() as u32);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        RequestId(format!("{prefix:08x}{:012x}", n & 0xffff_ffff_ffff))
    }

    /// The id as sent and logged.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        // Invariant: a kept id is printable ASCII (checked by `is_valid`), a made one hex digits;
        // both are valid header values.
        HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("-"))
    }
}

impl Default for RequestId {
    fn default() -> Self {
        RequestId::new()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a client's request id is kept: 1 to [`MAX_REQUEST_ID`] printable ASCII characters
/// (no spaces or controls, which would break a `key=value` line or a shipper's parser).
fn is_valid(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_REQUEST_ID && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_is_kept_only_when_printable_and_short() {
        let cases: &[(&[u8], bool)] = &[
            (b"abc-123", true),
            (b"0123456789abcdef0123456789abcdef", true),
            (&[b'x'; MAX_REQUEST_ID], true),
            (&[b'x'; MAX_REQUEST_ID + 1], false),
            (b"", false),
            (b"has space", false),
            (b"tab\there", false),
            (b"caf\xc3\xa9", false),
        ];
        for (raw, kept) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(REQUEST_ID_HEADER, HeaderValue::from_bytes(raw).unwrap());
            let id = RequestId::from_headers(&headers);
            assert_eq!(id.as_str().as_bytes() == *raw, *kept, "{:?}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn made_ids_are_unique_hex() {
        let a = RequestId::from_headers(&HeaderMap::new());
        let b = RequestId::new();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.as_str().len(), 20, "{id}");
            assert!(id.as_str().bytes().all(|c| c.is_ascii_hexdigit()), "{id}");
            assert_eq!(id.header_value().to_str().unwrap(), id.as_str());
        }
    }
}
