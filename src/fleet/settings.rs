//! `[fleet]`: who this member is, who the others are, and the secret they share; read once at
//! start-up. A missing or empty secret is a configuration error (exit 2), as is a `node` that is
//! not among static `peers`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::member::{MemberError, MemberId};

/// The most members a fleet has: static `peers` beyond it are refused, `peers_dns` answers are cut
/// to it (the list comes from outside).
pub const MAX_MEMBERS: usize = 64;

/// `[fleet]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFleet {
    node: Option<String>,
    peers: Option<Vec<String>>,
    peers_dns: Option<String>,
    secret_file: Option<PathBuf>,
}

/// `[fleet]`, resolved.
#[derive(Clone, Debug)]
pub struct FleetSettings {
    /// This member.
    pub node: MemberId,
    /// Every member, this one included.
    pub peers: Peers,
    /// What every member-to-member request carries.
    pub secret: Secret,
}

/// Where the members are listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peers {
    /// Listed in the file.
    Static(Vec<MemberId>),
    /// Every A/AAAA record of `host`, at `port` over plain HTTP, re-resolved now and then.
    Dns {
        /// The name to resolve (a Kubernetes headless Service).
        host: String,
        /// The members' port.
        port: u16,
    },
}

/// Why `[fleet]` can't be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A member URL that can't be used.
    #[error("{0}")]
    Member(#[from] MemberError),
    /// Neither or both of `peers` and `peers_dns`.
    #[error("set exactly one of peers and peers_dns")]
    PeersOrDns,
    /// Static `peers` that can't be a fleet.
    #[error("peers: {0}")]
    Peers(String),
    /// A `peers_dns` that isn't `host:port`.
    #[error("peers_dns = {0:?}: must be host:port")]
    Dns(String),
    /// No `node`, and no address to make one from.
    #[error("node is not set and no non-loopback address was found to make it from; set node")]
    NoNode,
    /// The secret file.
    #[error("secret_file {path}: {why}")]
    Secret {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No `secret_file`.
    #[error("secret_file is required: every member-to-member request carries the fleet's secret")]
    NoSecret,
}

impl FleetSettings {
    /// Resolve `[fleet]` for a server listening on `listen`; relative paths are taken from `base`.
    pub fn resolve(raw: RawFleet, listen: SocketAddr, base: &Path) -> Result<FleetSettings, SettingsError> {
        let secret = match raw.secret_file {
            Some(file) => Secret::read(&base.join(file))?,
            None => return Err(SettingsError::NoSecret),
        };
        let node = match raw.node {
            Some(n) => n.parse()?,
            None => default_node(listen).ok_or(SettingsError::NoNode)?,
        };
        let peers = match (raw.peers, raw.peers_dns) {
            (Some(list), None) => Peers::Static(static_peers(list, &node)?),
            (None, Some(dns)) => dns_peers(&dns)?,
            _ => return Err(SettingsError::PeersOrDns),
        };
        Ok(FleetSettings { node, peers, secret })
    }

    /// The settings as `check-config` shows them (the secret left out).
    pub fn describe(&self) -> String {
        let peers = match &self.peers {
            Peers::Static(list) => format!("peers = [{}]", list.iter().map(|m| format!("{:?}", m.as_str())).collect::<Vec<_>>().join(", ")),
            Peers::Dns { host, port } => format!("peers_dns = \"{host}:{port}\""),
        };
        format!("[fleet]\nnode = {:?}\n{peers}\nsecret = (set)\n", self.node.as_str())
    }
}

fn static_peers(list: Vec<String>, node: &MemberId) -> Result<Vec<MemberId>, SettingsError> {
    if list.len() > MAX_MEMBERS {
        return Err(SettingsError::Peers(format!("at most {MAX_MEMBERS} members")));
    }
    let peers = list.iter().map(|p| p.parse()).collect::<Result<Vec<MemberId>, _>>()?;
    for (i, p) in peers.iter().enumerate() {
        if peers[..i].contains(p) {
            return Err(SettingsError::Peers(format!("{p} is listed twice")));
        }
    }
    if !peers.contains(node) {
        return Err(SettingsError::Peers(format!("this node ({node}) is not listed; list every member, this one included, as the others reach it")));
    }
    Ok(peers)
}

fn dns_peers(dns: &str) -> Result<Peers, SettingsError> {
    let bad = || SettingsError::Dns(dns.to_owned());
    let (host, port) = dns.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() || host.contains('/') {
        return Err(bad());
    }
    Ok(Peers::Dns { host: host.to_owned(), port })
}

/// `http://<first non-loopback address>:<listen port>`: the listen address itself when it is one,
/// else the address this host reaches the outside from (a UDP socket "connected" to a
/// documentation address sends nothing, but is given the source address of that route).
fn default_node(listen: SocketAddr) -> Option<MemberId> {
    let ip = listen.ip();
    if !ip.is_loopback() && !ip.is_unspecified() {
        return Some(MemberId::from_addr(listen));
    }
    let probes: [(IpAddr, IpAddr); 2] = [
        (Ipv4Addr::UNSPECIFIED.into(), Ipv4Addr::new(192, 0, 2, 1).into()),
        (Ipv6Addr::UNSPECIFIED.into(), Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into()),
    ];
    probes.into_iter().find_map(|(any, doc)| {
        let socket = UdpSocket::bind((any, 0)).ok()?;
        socket.connect((doc, 9)).ok()?;
        let local = socket.local_addr().ok()?.ip();
        (!local.is_loopback() && !local.is_unspecified()).then(|| MemberId::from_addr(SocketAddr::new(local, listen.port())))
    })
}

/// The fleet's shared secret: the trimmed contents of `secret_file`. Never shown.
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Read it from `path`: it must be non-empty printable ASCII (it travels in a header).
    pub fn read(path: &Path) -> Result<Secret, SettingsError> {
        let err = |why: String| SettingsError::Secret { path: path.to_owned(), why };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        Secret::new(text.trim()).map_err(|why| err(why.to_owned()))
    }

    /// A secret of `text`.
    pub fn new(text: &str) -> Result<Secret, &'static str> {
        if text.is_empty() {
            return Err("empty");
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces (e.g. `openssl rand -hex 32`)");
        }
        Ok(Secret(text.into()))
    }

    /// The secret as it is sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is the secret, in time that depends on neither (the two are hashed,
    /// and the hashes compared without an early exit).
    pub fn matches(&self, presented: &[u8]) -> bool {
        let (a, b) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(presented));
        a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(toml_text: &str, dir: &Path) -> Result<FleetSettings, String> {
        let raw: RawFleet = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        FleetSettings::resolve(raw, "0.0.0.0:5000".parse().unwrap(), dir).map_err(|e| e.to_string())
    }

    #[test]
    fn fleet_tables() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "t0ps3cret\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let three = r#"peers = ["http://10.0.0.1:5000", "http://10.0.0.2:5000", "http://10.0.0.3:5000"]"#;
        let ok = format!("node = \"http://10.0.0.2:5000\"\n{three}\nsecret_file = \"s\"\n");
        let s = resolve(&ok, dir.path()).unwrap();
        assert_eq!(s.node.as_str(), "http://10.0.0.2:5000");
        assert!(matches!(&s.peers, Peers::Static(p) if p.len() == 3));
        assert!(s.secret.matches(b"t0ps3cret") && !s.secret.matches(b"t0ps3cre") && !s.secret.matches(b""));
        assert!(!format!("{s:?}{}", s.describe()).contains("t0ps3cret"), "the secret is never shown");
        let dns = resolve("peers_dns = \"regcache-peers.cache.svc:5000\"\nnode = \"http://10.0.0.9:5000\"\nsecret_file = \"s\"\n", dir.path()).unwrap();
        assert_eq!(dns.peers, Peers::Dns { host: "regcache-peers.cache.svc".into(), port: 5000 });
        // (table, part of the error)
        let cases: [(String, &str); 9] = [
            (format!("node = \"http://10.0.0.2:5000\"\n{three}\n"), "secret_file is required"),
            (format!("node = \"http://10.0.0.2:5000\"\n{three}\nsecret_file = \"empty\"\n"), "empty"),
            (format!("node = \"http://10.0.0.2:5000\"\n{three}\nsecret_file = \"missing\"\n"), "secret_file"),
            (format!("node = \"http://10.0.0.9:5000\"\n{three}\nsecret_file = \"s\"\n"), "is not listed"),
            ("node = \"http://10.0.0.1:5000\"\nsecret_file = \"s\"\n".to_owned(), "exactly one of peers and peers_dns"),
            (format!("node = \"http://10.0.0.1:5000\"\n{three}\npeers_dns = \"x:1\"\nsecret_file = \"s\"\n"), "exactly one"),
            ("node = \"http://10.0.0.1:5000\"\npeers = [\"http://10.0.0.1:5000\", \"http://10.0.0.1:5000/\"]\nsecret_file = \"s\"\n".to_owned(), "listed twice"),
            ("node = \"10.0.0.1:5000\"\npeers_dns = \"x:1\"\nsecret_file = \"s\"\n".to_owned(), "not a member URL"),
            ("node = \"http://10.0.0.1:5000\"\npeers_dns = \"x\"\nsecret_file = \"s\"\n".to_owned(), "must be host:port"),
        ];
        for (table, want) in cases {
            let err = resolve(&table, dir.path()).unwrap_err();
            assert!(err.contains(want), "{table}: {err}");
        }
        assert!(resolve("bogus = 1\n", dir.path()).unwrap_err().contains("unknown field"));
    }

    #[test]
    fn the_default_node_is_a_non_loopback_address_at_the_listen_port() {
        let given = default_node("10.1.2.3:5000".parse().unwrap()).unwrap();
        assert_eq!(given.as_str(), "http://10.1.2.3:5000");
        // On a host without a route there is none: the configuration says to set it.
        if let Some(found) = default_node("0.0.0.0:5123".parse().unwrap()) {
            assert!(found.as_str().ends_with(":5123"), "{found}");
            assert!(!found.as_str().contains("127.0.0.1") && !found.as_str().contains("0.0.0.0"), "{found}");
        }
    }

    #[test]
    fn secrets() {
        assert!(Secret::new("").is_err());
        assert!(Secret::new("two words").is_err());
        assert!(Secret::new("abc").unwrap().matches(b"abc"));
    }
}
