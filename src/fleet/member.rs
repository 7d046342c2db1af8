//! A member's id: its URL as the other members reach it, `http://host:port`, with no path.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use url::Url;

/// A member of the fleet, by the URL the other members reach it at (`http://10.0.0.1:5000`): the
/// string its ownership scores are computed from, so it is kept exactly as written (less a
/// trailing `/`), and every member must list it the same way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberId {
    id: String,
    url: Url,
}

/// Why a member's URL can't be used.
#[derive(Debug, thiserror::Error)]
#[error("{url:?} is not a member URL (http://host:port, no path, no credentials): {why}")]
pub struct MemberError {
    url: String,
    why: &'static str,
}

impl MemberId {
    /// The member at `addr`, over plain HTTP (what `peers_dns` and the default `node` make).
    pub fn from_addr(addr: SocketAddr) -> MemberId {
        // Display puts an IPv6 address in brackets, as a URL needs.
        let id = format!("http://{addr}");
        let url = Url::parse(&id).unwrap_or_else(|_| unreachable!("a socket address makes a URL"));
        MemberId { id, url }
    }

    /// The id, as scored.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The URL of `path` (which starts with `/`) on this member.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.id)
    }

    /// The parsed URL.
    pub fn parsed(&self) -> &Url {
        &self.url
    }
}

impl FromStr for MemberId {
    type Err = MemberError;

    fn from_str(s: &str) -> Result<MemberId, MemberError> {
        let err = |why| MemberError { url: s.to_owned(), why };
        let id = s.strip_suffix('/').unwrap_or(s);
        let url = Url::parse(id).map_err(|_| err("not a URL"))?;
        // Members speak plain HTTP to each other (on a private network, with the fleet's secret).
        if url.scheme() != "http" {
            return Err(err("the scheme must be http"));
        }
        if url.host().is_none() {
            return Err(err("no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err("credentials in the URL"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(err("a path, query or fragment"));
        }
        Ok(MemberId { id: id.to_owned(), url })
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_urls() {
        let cases: [(&str, Option<&str>); 10] = [
            ("http://10.0.0.1:5000", Some("http://10.0.0.1:5000")),
            ("http://10.0.0.1:5000/", Some("http://10.0.0.1:5000")),
            ("http://cache-0.cache:5000", Some("http://cache-0.cache:5000")),
            ("https://cache-0.cache:5000", None),
            ("http://[fd00::1]:5000", Some("http://[fd00::1]:5000")),
            ("ftp://10.0.0.1", None),
            ("http://10.0.0.1:5000/v2", None),
            ("http://u:p@10.0.0.1:5000", None),
            ("10.0.0.1:5000", None),
            ("http://10.0.0.1:5000?x=1", None),
        ];
        for (input, want) in cases {
            let got = input.parse::<MemberId>().ok();
            assert_eq!(got.as_ref().map(MemberId::as_str), want, "{input}");
        }
        let v6 = MemberId::from_addr("[fd00::1]:5000".parse().unwrap());
        assert_eq!(v6.as_str(), "http://[fd00::1]:5000");
        assert_eq!(MemberId::from_addr("10.0.0.2:5000".parse().unwrap()).url("/_fleet/x"), "http://10.0.0.2:5000/_fleet/x");
    }
}
