//! Docker Hub's pull rate-limit headers, passed from the upstream response that served a request to
//! the client that made it (never stored: a cached answer has no upstream response).

use http::{HeaderMap, HeaderName, HeaderValue};

/// The rate-limit headers regcache passes on.
const NAMES: [&str; 3] = ["ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source"];

/// The rate-limit headers of one upstream response (empty when it had none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RateLimit(Vec<(HeaderName, HeaderValue)>);

impl RateLimit {
    /// The rate-limit headers among `headers` (the first value of each).
    pub fn from_headers(headers: &HeaderMap) -> RateLimit {
        RateLimit(
            NAMES
                .iter()
                .filter_map(|name| headers.get(*name).map(|v| (HeaderName::from_static(name), v.clone())))
                .collect(),
        )
    }

    /// Add them to a response's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.0 {
            headers.insert(name.clone(), value.clone());
        }
    }

    /// Whether the response had none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The pull quota an upstream response announced (`RateLimit-Limit`, `RateLimit-Remaining`;
/// `100;w=21600` is 100 pulls per 21600-second window), each when present and a number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Pulls allowed per window.
    pub limit: Option<u64>,
    /// Pulls left in the current window.
    pub remaining: Option<u64>,
}

impl Quota {
    /// The quota `headers` announce.
    pub fn from_headers(headers: &HeaderMap) -> Quota {
        let number = |name: &str| {
            let value = headers.get(name)?.to_str().ok()?;
            value.split(';').next()?.trim().parse().ok()
        };
        Quota { limit: number("ratelimit-limit"), remaining: number("ratelimit-remaining") }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_rate_limit_headers() {
        let mut upstream = HeaderMap::new();
        upstream.insert("ratelimit-limit", HeaderValue::from_static("100;w=21600"));
        upstream.insert("ratelimit-remaining", HeaderValue::from_static("76;w=21600"));
        upstream.insert("docker-ratelimit-source", HeaderValue::from_static("192.0.2.1"));
        upstream.insert("set-cookie", HeaderValue::from_static("session=secret"));
        let rl = RateLimit::from_headers(&upstream);
        let mut out = HeaderMap::new();
        rl.apply(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(out["ratelimit-remaining"], "76;w=21600");
        assert!(out.get("set-cookie").is_none());
        assert!(RateLimit::from_headers(&HeaderMap::new()).is_empty());
    }

    #[test]
    fn the_quota_is_the_number_before_the_window() {
        let cases = [
            (Some("100;w=21600"), Some("76;w=21600"), Quota { limit: Some(100), remaining: Some(76) }),
            (Some("5000"), Some(" 0 ;w=60"), Quota { limit: Some(5000), remaining: Some(0) }),
            (None, Some("12"), Quota { limit: None, remaining: Some(12) }),
            (Some("lots"), Some("-1;w=1"), Quota::default()),
            (None, None, Quota::default()),
        ];
        for (limit, remaining, want) in cases {
            let mut headers = HeaderMap::new();
            if let Some(l) = limit {
                headers.insert("ratelimit-limit", HeaderValue::from_static(l));
            }
            if let Some(r) = remaining {
                headers.insert("ratelimit-remaining", HeaderValue::from_static(r));
            }
            assert_eq!(Quota::from_headers(&headers), want, "{limit:?} {remaining:?}");
        }
    }
}
