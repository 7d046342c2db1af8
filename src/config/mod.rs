//! Configuration: the TOML file as written ([`raw`]: serde types that refuse unknown keys, with
//! durations and sizes read by [`units`]), resolved once into a validated [`Config`] (addresses,
//! URLs, credentials and trust roots read and checked), and described for `check-config` with
//! secrets masked ([`Config::describe`]).

mod describe;
mod raw;
mod s3;
mod storage;
#[cfg(test)]
mod tests;
mod units;
mod upstream;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raw::{RawAccess, RawConfig, RawFile, RawFills, RawTls};
pub use s3::{S3Credentials, S3Storage, DEFAULT_S3_REGION, DEFAULT_S3_TIMEOUT};
pub use storage::{BucketBackend, BucketTier, Storage};
pub use units::{parse_duration, parse_size};
pub use upstream::{Credentials, UpstreamConfig};

/// Where regcache listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Where regcache keeps its data when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./regcache-data";
/// The name of the local socket in the data directory.
pub const LOCAL_SOCKET: &str = "regcache.sock";
/// Docker Hub's registry endpoint.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// A configuration that can't be used, with a message fit for one line: a path or value from the
/// file that holds a line break is printed with a space for it.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.replace(['\n', '\r'], " "))]
pub struct ConfigError(String);

/// Settings given on the command line, which win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--upstream`: the URL of the first upstream.
    pub upstream_url: Option<String>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The address to serve on.
    pub listen: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The most bytes of blobs and manifests to keep; `None`: unlimited.
    pub max_size: Option<u64>,
    /// Where `/metrics` and `/healthz` are served instead of `listen`, if set.
    pub admin_listen: Option<SocketAddr>,
    /// Limits on client connections.
    pub connections: Connections,
    /// HTTPS for clients, if configured.
    pub tls: Option<TlsFiles>,
    /// Who may use the mirror.
    pub access: Access,
    /// Disk and time budgets of blob fills.
    pub fills: FillBudget,
    /// Where blobs are kept besides the data directory (`[storage]`).
    pub storage: Storage,
    /// The upstream registries; the first serves plain `/v2/<name>/…` requests.
    pub upstreams: Vec<UpstreamConfig>,
    /// How log lines are written (`log_format`).
    pub log_format: LogFormat,
}

/// How log lines are written on stderr (`log_format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `key=value` lines for people (the default).
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// The word in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Disk and time budgets of blob fills (`[fills]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FillBudget {
    /// Free bytes fills always leave on the data directory's file system.
    pub min_free: u64,
    /// The most bytes the temporary files of all running fills hold together; `None`: only free
    /// space limits them.
    pub max_temp: Option<u64>,
    /// How long a fill nobody reads any more may go on at most.
    pub unread_max: Duration,
    /// The fewest bytes per second a fill nobody reads must get (measured over `rate_window`).
    pub unread_min_rate: u64,
    /// The window the rate of a fill nobody reads is measured over.
    pub rate_window: Duration,
}

impl Default for FillBudget {
    fn default() -> Self {
        FillBudget {
            min_free: 1 << 30,
            max_temp: None,
            unread_max: Duration::from_secs(15 * 60),
            unread_min_rate: 64 << 10,
            rate_window: Duration::from_secs(30),
        }
    }
}

/// The certificate and key files regcache serves HTTPS with (read again on SIGHUP).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Limits on client connections, so that clients that stall can't hold the server's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    /// How long a client has to send a complete request head (and, on a new connection, to start).
    pub header_timeout: Duration,
    /// How long a connection with no request in progress is kept open.
    pub keepalive_timeout: Duration,
    /// How long a response may make no progress (the client doesn't read) before it is dropped.
    pub client_idle_timeout: Duration,
    /// The most client connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            header_timeout: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(120),
            client_idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// The largest `max_connections` accepted: a semaphore holds the permits, and this is far above
/// any real limit and below its maximum.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

/// Access control for the mirror itself.
#[derive(Clone)]
pub struct Access {
    /// `user → bcrypt hash`, from the htpasswd file; empty: no credentials needed.
    pub users: Vec<(String, String)>,
    /// Client networks served; empty: all.
    pub allow: Vec<ipnet::IpNet>,
    /// Wrong credentials an address may send per minute before it gets 429.
    pub max_failures: u32,
}

/// Wrong credentials per address per minute when the configuration doesn't say.
pub const DEFAULT_MAX_FAILURES: u32 = 10;

impl Default for Access {
    fn default() -> Self {
        Access { users: Vec::new(), allow: Vec::new(), max_failures: DEFAULT_MAX_FAILURES }
    }
}

impl fmt::Debug for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("Access")
            .field("users", &users)
            .field("allow", &self.allow)
            .field("max_failures", &self.max_failures)
            .finish()
    }
}

impl Config {
    /// The local socket in the data directory, through which the host's administrator reaches a
    /// running server whatever its TLS and access settings (`regcache warm`).
    pub fn local_socket(&self) -> PathBuf {
        self.data_dir.join(LOCAL_SOCKET)
    }

    /// Read and resolve the configuration: `file` if given, else the embedded defaults.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match file {
            None => RawFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
                raw::parse_toml(&text).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?
            }
        };
        let base = file.and_then(Path::parent).unwrap_or(Path::new("."));
        resolve(raw, overrides, base)
    }

    /// Resolve a configuration from TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, overrides: &Overrides, base: &Path) -> Result<Config, ConfigError> {
        resolve(raw::parse_toml(text).map_err(|e| ConfigError(e.to_string()))?, overrides, base)
    }
}

fn resolve(file: RawFile, over: &Overrides, base: &Path) -> Result<Config, ConfigError> {
    let raw = file.config;
    let connections = resolve_connections(&raw)?;
    let listen = socket_addr("listen address", over.listen.as_deref().or(raw.listen.as_deref()).unwrap_or(DEFAULT_LISTEN))?;
    let admin_listen = raw.admin_listen.as_deref().map(|a| socket_addr("admin_listen address", a)).transpose()?;
    let data_dir = over.data_dir.clone().or(raw.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let max_size = raw.max_size.map(|s| s.0);
    let tls = raw.tls.map(|t| resolve_tls(t, base)).transpose()?;
    let access = match raw.access {
        None => Access::default(),
        Some(a) => resolve_access(a, base)?,
    };
    let fills = resolve_fills(raw.fills.unwrap_or_default(), max_size)?;
    let storage = Storage::resolve(file.storage, base)?;
    let mut raws = raw.upstream;
    if raws.is_empty() {
        raws.push(UpstreamConfig::docker_hub_raw());
    }
    if let Some(url) = &over.upstream_url {
        raws[0].url = url.clone();
    }
    let upstreams = raws.into_iter().map(|u| UpstreamConfig::resolve(u, base)).collect::<Result<Vec<_>, _>>()?;
    for (i, u) in upstreams.iter().enumerate() {
        if upstreams[..i].iter().any(|o| o.name == u.name) {
            return Err(ConfigError(format!("upstream {:?} is configured twice", u.name)));
        }
    }
    let log_format = raw.log_format.unwrap_or_default();
    Ok(Config { listen, data_dir, max_size, admin_listen, connections, tls, access, fills, storage, upstreams, log_format })
}

/// An address to listen on; `what` names it in the message.
fn socket_addr(what: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse().map_err(|e| ConfigError(format!("{what} {text:?}: {e}")))
}

/// A duration that must not be zero; `key` names it in the message.
fn nonzero(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        return Err(ConfigError(format!("{key} must be longer than zero")));
    }
    Ok(d)
}

fn resolve_fills(raw: RawFills, max_size: Option<u64>) -> Result<FillBudget, ConfigError> {
    let d = FillBudget::default();
    Ok(FillBudget {
        min_free: raw.min_free.map_or(d.min_free, |s| s.0),
        // Fills never hold more than the cache may keep.
        max_temp: raw.max_temp.map(|s| s.0).or(max_size),
        unread_max: nonzero("fills: unread_max", raw.unread_max.map_or(d.unread_max, |v| v.0))?,
        unread_min_rate: raw.unread_min_rate.map_or(d.unread_min_rate, |s| s.0),
        rate_window: nonzero("fills: rate_window", raw.rate_window.map_or(d.rate_window, |v| v.0))?,
    })
}

fn resolve_connections(raw: &RawConfig) -> Result<Connections, ConfigError> {
    let d = Connections::default();
    let max_connections = match raw.max_connections {
        None => d.max_connections,
        Some(0) => return Err(ConfigError("max_connections = 0: must be at least 1".into())),
        Some(n) if n > MAX_CONNECTIONS_LIMIT => {
            return Err(ConfigError(format!("max_connections = {n}: at most {MAX_CONNECTIONS_LIMIT}")))
        }
        Some(n) => n,
    };
    Ok(Connections {
        header_timeout: nonzero("header_timeout", raw.header_timeout.map_or(d.header_timeout, |v| v.0))?,
        keepalive_timeout: nonzero("keepalive_timeout", raw.keepalive_timeout.map_or(d.keepalive_timeout, |v| v.0))?,
        client_idle_timeout: nonzero("client_idle_timeout", raw.client_idle_timeout.map_or(d.client_idle_timeout, |v| v.0))?,
        max_connections,
    })
}

/// `[tls]`: the files must load now, so that a server doesn't start without its certificate.
fn resolve_tls(raw: RawTls, base: &Path) -> Result<TlsFiles, ConfigError> {
    let files = TlsFiles { cert: base.join(raw.cert), key: base.join(raw.key) };
    crate::http::load_certified_key(&files).map_err(|e| ConfigError(e.to_string()))?;
    Ok(files)
}

fn resolve_access(raw: RawAccess, base: &Path) -> Result<Access, ConfigError> {
    let users = match raw.htpasswd {
        Some(file) => crate::access::read_htpasswd(&base.join(file)).map_err(|e| ConfigError(format!("access: {e}")))?,
        None => Vec::new(),
    };
    let allow = raw
        .allow
        .iter()
        .map(|a| {
            a.parse::<ipnet::IpNet>()
                .or_else(|_| a.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|e| ConfigError(format!("access: allow {a:?}: {e}")))
        })
        .collect::<Result<_, _>>()?;
    let max_failures = match raw.max_failures {
        Some(0) => return Err(ConfigError("access: max_failures = 0: must be at least 1".into())),
        other => other.unwrap_or(DEFAULT_MAX_FAILURES),
    };
    Ok(Access { users, allow, max_failures })
}

/// A `ca_file` at `path`: PEM holding at least one certificate.
fn read_pem_roots(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    if rustls_pemfile::certs(&mut pem.as_slice()).filter(|c| c.is_ok()).count() == 0 {
        return Err(format!("ca_file {} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

/// A URL as written, for a message: anything between `://` and an `@` before the path is masked,
/// as it may hold a password.
fn mask_userinfo(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else { return raw.to_owned() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => raw.to_owned(),
    }
}
