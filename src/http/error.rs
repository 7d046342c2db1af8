//! The one place errors become HTTP responses: every error a client sees is an OCI error body with
//! the status that fits who is to blame.

use http::{header, HeaderValue, StatusCode};
use serde_json::json;

use super::route::RouteError;
use super::{full, LogOutcome, Resp};
use crate::access::Refusal;
use crate::cache::CacheError;
use crate::oci::{ErrorBody, ErrorCode};
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

/// An OCI error response.
pub fn oci_error(status: StatusCode, code: ErrorCode, message: &str, detail: serde_json::Value) -> Resp {
    let body = ErrorBody::new(code, message, detail).to_json();
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.extensions_mut().insert(LogOutcome::Error);
    resp
}

/// The response for a request the access policy refuses: 401 with a Basic challenge for missing or
/// wrong credentials (so `docker login` asks for them), 429 with `Retry-After` for an address that
/// sent too many wrong ones lately.
pub fn refused(refusal: Refusal) -> Resp {
    match refusal {
        Refusal::Unauthorized => {
            let mut r = oci_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "credentials required", serde_json::Value::Null);
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"regcache\""));
            r
        }
        Refusal::TooManyFailures(wait) => {
            let secs = wait.as_secs().max(1);
            let message = format!("too many wrong credentials from this address; try again in {secs} s");
            let mut r = oci_error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, &message, serde_json::Value::Null);
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
    }
}

/// The response for a routing error.
pub fn route_error(e: &RouteError) -> Resp {
    oci_error(e.status, e.code, &e.message, serde_json::Value::Null)
}

/// The response for a cache error about `what`.
pub fn rescue(e: &CacheError, what: Resource) -> Resp {
    let message = e.to_string();
    match e {
        CacheError::Upstream(u) => upstream_error(u, what, &message),
        CacheError::Corrupt(_) => oci_error(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, &message, json!({"blame": "upstream"})),
        CacheError::ManifestInvalid(_) => {
            oci_error(StatusCode::BAD_GATEWAY, ErrorCode::ManifestInvalid, &message, json!({"blame": "upstream"}))
        }
        CacheError::ManifestTooLarge => {
            oci_error(StatusCode::BAD_GATEWAY, ErrorCode::ManifestInvalid, &message, json!({"blame": "upstream"}))
        }
        CacheError::RangeNotSatisfiable { size } => {
            let mut r = oci_error(StatusCode::RANGE_NOT_SATISFIABLE, ErrorCode::RangeInvalid, &message, serde_json::Value::Null);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            r
        }
        CacheError::Storage(_) => {
            tracing::error!(error = %message, "local storage failure");
            oci_error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable, &message, json!({"blame": "regcache"}))
        }
    }
}

fn upstream_error(u: &UpstreamError, what: Resource, message: &str) -> Resp {
    let upstream = json!({"blame": "upstream"});
    match u {
        UpstreamError::Status { status, code, retry_after, rate_limit, .. } => match status.as_u16() {
            404 => {
                let code = match code {
                    Some(c @ (ErrorCode::ManifestUnknown | ErrorCode::BlobUnknown | ErrorCode::NameUnknown)) => *c,
                    _ => match what {
                        Resource::Manifest => ErrorCode::ManifestUnknown,
                        Resource::Blob => ErrorCode::BlobUnknown,
                        Resource::Repository => ErrorCode::NameUnknown,
                    },
                };
                oci_error(StatusCode::NOT_FOUND, code, message, serde_json::Value::Null)
            }
            // regcache authenticates upstream with its own credentials: a refusal means the repository
            // doesn't exist or needs credentials regcache lacks. Asking the client to log in would not help.
            401 | 403 => oci_error(StatusCode::FORBIDDEN, ErrorCode::Denied, message, upstream),
            429 => {
                let mut r = oci_error(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TooManyRequests, message, upstream);
                if let Some(v) = retry_after {
                    r.headers_mut().insert(header::RETRY_AFTER, v.clone());
                }
                rate_limit.apply(r.headers_mut());
                r
            }
            _ => oci_error(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message, upstream),
        },
        UpstreamError::Timeout(_) => oci_error(StatusCode::GATEWAY_TIMEOUT, ErrorCode::Unavailable, message, upstream),
        UpstreamError::Connect(_) | UpstreamError::Protocol(_) | UpstreamError::TooLarge(_) => {
            oci_error(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, message, upstream)
        }
        UpstreamError::Interrupted(_) => {
            tracing::error!(error = %message, "a shared upstream call died");
            oci_error(StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Unavailable, message, json!({"blame": "regcache"}))
        }
    }
}
