//! The one place errors become HTTP responses. Every error a client can see says who is to blame
//! ([`Blame`], as data on the error); each is described here as a [`Failure`] (what kind of
//! failure, the blame, the message and any headers), and [`Failure::answer`] alone turns kind and
//! blame into a status and an OCI code. Every response is an OCI error body whose `detail` names
//! the blame when the client is not at fault (`{"blame":"upstream"}`, `{"blame":"regcache"}`).

use http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

use super::route::{RouteError, RouteErrorKind};
use super::{full, LogOutcome, Resp};
use crate::access::Rejected;
use crate::cache::CacheError;
use crate::oci::{Blame, ErrorBody, ErrorCode};
use crate::upstream::UpstreamError;

/// What a request was about, which decides the code of a 404.
#[derive(Clone, Copy, Debug)]
pub enum Resource {
    /// A manifest.
    Manifest,
    /// A blob.
    Blob,
    /// A repository (tag list).
    Repository,
}

/// The response for a request the access policy refuses: 401 with a Basic challenge for missing or
/// wrong credentials (so `docker login` asks for them), 429 with `Retry-After` for an address that
/// sent too many wrong ones lately.
pub fn rejected(rejected: Rejected) -> Resp {
    Failure::from_rejected(&rejected).respond()
}

/// The response for a member-to-member request without the fleet's secret (401) or with a wrong
/// one (403): an OCI error body, nothing else.
pub fn fleet_refused(refused: crate::fleet::auth::SecretRefused) -> Resp {
    use crate::fleet::auth::SecretRefused;
    let kind = match refused {
        SecretRefused::Missing => Kind::Unauthorized,
        SecretRefused::Wrong => Kind::Denied,
    };
    Failure::new(kind, refused.blame(), refused.to_string()).respond()
}

/// The response for a routing error.
pub fn route_error(e: &RouteError) -> Resp {
    Failure::from_route(e).respond()
}

/// The response for a cache error about `what`.
pub fn rescue(e: &CacheError, what: Resource) -> Resp {
    Failure::from_cache(e, what).respond()
}

/// The status and code a routing error gets (for the route table's test).
#[cfg(test)]
pub(super) fn route_answer(e: &RouteError) -> (StatusCode, ErrorCode) {
    Failure::from_route(e).answer()
}

/// What kind of failure it was, as far as the status depends on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Something could not be used: the client's request, the upstream's answer, or regcache's
    /// own work. The status follows the blame.
    Failed(ErrorCode),
    /// Nothing by that name.
    NotFound(ErrorCode),
    /// A write: regcache is a read-only mirror.
    ReadOnly(ErrorCode),
    /// Credentials are required.
    Unauthorized,
    /// Access is refused.
    Denied,
    /// Too many requests: come back later.
    TooManyRequests,
    /// A range past the end of a blob.
    RangeNotSatisfiable,
    /// The upstream took too long.
    TimedOut,
}

/// An error as the one mapping sees it: what kind, whose fault, what to tell the client.
#[derive(Debug)]
struct Failure {
    kind: Kind,
    blame: Blame,
    message: String,
    /// Headers the answer carries besides the body's (`Retry-After`, `WWW-Authenticate`, …).
    headers: HeaderMap,
}

impl Failure {
    fn new(kind: Kind, blame: Blame, message: impl Into<String>) -> Failure {
        Failure { kind, blame, message: message.into(), headers: HeaderMap::new() }
    }

    fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Failure {
        self.headers.insert(name, value);
        self
    }

    /// The status and OCI code: the one place an error's status is chosen.
    fn answer(&self) -> (StatusCode, ErrorCode) {
        match (self.kind, self.blame) {
            (Kind::Failed(code), Blame::Client) => (StatusCode::BAD_REQUEST, code),
            (Kind::Failed(code), Blame::Upstream) => (StatusCode::BAD_GATEWAY, code),
            (Kind::Failed(code), Blame::Internal) => (StatusCode::INTERNAL_SERVER_ERROR, code),
            (Kind::NotFound(code), _) => (StatusCode::NOT_FOUND, code),
            (Kind::ReadOnly(code), _) => (StatusCode::METHOD_NOT_ALLOWED, code),
            (Kind::Unauthorized, _) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            (Kind::Denied, _) => (StatusCode::FORBIDDEN, ErrorCode::Denied),
            (Kind::TooManyRequests, _) => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests),
            (Kind::RangeNotSatisfiable, _) => (StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid),
            (Kind::TimedOut, _) => (StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable),
        }
    }

    /// The body's `detail`: who is to blame, unless it is the client.
    fn detail(&self) -> serde_json::Value {
        match self.blame {
            Blame::Client => serde_json::Value::Null,
            blame @ (Blame::Upstream | Blame::Internal) => json!({"blame": blame.as_str()}),
        }
    }

    /// The OCI error response; regcache's own failures are logged as errors.
    fn respond(self) -> Resp {
        if self.blame == Blame::Internal {
            tracing::error!(error = %self.message, "regcache failed a request");
        }
        let (status, code) = self.answer();
        let body = ErrorBody::new(code, &self.message, self.detail()).to_json();
        let mut resp = http::Response::new(full(body));
        *resp.status_mut() = status;
        *resp.headers_mut() = self.headers;
        resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        resp.extensions_mut().insert(LogOutcome::Error);
        resp
    }

    fn from_rejected(rejected: &Rejected) -> Failure {
        match rejected {
            Rejected::Unauthorized => Failure::new(Kind::Unauthorized, rejected.blame(), "credentials required")
                .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"regcache\"")),
            Rejected::TooManyFailures(wait) => {
                let secs = wait.as_secs().max(1);
                let message = format!("too many wrong credentials from this address; try again in {secs} s");
                Failure::new(Kind::TooManyRequests, rejected.blame(), message)
                    .with_header(header::RETRY_AFTER, HeaderValue::from(secs))
            }
        }
    }

    fn from_route(e: &RouteError) -> Failure {
        let kind = match e.kind {
            RouteErrorKind::Malformed => Kind::Failed(e.code),
            RouteErrorKind::NotFound => Kind::NotFound(e.code),
            RouteErrorKind::ReadOnly => Kind::ReadOnly(e.code),
        };
        Failure::new(kind, e.blame(), e.message.clone())
    }

    fn from_cache(e: &CacheError, what: Resource) -> Failure {
        let message = e.to_string();
        let kind = match e {
            CacheError::Upstream(u) => return Failure::from_upstream(u, what, message),
            CacheError::Corrupt(_) | CacheError::Storage(_) => Kind::Failed(ErrorCode::Unavailable),
            CacheError::ManifestInvalid(_) | CacheError::ManifestTooLarge => Kind::Failed(ErrorCode::ManifestInvalid),
            CacheError::RangeNotSatisfiable { size } => {
                let failure = Failure::new(Kind::RangeNotSatisfiable, e.blame(), message);
                return match HeaderValue::from_str(&format!("bytes */{size}")) {
                    Ok(v) => failure.with_header(header::CONTENT_RANGE, v),
                    Err(_) => failure,
                };
            }
        };
        Failure::new(kind, e.blame(), message)
    }

    fn from_upstream(u: &UpstreamError, what: Resource, message: String) -> Failure {
        let kind = match u {
            UpstreamError::Status { status, code, retry_after, rate_limit, .. } => match status.as_u16() {
                404 => Kind::NotFound(match code {
                    Some(c @ (ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)) => *c,
                    _ => match what {
                        Resource::Manifest => ErrorCode::ManifestUnknown,
                        Resource::Blob => ErrorCode::BlobUnknown,
                        Resource::Repository => ErrorCode::NameUnknown,
                    },
                }),
                // regcache authenticates upstream with its own credentials: a refusal means the
                // repository doesn't exist or needs credentials regcache lacks. Asking the client to
                // log in would not help.
                401 | 403 => Kind::Denied,
                429 => {
                    let mut failure = Failure::new(Kind::TooManyRequests, u.blame(), message);
                    if let Some(v) = retry_after {
                        failure.headers.insert(header::RETRY_AFTER, v.clone());
                    }
                    rate_limit.apply(&mut failure.headers);
                    return failure;
                }
                _ => Kind::Failed(ErrorCode::Unavailable),
            },
            UpstreamError::Timeout(_) => Kind::TimedOut,
            UpstreamError::Connect(_)
            | UpstreamError::Protocol(_)
            | UpstreamError::TooLarge(_)
            | UpstreamError::Interrupted(_) => Kind::Failed(ErrorCode::Unavailable),
        };
        Failure::new(kind, u.blame(), message)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;
    use crate::fill::FillError;
    use crate::singleflight::CallDied;
    use crate::upstream::RateLimit;

    fn status(s: u16, code: Option<ErrorCode>) -> UpstreamError {
        UpstreamError::Status {
            status: StatusCode::from_u16(s).unwrap(),
            code,
            retry_after: None,
            rate_limit: RateLimit::default(),
            message: "m".into(),
        }
    }

    /// The status, OCI code and `detail` of an error response, and its headers.
    async fn parts(resp: Resp) -> (u16, String, Value, HeaderMap) {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        (status, v["errors"][0]["code"].as_str().unwrap().to_owned(), v["errors"][0]["detail"].clone(), headers)
    }

    const UPSTREAM: Blame = Blame::Upstream;
    const CLIENT: Blame = Blame::Client;
    const INTERNAL: Blame = Blame::Internal;

    /// Every cache error (and so every upstream and fill error) → status, code, blame. A change of
    /// status is one line in `Failure::answer` and one here.
    #[tokio::test]
    async fn cache_errors_map_to_status_code_and_blame() {
        use CacheError as C;
        use Resource::{Blob, Manifest, Repository};
        let cases: Vec<(CacheError, Resource, u16, &str, Blame)> = vec![
            (C::Upstream(status(404, None)), Manifest, 404, "MANIFEST_UNKNOWN", CLIENT),
            (C::Upstream(status(404, None)), Blob, 404, "BLOB_UNKNOWN", CLIENT),
            (C::Upstream(status(404, None)), Repository, 404, "NAME_UNKNOWN", CLIENT),
            (C::Upstream(status(404, Some(ErrorCode::NameUnknown))), Manifest, 404, "NAME_UNKNOWN", CLIENT),
            (C::Upstream(status(404, Some(ErrorCode::Denied))), Blob, 404, "BLOB_UNKNOWN", CLIENT),
            (C::Upstream(status(401, None)), Manifest, 403, "DENIED", UPSTREAM),
            (C::Upstream(status(403, Some(ErrorCode::Denied))), Blob, 403, "DENIED", UPSTREAM),
            (C::Upstream(status(429, None)), Blob, 429, "TOOMANYREQUESTS", UPSTREAM),
            (C::Upstream(status(500, None)), Manifest, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(status(503, None)), Blob, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(status(400, None)), Manifest, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(status(405, None)), Manifest, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(UpstreamError::Timeout("t".into())), Blob, 504, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(UpstreamError::Connect("c".into())), Blob, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(UpstreamError::Protocol("p".into())), Manifest, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(UpstreamError::TooLarge(4)), Manifest, 502, "UNAVAILABLE", UPSTREAM),
            (C::Upstream(UpstreamError::Interrupted(CallDied)), Blob, 500, "UNAVAILABLE", INTERNAL),
            (C::Corrupt("c".into()), Blob, 502, "UNAVAILABLE", UPSTREAM),
            (C::ManifestInvalid(crate::oci::ManifestError::NotJson), Manifest, 502, "MANIFEST_INVALID", UPSTREAM),
            (C::ManifestTooLarge, Manifest, 502, "MANIFEST_INVALID", UPSTREAM),
            (C::RangeNotSatisfiable { size: 3 }, Blob, 416, "RANGE_INVALID", CLIENT),
            (C::Storage("s".into()), Blob, 500, "UNAVAILABLE", INTERNAL),
            (FillError::Upstream(status(403, None)).into(), Blob, 403, "DENIED", UPSTREAM),
            (FillError::Corrupt("c".into()).into(), Blob, 502, "UNAVAILABLE", UPSTREAM),
            (FillError::Disk("d".into()).into(), Blob, 500, "UNAVAILABLE", INTERNAL),
        ];
        for (e, what, want_status, want_code, blame) in cases {
            assert_eq!(e.blame(), blame, "{e:?}");
            let (status, code, detail, _) = parts(rescue(&e, what)).await;
            assert_eq!((status, code.as_str()), (want_status, want_code), "{e:?} about {what:?}");
            let want_detail = match blame {
                Blame::Client => Value::Null,
                Blame::Upstream => json!({"blame": "upstream"}),
                Blame::Internal => json!({"blame": "regcache"}),
            };
            assert_eq!(detail, want_detail, "{e:?}");
        }
    }

    /// A fill error says the same blame as the cache error it becomes.
    #[test]
    fn fill_errors_keep_their_blame() {
        let cases = [
            (FillError::Upstream(status(404, None)), CLIENT),
            (FillError::Upstream(status(502, None)), UPSTREAM),
            (FillError::Upstream(UpstreamError::Interrupted(CallDied)), INTERNAL),
            (FillError::Corrupt("c".into()), UPSTREAM),
            (FillError::Disk("d".into()), INTERNAL),
        ];
        for (e, blame) in cases {
            assert_eq!(e.blame(), blame, "{e:?}");
            assert_eq!(CacheError::from(e.clone()).blame(), blame, "{e:?}");
        }
    }

    #[tokio::test]
    async fn route_errors_are_the_clients() {
        let cases = [
            (RouteErrorKind::Malformed, ErrorCode::DigestInvalid, 400, "DIGEST_INVALID"),
            (RouteErrorKind::Malformed, ErrorCode::Unsupported, 400, "UNSUPPORTED"),
            (RouteErrorKind::NotFound, ErrorCode::NameUnknown, 404, "NAME_UNKNOWN"),
            (RouteErrorKind::NotFound, ErrorCode::ManifestUnknown, 404, "MANIFEST_UNKNOWN"),
            (RouteErrorKind::ReadOnly, ErrorCode::Unsupported, 405, "UNSUPPORTED"),
        ];
        for (kind, code, want_status, want_code) in cases {
            let e = RouteError::new(kind, code, "m");
            assert_eq!(e.blame(), CLIENT);
            let (status, code, detail, _) = parts(route_error(&e)).await;
            assert_eq!((status, code.as_str(), detail), (want_status, want_code, Value::Null), "{kind:?}");
        }
    }

    #[tokio::test]
    async fn refusals_are_the_clients_and_say_how_to_get_in() {
        assert_eq!(Rejected::Unauthorized.blame(), CLIENT);
        let (status, code, detail, headers) = parts(rejected(Rejected::Unauthorized)).await;
        assert_eq!((status, code.as_str(), detail), (401, "UNAUTHORIZED", Value::Null));
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Basic realm=\"regcache\"");

        let wait = Rejected::TooManyFailures(Duration::from_millis(300));
        assert_eq!(wait.blame(), CLIENT);
        let (status, code, detail, headers) = parts(rejected(wait)).await;
        assert_eq!((status, code.as_str(), detail), (429, "TOOMANYREQUESTS", Value::Null));
        assert_eq!(headers[header::RETRY_AFTER], "1", "at least a second");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    }

    #[tokio::test]
    async fn headers_travel_with_the_error() {
        let mut limited = HeaderMap::new();
        limited.insert("ratelimit-remaining", HeaderValue::from_static("0;w=21600"));
        let e = CacheError::Upstream(UpstreamError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: Some(ErrorCode::TooManyRequests),
            retry_after: Some(HeaderValue::from_static("17")),
            rate_limit: RateLimit::from_headers(&limited),
            message: "slow down".into(),
        });
        let (_, _, _, headers) = parts(rescue(&e, Resource::Blob)).await;
        assert_eq!(headers[header::RETRY_AFTER], "17");
        assert_eq!(headers["ratelimit-remaining"], "0;w=21600");

        let (_, _, _, headers) = parts(rescue(&CacheError::RangeNotSatisfiable { size: 42 }, Resource::Blob)).await;
        assert_eq!(headers[header::CONTENT_RANGE], "bytes */42");
    }
}
