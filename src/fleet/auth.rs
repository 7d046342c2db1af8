//! The member-to-member API's headers, and who may use it: a request must carry the fleet's
//! secret ([`SECRET_HEADER`]).

use http::HeaderMap;

use super::settings::Secret;
use crate::oci::Blame;

/// The fleet's secret, on every member-to-member request.
pub const SECRET_HEADER: &str = "x-regcache-fleet-secret";
/// Marks a request from a member: its answer is never asked of another member (no loops).
pub const HOP_HEADER: &str = "x-regcache-fleet-hop";
/// The upstream (its configured name) a blob is fetched from.
pub const UPSTREAM_HEADER: &str = "x-regcache-upstream";
/// The repository a blob is fetched from, as the client named it.
pub const REPOSITORY_HEADER: &str = "x-regcache-repository";

tokio::task_local! {
    /// The id of the client request being answered on this task (set by `http::App::handle`),
    /// which a fill it starts passes on to the member it asks.
    pub static REQUEST_ID: Option<String>;
}

/// The id of the client request being answered on this task, if any.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok().flatten()
}

/// Why a member-to-member request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecretRefused {
    /// No secret: 401.
    #[error("the fleet's secret is required")]
    Missing,
    /// A wrong secret: 403.
    #[error("wrong fleet secret")]
    Wrong,
}

impl SecretRefused {
    /// Always the asker's doing.
    pub fn blame(&self) -> Blame {
        Blame::Client
    }
}

/// Whether `headers` carry `secret`.
pub fn check(secret: &Secret, headers: &HeaderMap) -> Result<(), SecretRefused> {
    match headers.get(SECRET_HEADER) {
        None => Err(SecretRefused::Missing),
        Some(v) if secret.matches(v.as_bytes()) => Ok(()),
        Some(_) => Err(SecretRefused::Wrong),
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn the_secret_is_checked() {
        let secret = Secret::new("s3cret").unwrap();
        let with = |name: &'static str, v: &str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_str(v).unwrap());
            h
        };
        assert_eq!(check(&secret, &HeaderMap::new()), Err(SecretRefused::Missing));
        assert_eq!(check(&secret, &with(SECRET_HEADER, "s3cre")), Err(SecretRefused::Wrong));
        assert_eq!(check(&secret, &with(SECRET_HEADER, "")), Err(SecretRefused::Wrong));
        assert_eq!(check(&secret, &with(SECRET_HEADER, "s3cret")), Ok(()));
    }
}
