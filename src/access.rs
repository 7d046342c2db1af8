//! Who may use the mirror: an address allow list (403 before any work) and htpasswd Basic
//! credentials (401 with a Basic challenge, so `docker login` works). Verified credentials are
//! remembered by their hash, so bcrypt runs once per client, not once per request.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest as _, Sha256};

use crate::config::Access;
use crate::sync::lock;

/// How many verified credentials are remembered before the memory is cleared.
const REMEMBERED: usize = 10_000;

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The address is not allowed: 403.
    Forbidden,
    /// Credentials are missing or wrong: 401.
    Unauthorized,
}

/// The access policy, ready to check requests.
pub struct Gate {
    policy: Access,
    // A std Mutex: a map lookup or insert, never held across bcrypt or an await.
    verified: Mutex<HashMap<[u8; 32], bool>>,
}

impl Gate {
    /// A gate for `policy`.
    pub fn new(policy: Access) -> Gate {
        Gate { policy, verified: Mutex::new(HashMap::new()) }
    }

    /// Whether the client's address is allowed.
    pub fn allows(&self, peer: IpAddr) -> Result<(), Refusal> {
        let peer = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
            v4 => v4,
        };
        if self.policy.allow.is_empty() || self.policy.allow.iter().any(|n| n.contains(&peer)) {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    /// Whether the request carries valid credentials (always, when no htpasswd is configured).
    pub fn authenticates(&self, authorization: Option<&HeaderValue>) -> Result<(), Refusal> {
        if self.policy.users.is_empty() {
            return Ok(());
        }
        let (user, password) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic)
            .ok_or(Refusal::Unauthorized)?;
        let key: [u8; 32] = Sha256::digest(format!("{user}\0{password}").as_bytes()).into();
        if let Some(ok) = lock(&self.verified).get(&key) {
            return if *ok { Ok(()) } else { Err(Refusal::Unauthorized) };
        }
        let ok = self
            .policy
            .users
            .iter()
            .any(|(u, hash)| *u == user && bcrypt::verify(&password, hash).unwrap_or(false));
        let mut verified = lock(&self.verified);
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert(key, ok);
        if ok {
            Ok(())
        } else {
            Err(Refusal::Unauthorized)
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> HeaderValue {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        HeaderValue::from_str(&format!("Basic {v}")).unwrap()
    }

    #[test]
    fn allow_list() {
        let gate = Gate::new(Access { users: vec![], allow: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()] });
        assert_eq!(gate.allows("10.1.2.3".parse().unwrap()), Ok(()));
        assert_eq!(gate.allows("::ffff:10.1.2.3".parse().unwrap()), Ok(()));
        assert_eq!(gate.allows("::1".parse().unwrap()), Ok(()));
        assert_eq!(gate.allows("192.168.1.1".parse().unwrap()), Err(Refusal::Forbidden));
        let open = Gate::new(Access::default());
        assert_eq!(open.allows("192.168.1.1".parse().unwrap()), Ok(()));
        assert_eq!(open.authenticates(None), Ok(()));
    }

    #[test]
    fn htpasswd_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let gate = Gate::new(Access { users: vec![("ci".into(), hash)], allow: vec![] });
        assert_eq!(gate.authenticates(Some(&basic("ci", "s3cret"))), Ok(()));
        assert_eq!(gate.authenticates(Some(&basic("ci", "s3cret"))), Ok(()), "remembered");
        assert_eq!(gate.authenticates(Some(&basic("ci", "wrong"))), Err(Refusal::Unauthorized));
        assert_eq!(gate.authenticates(Some(&basic("other", "s3cret"))), Err(Refusal::Unauthorized));
        assert_eq!(gate.authenticates(None), Err(Refusal::Unauthorized));
        assert_eq!(gate.authenticates(Some(&HeaderValue::from_static("Bearer x"))), Err(Refusal::Unauthorized));
        assert_eq!(gate.authenticates(Some(&HeaderValue::from_static("Basic !!!"))), Err(Refusal::Unauthorized));
    }
}
