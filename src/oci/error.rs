//! The OCI error codes, who is to blame for a failure, and the JSON body every error response
//! carries.

use serde::Serialize;

/// An error code from the distribution spec (plus `TOOMANYREQUESTS`, which Docker Hub uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Provided digest did not match uploaded content, or is malformed.
    DigestInvalid,
    /// Manifest unknown.
    ManifestUnknown,
    /// Manifest invalid (too large, unreadable).
    ManifestInvalid,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Manifest tag did not match URI, or is malformed.
    TagInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// A range that can't be satisfied.
    RangeInvalid,
    /// Upstream failed or timed out (not a spec code; clients treat it as opaque).
    Unavailable,
}

impl ErrorCode {
    /// The code's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }

    /// The code named by `s`, as upstream registries send it.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        Some(match s {
            "BLOB_UNKNOWN" => ErrorCode::BlobUnknown,
            "DIGEST_INVALID" => ErrorCode::DigestInvalid,
            "MANIFEST_UNKNOWN" => ErrorCode::ManifestUnknown,
            "MANIFEST_INVALID" => ErrorCode::ManifestInvalid,
            "NAME_INVALID" => ErrorCode::NameInvalid,
            "NAME_UNKNOWN" => ErrorCode::NameUnknown,
            "TAG_INVALID" => ErrorCode::TagInvalid,
            "UNAUTHORIZED" => ErrorCode::Unauthorized,
            "DENIED" => ErrorCode::Denied,
            "UNSUPPORTED" => ErrorCode::Unsupported,
            "TOOMANYREQUESTS" => ErrorCode::TooManyRequests,
            _ => return None,
        })
    }
}

/// Who is to blame for a failure, carried as data by every error a client can see (as pingora's
/// errors carry `ErrorSource`). The status a client gets follows from it (`http::error`), and so
/// does the `detail` of the error body: `{"blame":"upstream"}` or `{"blame":"regcache"}` when the
/// client is not at fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client: a malformed or refused request, or one for something that does not exist.
    Client,
    /// The upstream registry: it refused regcache, failed, timed out or sent something unusable.
    Upstream,
    /// regcache itself: its disk or index, or a task of its own that died.
    Internal,
}

impl Blame {
    /// The name clients see in an error's `detail`.
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Internal => "regcache",
        }
    }
}

/// `{"errors":[{"code":…,"message":…,"detail":…}]}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    errors: Vec<ErrorEntry>,
}

#[derive(Debug, Serialize)]
struct ErrorEntry {
    code: &'static str,
    message: String,
    detail: serde_json::Value,
}

impl ErrorBody {
    /// A body with one error.
    pub fn new(code: ErrorCode, message: impl Into<String>, detail: serde_json::Value) -> ErrorBody {
        ErrorBody { errors: vec![ErrorEntry { code: code.as_str(), message: message.into(), detail }] }
    }

    /// The JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising a struct of strings and a Value cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The code (if regcache knows it) and message of the first error in an upstream's error body,
/// if it is one.
pub fn first_error(body: &[u8]) -> Option<(Option<ErrorCode>, Option<String>)> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: String,
        message: Option<String>,
    }
    let parsed: Body = serde_json::from_slice(body).ok()?;
    let first = parsed.errors.into_iter().next()?;
    Some((ErrorCode::parse(&first.code), first.message.filter(|m| !m.is_empty())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape() {
        let b = ErrorBody::new(ErrorCode::BlobUnknown, "blob unknown", serde_json::json!({"digest": "x"}));
        let v: serde_json::Value = serde_json::from_slice(&b.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "blob unknown");
        assert_eq!(v["errors"][0]["detail"]["digest"], "x");
    }

    #[test]
    fn blame_names() {
        let cases = [(Blame::Client, "client"), (Blame::Upstream, "upstream"), (Blame::Internal, "regcache")];
        for (blame, name) in cases {
            assert_eq!(blame.as_str(), name);
        }
    }

    #[test]
    fn reads_upstream_codes() {
        let docker_hub = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(first_error(docker_hub), Some((Some(ErrorCode::ManifestUnknown), Some("manifest unknown".into()))));
        assert_eq!(first_error(br#"{"errors":[]}"#), None);
        let hub = br#"{"errors":[{"code":"TOOMANYREQUESTS","message":"You have reached your pull rate limit."}]}"#;
        assert_eq!(first_error(hub), Some((Some(ErrorCode::TooManyRequests), Some("You have reached your pull rate limit.".into()))));
        assert_eq!(first_error(br#"{"errors":[{"code":"X","message":""}]}"#), Some((None, None)));
        assert_eq!(first_error(b"<html>"), None);
    }
}
