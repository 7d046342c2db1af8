//! Configuration: the raw TOML as written (unknown keys refused), resolved once into a validated
//! [`Config`] with parsed addresses, URLs, credentials and trust roots.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::oci::RegistryHost;

/// Where regcache listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5000";
/// Where regcache keeps its data when nothing says otherwise.
pub const DEFAULT_DATA_DIR: &str = "./regcache-data";
/// The name of the local socket in the data directory.
pub const LOCAL_SOCKET: &str = "regcache.sock";
/// Docker Hub's registry endpoint.
pub const DOCKER_HUB_URL: &str = "https://registry-1.docker.io";

/// A configuration that can't be used, with a message fit for one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    max_size: Option<String>,
    admin_listen: Option<String>,
    header_timeout: Option<String>,
    keepalive_timeout: Option<String>,
    client_idle_timeout: Option<String>,
    max_connections: Option<usize>,
    tls: Option<RawTls>,
    access: Option<RawAccess>,
    fills: Option<RawFills>,
    storage: Option<RawStorage>,
    fleet: Option<crate::fleet::RawFleet>,
    #[serde(default)]
    upstream: Vec<RawUpstream>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStorage {
    backend: Option<String>,
    endpoint: Option<String>,
    region: Option<String>,
    bucket: Option<String>,
    prefix: Option<String>,
    path_style: Option<bool>,
    access_key_id: Option<String>,
    secret_access_key_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    bucket_max_size: Option<String>,
    timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFills {
    min_free: Option<String>,
    max_temp: Option<String>,
    unread_max: Option<String>,
    unread_min_rate: Option<String>,
    rate_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    htpasswd: Option<PathBuf>,
    #[serde(default)]
    allow: Vec<String>,
    max_failures: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    url: String,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    auth_hosts: Vec<String>,
    #[serde(default)]
    redirect_hosts: Vec<String>,
    connect_timeout: Option<u64>,
    response_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    tag_ttl: Option<String>,
    stale_max: Option<String>,
}

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
    /// The fleet this node is a member of (`[fleet]`), if any.
    pub fleet: Option<crate::fleet::FleetSettings>,
    /// The upstream registries; the first serves plain `/v2/<name>/…` requests.
    pub upstreams: Vec<UpstreamConfig>,
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

/// `min_free` when not set.
pub const DEFAULT_MIN_FREE: &str = "1GiB";
/// `unread_max` when not set.
pub const DEFAULT_UNREAD_MAX: &str = "15m";
/// `unread_min_rate` when not set.
pub const DEFAULT_UNREAD_MIN_RATE: &str = "64KiB";
/// `rate_window` when not set.
pub const DEFAULT_RATE_WINDOW: &str = "30s";

/// Where blobs are kept (`[storage]`).
#[derive(Debug, Clone, Default)]
pub enum Storage {
    /// In the data directory only: the default.
    #[default]
    Local,
    /// In an S3-compatible bucket shared by many nodes; the data directory is this node's hot tier.
    S3(Box<S3Storage>),
}

/// An S3-compatible bucket (`[storage] backend = "s3"`).
#[derive(Clone)]
pub struct S3Storage {
    /// The service's URL; `None`: AWS's own endpoint for `region`.
    pub endpoint: Option<Url>,
    /// The region requests are signed for.
    pub region: String,
    /// The bucket's name.
    pub bucket: String,
    /// The key prefix everything is kept under, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// Whether the bucket is named in the path (`endpoint/bucket/key`: MinIO, SeaweedFS, Garage)
    /// rather than in the host name (`bucket.endpoint/key`: AWS).
    pub path_style: bool,
    /// The access key; `None`: the standard AWS environment variables.
    pub credentials: Option<S3Credentials>,
    /// Extra PEM trust roots, already read.
    pub ca_pem: Option<Vec<u8>>,
    /// The most bytes to keep in the bucket, if limited.
    pub bucket_max_size: Option<u64>,
    /// The longest a bucket request may take to connect, or go without any progress.
    pub timeout: Duration,
}

/// `[storage] region` when not set.
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// `[storage] timeout` when not set.
pub const DEFAULT_S3_TIMEOUT: Duration = Duration::from_secs(30);

/// An S3 access key. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    /// The access key id.
    pub access_key_id: String,
    /// The secret access key, read from `secret_access_key_file`.
    pub secret_access_key: String,
}

impl fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3Credentials({}, ***)", self.access_key_id)
    }
}

impl fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Storage")
            .field("endpoint", &self.endpoint.as_ref().map(Url::as_str))
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_pem.is_some())
            .field("bucket_max_size", &self.bucket_max_size)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Storage {
    /// Its effective settings, one per line, the secret masked.
    fn describe(&self) -> String {
        let s3 = match self {
            Storage::Local => return "storage = local (blobs in data_dir only)\n".to_owned(),
            Storage::S3(s3) => s3,
        };
        let mut s = String::from("[storage] backend = s3 (data_dir is the hot tier)\n");
        match &s3.endpoint {
            Some(e) => s.push_str(&format!("  endpoint = {e}\n")),
            None => s.push_str("  endpoint = AWS (by region)\n"),
        }
        s.push_str(&format!("  region = {}\n  bucket = {}\n", s3.region, s3.bucket));
        if s3.prefix.is_empty() {
            s.push_str("  prefix = none\n");
        } else {
            s.push_str(&format!("  prefix = {}\n", s3.prefix));
        }
        s.push_str(&format!("  path_style = {}\n", s3.path_style));
        match &s3.credentials {
            Some(c) => s.push_str(&format!(
                "  access_key_id = {}\n  secret_access_key = ******** (from secret_access_key_file)\n",
                c.access_key_id
            )),
            None => s.push_str("  credentials = from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN\n"),
        }
        s.push_str(&format!("  ca_file = {}\n", if s3.ca_pem.is_some() { "loaded" } else { "system roots only" }));
        match s3.bucket_max_size {
            Some(m) => s.push_str(&format!("  bucket_max_size = {m} bytes\n")),
            None => s.push_str("  bucket_max_size = unlimited\n"),
        }
        s.push_str(&format!("  timeout = {}\n", humantime::format_duration(s3.timeout)));
        s
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

/// One upstream registry.
#[derive(Clone)]
pub struct UpstreamConfig {
    /// The registry host as clients name it (`docker.io`, `ghcr.io`).
    pub name: RegistryHost,
    /// Where to reach it.
    pub url: Url,
    /// Credentials for token and Basic auth.
    pub credentials: Option<Credentials>,
    /// Extra PEM trust roots, already read.
    pub ca_pem: Option<Vec<u8>>,
    /// Hosts besides the upstream's own domain that may receive the credentials.
    pub auth_hosts: Vec<String>,
    /// Hosts the upstream may redirect to (or name as token realm) although they resolve to
    /// loopback, link-local, private or CGNAT addresses.
    pub redirect_hosts: Vec<String>,
    /// Whether this is a private registry, whose redirects may lead into private networks.
    /// `None` (what a file gives): decided from the addresses its host resolves to. Code embedding
    /// regcache may decide it, e.g. tests whose servers are all on loopback.
    pub private_network: Option<bool>,
    /// Limit for establishing a connection.
    pub connect_timeout: Duration,
    /// Limit for the response headers after the request is sent.
    pub response_timeout: Duration,
    /// Limit for a body to go without any bytes.
    pub idle_timeout: Duration,
    /// How long a tag is answered from the cache without asking upstream (0: always revalidate).
    pub tag_ttl: Duration,
    /// How long past its last confirmation a tag may be served while upstream is unavailable.
    pub stale_max: Duration,
}

/// A username and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The username.
    pub username: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, ***)", self.username)
    }
}

impl fmt::Debug for UpstreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamConfig")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_pem.is_some())
            .field("auth_hosts", &self.auth_hosts)
            .field("redirect_hosts", &self.redirect_hosts)
            .field("tag_ttl", &self.tag_ttl)
            .field("stale_max", &self.stale_max)
            .finish()
    }
}

impl Access {
    /// Its effective settings, one per line, hashes not shown.
    fn describe(&self) -> String {
        let mut s = String::new();
        if self.users.is_empty() {
            s.push_str("access.htpasswd = none (no credentials needed)\n");
        } else {
            let users: Vec<&str> = self.users.iter().map(|(u, _)| u.as_str()).collect();
            s.push_str(&format!("access.htpasswd = users {} (hashes not shown)\n", users.join(", ")));
        }
        if !self.users.is_empty() {
            s.push_str(&format!("access.max_failures = {} per address per minute\n", self.max_failures));
        }
        if self.allow.is_empty() {
            s.push_str("access.allow = any address\n");
        } else {
            let nets: Vec<String> = self.allow.iter().map(|n| n.to_string()).collect();
            s.push_str(&format!("access.allow = {}\n", nets.join(", ")));
        }
        s
    }
}

impl UpstreamConfig {
    /// Its effective settings, one per line, the password masked.
    fn describe(&self) -> String {
        let mut s = format!("[[upstream]] {}\n  url = {}\n", self.name, self.url);
        match &self.credentials {
            Some(c) => s.push_str(&format!("  username = {}\n  password = ********\n", c.username)),
            None => s.push_str("  credentials = none (anonymous)\n"),
        }
        s.push_str(&format!("  ca_file = {}\n", if self.ca_pem.is_some() { "loaded" } else { "system roots only" }));
        if !self.auth_hosts.is_empty() {
            s.push_str(&format!("  auth_hosts = {}\n", self.auth_hosts.join(", ")));
        }
        if !self.redirect_hosts.is_empty() {
            s.push_str(&format!("  redirect_hosts = {}\n", self.redirect_hosts.join(", ")));
        }
        s.push_str(&format!(
            "  tag_ttl = {}\n  stale_max = {}\n  timeouts: connect {:?}, response {:?}, idle {:?}\n",
            humantime::format_duration(self.tag_ttl),
            humantime::format_duration(self.stale_max),
            self.connect_timeout,
            self.response_timeout,
            self.idle_timeout
        ));
        s
    }
}

impl Config {
    /// The effective settings, one per line, secrets masked.
    pub fn describe(&self) -> String {
        let mut s = format!("listen = {}\ndata_dir = {}\n", self.listen, self.data_dir.display());
        if let Some(a) = self.admin_listen {
            s.push_str(&format!("admin_listen = {a}\n"));
        }
        match &self.tls {
            Some(t) => s.push_str(&format!("tls = HTTPS with {} (key {})\n", t.cert.display(), t.key.display())),
            None => s.push_str("tls = none (plain HTTP)\n"),
        }
        s.push_str(&self.access.describe());
        let c = &self.connections;
        s.push_str(&format!(
            "header_timeout = {}\nkeepalive_timeout = {}\nclient_idle_timeout = {}\nmax_connections = {}\n",
            humantime::format_duration(c.header_timeout),
            humantime::format_duration(c.keepalive_timeout),
            humantime::format_duration(c.client_idle_timeout),
            c.max_connections
        ));
        match self.max_size {
            Some(m) => s.push_str(&format!("max_size = {m} bytes\n")),
            None => s.push_str("max_size = unlimited\n"),
        }
        let f = &self.fills;
        s.push_str(&format!(
            "fills: min_free {} bytes, max_temp {}, unread_max {}, unread_min_rate {} bytes/s over {}\n",
            f.min_free,
            f.max_temp.map_or("unlimited".to_owned(), |m| format!("{m} bytes")),
            humantime::format_duration(f.unread_max),
            f.unread_min_rate,
            humantime::format_duration(f.rate_window),
        ));
        s.push_str(&self.storage.describe());
        if let Some(fleet) = &self.fleet {
            s.push_str(&fleet.describe());
        }
        for u in &self.upstreams {
            s.push_str(&u.describe());
        }
        s
    }

    /// The local socket in the data directory, through which the host's administrator reaches a
    /// running server whatever its TLS and access settings (`regcache warm`).
    pub fn local_socket(&self) -> PathBuf {
        self.data_dir.join(LOCAL_SOCKET)
    }

    /// Read and resolve the configuration: `file` if given, else the embedded defaults.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let raw = match file {
            None => RawConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read config {}: {e}", path.display())))?;
                parse_toml(&text).map_err(|e| ConfigError(format!("config {}: {e}", path.display())))?
            }
        };
        let base = file.and_then(Path::parent).unwrap_or(Path::new("."));
        resolve(raw, overrides, base)
    }

    /// Resolve a configuration from TOML text; relative paths are taken from `base`.
    pub fn from_toml(text: &str, overrides: &Overrides, base: &Path) -> Result<Config, ConfigError> {
        resolve(parse_toml(text).map_err(|e| ConfigError(e.to_string()))?, overrides, base)
    }
}

/// A file that isn't the TOML regcache reads: serde's message on one line, with its line number
/// when known.
#[derive(Debug, thiserror::Error)]
#[error("{}{message}", .line.map(|n| format!("line {n}: ")).unwrap_or_default())]
struct TomlError {
    line: Option<usize>,
    message: String,
}

/// Parse TOML.
fn parse_toml(text: &str) -> Result<RawConfig, TomlError> {
    toml::from_str(text).map_err(|e| TomlError {
        line: e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        message: e.message().replace('\n', " "),
    })
}

fn resolve(raw: RawConfig, over: &Overrides, base: &Path) -> Result<Config, ConfigError> {
    let connections = resolve_connections(&raw)?;
    let listen_s = over.listen.clone().or(raw.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
    let listen = listen_s
        .parse::<SocketAddr>()
        .map_err(|e| ConfigError(format!("listen address {listen_s:?}: {e}")))?;
    let data_dir = over.data_dir.clone().or(raw.data_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    let max_size = raw.max_size.as_deref().map(parse_size).transpose()?;
    let admin_listen = raw
        .admin_listen
        .map(|a| a.parse::<SocketAddr>().map_err(|e| ConfigError(format!("admin_listen address {a:?}: {e}"))))
        .transpose()?;
    let tls = raw.tls.map(|t| resolve_tls(t, base)).transpose()?;
    let access = match raw.access {
        None => Access::default(),
        Some(a) => resolve_access(a, base)?,
    };
    let fills = resolve_fills(raw.fills.unwrap_or_default(), max_size)?;
    let storage = resolve_storage(raw.storage.unwrap_or_default(), base)?;
    let fleet = raw
        .fleet
        .map(|f| crate::fleet::FleetSettings::resolve(f, listen, base))
        .transpose()
        .map_err(|e| ConfigError(format!("fleet: {e}")))?;

    let mut raws = raw.upstream;
    if raws.is_empty() {
        raws.push(RawUpstream {
            name: crate::oci::DOCKER_HUB.to_owned(),
            url: DOCKER_HUB_URL.to_owned(),
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            auth_hosts: Vec::new(),
            redirect_hosts: Vec::new(),
            connect_timeout: None,
            response_timeout: None,
            idle_timeout: None,
            tag_ttl: None,
            stale_max: None,
        });
    }
    if let Some(url) = &over.upstream_url {
        raws[0].url = url.clone();
    }
    let upstreams = raws.into_iter().map(|u| resolve_upstream(u, base)).collect::<Result<Vec<_>, _>>()?;
    for (i, u) in upstreams.iter().enumerate() {
        if upstreams[..i].iter().any(|o| o.name == u.name) {
            return Err(ConfigError(format!("upstream {:?} is configured twice", u.name)));
        }
    }
    Ok(Config { listen, data_dir, max_size, admin_listen, connections, tls, access, fills, storage, fleet, upstreams })
}

/// `[storage]`: `backend = "local"` takes no other key; `"s3"` needs `bucket`.
fn resolve_storage(raw: RawStorage, base: &Path) -> Result<Storage, ConfigError> {
    let err = |msg: String| ConfigError(format!("storage: {msg}"));
    match raw.backend.as_deref() {
        None | Some("local") => {
            let s3_keys = [
                ("endpoint", raw.endpoint.is_some()),
                ("region", raw.region.is_some()),
                ("bucket", raw.bucket.is_some()),
                ("prefix", raw.prefix.is_some()),
                ("path_style", raw.path_style.is_some()),
                ("access_key_id", raw.access_key_id.is_some()),
                ("secret_access_key_file", raw.secret_access_key_file.is_some()),
                ("ca_file", raw.ca_file.is_some()),
                ("bucket_max_size", raw.bucket_max_size.is_some()),
                ("timeout", raw.timeout.is_some()),
            ];
            match s3_keys.iter().find(|(_, set)| *set) {
                Some((key, _)) => Err(err(format!("{key} is for backend = \"s3\"; backend is \"local\""))),
                None => Ok(Storage::Local),
            }
        }
        Some("s3") => {
            let endpoint = raw.endpoint.as_deref().map(s3_endpoint).transpose().map_err(err)?;
            let region = raw.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_owned());
            if region.is_empty() || !region.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                return Err(err(format!("region {region:?}: letters, digits and '-' only")));
            }
            let bucket = raw.bucket.ok_or_else(|| err("backend = \"s3\" needs bucket".into()))?;
            if !is_bucket_name(&bucket) {
                return Err(err(format!(
                    "bucket {bucket:?}: 3 to 63 lowercase letters, digits, '.' and '-', starting and ending with a letter or digit"
                )));
            }
            let prefix = s3_prefix(raw.prefix.as_deref().unwrap_or("")).map_err(err)?;
            let credentials = match (raw.access_key_id, raw.secret_access_key_file) {
                (Some(access_key_id), Some(file)) => {
                    let path = base.join(file);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| err(format!("cannot read secret_access_key_file {}: {e}", path.display())))?;
                    let secret_access_key = text.trim().to_owned();
                    if secret_access_key.is_empty() {
                        return Err(err(format!("secret_access_key_file {} is empty", path.display())));
                    }
                    if access_key_id.is_empty() {
                        return Err(err("access_key_id is empty".into()));
                    }
                    Some(S3Credentials { access_key_id, secret_access_key })
                }
                (None, None) => None,
                _ => return Err(err("access_key_id and secret_access_key_file go together".into())),
            };
            let ca_pem = raw.ca_file.map(|f| read_pem_roots(&base.join(f))).transpose().map_err(err)?;
            let bucket_max_size = raw
                .bucket_max_size
                .as_deref()
                .map(parse_size)
                .transpose()
                .map_err(|e| err(format!("bucket_max_size: {e}")))?;
            let timeout = match raw.timeout {
                None => DEFAULT_S3_TIMEOUT,
                Some(text) => match parse_duration(&text) {
                    Ok(d) if !d.is_zero() => d,
                    Ok(_) => return Err(err(format!("timeout = {text:?} must be longer than zero"))),
                    Err(e) => return Err(err(format!("timeout = {text:?}: {e}"))),
                },
            };
            let path_style = raw.path_style.unwrap_or(false);
            Ok(Storage::S3(Box::new(S3Storage {
                endpoint,
                region,
                bucket,
                prefix,
                path_style,
                credentials,
                ca_pem,
                bucket_max_size,
                timeout,
            })))
        }
        Some(other) => Err(err(format!("backend = {other:?}: must be \"local\" or \"s3\""))),
    }
}

/// An S3 endpoint: `http://` or `https://` with a host, and nothing after the authority but `/`.
fn s3_endpoint(raw: &str) -> Result<Url, String> {
    let shown = mask_userinfo(raw);
    let url = Url::parse(raw).map_err(|e| format!("endpoint {shown:?}: {e}"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!(
            "endpoint {shown:?} must not hold credentials: use access_key_id and secret_access_key_file"
        ));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("endpoint {shown:?} must be http:// or https:// with a host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("endpoint {shown:?} must not have a path or query"));
    }
    Ok(url)
}

/// An S3 bucket name: 3–63 of `a-z 0-9 . -`, starting and ending with a letter or digit.
fn is_bucket_name(name: &str) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    (3..=63).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && edge(name.chars().next())
        && edge(name.chars().last())
}

/// A key prefix without leading or trailing `/`: segments of letters, digits and `-_.`, none of
/// them empty, `.` or `..`.
fn s3_prefix(raw: &str) -> Result<String, String> {
    let prefix = raw.trim_matches('/');
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let segment_ok = |seg: &str| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    if !prefix.split('/').all(segment_ok) {
        return Err(format!(
            "prefix {raw:?}: '/'-separated segments of letters, digits, '-', '_' and '.' (no empty, '.' or '..' segment)"
        ));
    }
    Ok(prefix.to_owned())
}

/// A `ca_file` at `path`: PEM holding at least one certificate.
fn read_pem_roots(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    if rustls_pemfile::certs(&mut pem.as_slice()).filter(|c| c.is_ok()).count() == 0 {
        return Err(format!("ca_file {} holds no PEM certificate", path.display()));
    }
    Ok(pem)
}

fn resolve_fills(raw: RawFills, max_size: Option<u64>) -> Result<FillBudget, ConfigError> {
    let size = |key: &str, v: Option<String>, default: &str| {
        let text = v.unwrap_or_else(|| default.to_owned());
        parse_size(&text).map_err(|e| ConfigError(format!("fills: {key}: {e}")))
    };
    let duration = |key: &str, v: Option<String>, default: &str| {
        let text = v.unwrap_or_else(|| default.to_owned());
        match parse_duration(&text) {
            Ok(d) if !d.is_zero() => Ok(d),
            Ok(_) => Err(ConfigError(format!("fills: {key} = {text:?} must be longer than zero"))),
            Err(e) => Err(ConfigError(format!("fills: {key} = {text:?}: {e}"))),
        }
    };
    let max_temp = match raw.max_temp {
        Some(text) => Some(size("max_temp", Some(text), "")?),
        // Fills never hold more than the cache may keep.
        None => max_size,
    };
    Ok(FillBudget {
        min_free: size("min_free", raw.min_free, DEFAULT_MIN_FREE)?,
        max_temp,
        unread_max: duration("unread_max", raw.unread_max, DEFAULT_UNREAD_MAX)?,
        unread_min_rate: size("unread_min_rate", raw.unread_min_rate, DEFAULT_UNREAD_MIN_RATE)?,
        rate_window: duration("rate_window", raw.rate_window, DEFAULT_RATE_WINDOW)?,
    })
}

/// The largest `max_connections` accepted.
const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;

fn resolve_connections(raw: &RawConfig) -> Result<Connections, ConfigError> {
    let defaults = Connections::default();
    let duration = |key: &str, v: &Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(text) => match parse_duration(text) {
            Ok(d) if d.is_zero() => Err(ConfigError(format!("{key} = {text:?}: must be more than 0"))),
            Ok(d) => Ok(d),
            Err(e) => Err(ConfigError(format!("{key} = {text:?}: {e}"))),
        },
    };
    let max_connections = match raw.max_connections {
        None => defaults.max_connections,
        Some(0) => return Err(ConfigError("max_connections = 0: must be at least 1".into())),
        // A semaphore holds the permits; far above any real limit, and below its maximum.
        Some(n) if n > MAX_CONNECTIONS_LIMIT => {
            return Err(ConfigError(format!("max_connections = {n}: at most {MAX_CONNECTIONS_LIMIT}")))
        }
        Some(n) => n,
    };
    Ok(Connections {
        header_timeout: duration("header_timeout", &raw.header_timeout, defaults.header_timeout)?,
        keepalive_timeout: duration("keepalive_timeout", &raw.keepalive_timeout, defaults.keepalive_timeout)?,
        client_idle_timeout: duration("client_idle_timeout", &raw.client_idle_timeout, defaults.client_idle_timeout)?,
        max_connections,
    })
}

fn resolve_tls(raw: RawTls, base: &Path) -> Result<TlsFiles, ConfigError> {
    let files = TlsFiles { cert: base.join(raw.cert), key: base.join(raw.key) };
    load_certified_key(&files).map_err(|e| ConfigError(e.to_string()))?;
    Ok(files)
}

/// Why a TLS certificate and key can't be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file can't be read or isn't PEM.
    #[error("tls cert {}: {error}", .path.display())]
    ReadCert {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The certificate file holds no certificate.
    #[error("tls cert {} holds no PEM certificate", .path.display())]
    NoCert {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file can't be read or isn't PEM.
    #[error("tls key {}: {error}", .path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The key file holds no private key.
    #[error("tls key {} holds no PEM private key", .path.display())]
    NoKey {
        /// The key file.
        path: PathBuf,
    },
    /// rustls can't sign with the key.
    #[error("tls key {}: {error}", .path.display())]
    UnusableKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        error: rustls::Error,
    },
    /// The certificate isn't valid.
    #[error("tls cert {}: not a valid certificate: {error}", .path.display())]
    InvalidCert {
        /// The certificate file.
        path: PathBuf,
        /// Why.
        error: rustls::Error,
    },
    /// The certificate is not the key's.
    #[error("tls cert {} and key {} don't match: {error}", .cert.display(), .key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        error: rustls::Error,
    },
    /// rustls refused its own setup.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

/// The certificate chain and key of `files`, ready for rustls.
pub fn load_certified_key(files: &TlsFiles) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let cert_error = |error| TlsError::ReadCert { path: files.cert.clone(), error };
    let key_error = |error| TlsError::ReadKey { path: files.key.clone(), error };
    let cert_pem = std::fs::read(&files.cert).map_err(cert_error)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice()).collect::<Result<_, _>>().map_err(cert_error)?;
    if certs.is_empty() {
        return Err(TlsError::NoCert { path: files.cert.clone() });
    }
    let key_pem = std::fs::read(&files.key).map_err(key_error)?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(key_error)?
        .ok_or_else(|| TlsError::NoKey { path: files.key.clone() })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|error| TlsError::UnusableKey { path: files.key.clone(), error })?;
    let ck = rustls::sign::CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|error| match error {
        rustls::Error::InvalidCertificate(_) => TlsError::InvalidCert { path: files.cert.clone(), error },
        _ => TlsError::Mismatch { cert: files.cert.clone(), key: files.key.clone(), error },
    })?;
    Ok(ck)
}

fn resolve_access(raw: RawAccess, base: &Path) -> Result<Access, ConfigError> {
    let mut users = Vec::new();
    if let Some(file) = raw.htpasswd {
        let path = base.join(file);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ConfigError(format!("access: cannot read htpasswd {}: {e}", path.display())))?;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || ConfigError(format!("access: htpasswd {} line {}: expected user:bcrypt-hash (htpasswd -B)", path.display(), i + 1));
            let (user, hash) = line.split_once(':').ok_or_else(bad)?;
            if user.is_empty() || !["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) {
                return Err(bad());
            }
            users.push((user.to_owned(), hash.to_owned()));
        }
        if users.is_empty() {
            return Err(ConfigError(format!("access: htpasswd {} has no entries", path.display())));
        }
    }
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

fn resolve_upstream(raw: RawUpstream, base: &Path) -> Result<UpstreamConfig, ConfigError> {
    let name = RegistryHost::new(raw.name.trim());
    if name.as_str().is_empty() || name.as_str().contains('/') || name.as_str().contains(char::is_whitespace) {
        return Err(ConfigError(format!("upstream name {:?} must be a registry host such as docker.io", raw.name)));
    }
    let url = upstream_url(&name, &raw.url)?;
    let credentials = upstream_credentials(&name, raw.username, raw.password, raw.password_file, base)?;
    let ca_pem = raw.ca_file.map(|file| read_pem_roots(&base.join(file))).transpose().map_err(|e| ConfigError(format!("upstream {name}: {e}")))?;
    let redirect_hosts = raw
        .redirect_hosts
        .iter()
        .map(|h| {
            url::Host::parse(h.trim()).map(|host| host.to_string()).map_err(|e| {
                ConfigError(format!("upstream {name}: redirect_hosts entry {h:?} must be a host name or IP address: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
    let duration = |key: &str, v: Option<String>, default: &str| {
        let text = v.unwrap_or_else(|| default.to_owned());
        parse_duration(&text).map_err(|e| ConfigError(format!("upstream {name}: {key} = {text:?}: {e}")))
    };
    let tag_ttl = duration("tag_ttl", raw.tag_ttl, "0s")?;
    let stale_max = duration("stale_max", raw.stale_max, "7d")?;
    Ok(UpstreamConfig {
        name,
        url,
        credentials,
        ca_pem,
        auth_hosts: raw.auth_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        redirect_hosts,
        private_network: None,
        connect_timeout: secs(raw.connect_timeout, 10),
        response_timeout: secs(raw.response_timeout, 30),
        idle_timeout: secs(raw.idle_timeout, 60),
        tag_ttl,
        stale_max,
    })
}

/// An upstream's `url`: http or https, a host, no credentials, no path or query.
fn upstream_url(name: &RegistryHost, raw: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(raw).map_err(|e| ConfigError(format!("upstream {name}: url {:?}: {e}", mask_userinfo(raw))))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError(format!(
            "upstream {name}: url must not contain credentials (user:password@); \
             give username and password_file (or password) instead"
        )));
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ConfigError(format!("upstream {name}: url {raw:?} must be http:// or https:// with a host")));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(ConfigError(format!("upstream {name}: url {raw:?} must not have a path or query")));
    }
    Ok(url)
}

/// An upstream's credentials: `username` with `password` or `password_file` (relative to `base`),
/// or none at all.
fn upstream_credentials(
    name: &RegistryHost,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<Credentials>, ConfigError> {
    let password = match (password, password_file) {
        (Some(_), Some(_)) => {
            return Err(ConfigError(format!("upstream {name}: give password or password_file, not both")))
        }
        (Some(p), None) => Some(p),
        (None, Some(file)) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                ConfigError(format!("upstream {name}: cannot read password_file {}: {e}", path.display()))
            })?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, None) => None,
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
        (None, None) => Ok(None),
        _ => Err(ConfigError(format!("upstream {name}: username and password go together"))),
    }
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

/// A size in human form: `"50GiB"`, `"500MB"`, `"1048576"`.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| ConfigError(format!("size {text:?}: {e}")))
}

/// A duration in human form: `"0s"`, `"90s"`, `"5m"`, `"7d"`, `"1h 30m"`.
pub fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    if text.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, &Overrides::default(), Path::new("."))
    }

    #[test]
    fn defaults_mirror_docker_hub() {
        let c = load("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.upstreams.len(), 1);
        assert_eq!(c.upstreams[0].name, "docker.io");
        assert_eq!(c.upstreams[0].url.as_str(), "https://registry-1.docker.io/");
        assert!(c.upstreams[0].name.is_docker_hub());
    }

    #[test]
    fn full_example() {
        let c = load(
            r#"
listen = "0.0.0.0:5001"
data_dir = "/var/lib/regcache"
[[upstream]]
name = "docker.io"
url = "https://registry-1.docker.io"
username = "ci"
password = "s3cret"
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 5001);
        let creds = c.upstreams[0].credentials.clone().unwrap();
        assert_eq!(creds.username, "ci");
        assert!(!format!("{:?}", c).contains("s3cret"), "passwords never appear in Debug");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = load("listen = \"127.0.0.1:1\"\n\n[[upstream]]\nname = \"a\"\nurl = \"http://a\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(err.contains("line 6"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn rejects_bad_values() {
        let cases = [
            ("listen = \"nope\"", "listen address"),
            ("[[upstream]]\nname = \"x\"\nurl = \"not a url\"", "url"),
            ("[[upstream]]\nname = \"x\"\nurl = \"ftp://x\"", "http"),
            ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"/nonexistent/ca.pem\"", "upstream x: cannot read ca_file /nonexistent/ca.pem"),
            ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nca_file = \"/dev/null\"", "upstream x: ca_file /dev/null holds no PEM certificate"),
            ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nusername = \"u\"", "together"),
            ("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\n[[upstream]]\nname = \"x\"\nurl = \"https://y\"", "twice"),
        ];
        for (text, want) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_repeating_them() {
        let cases = [
            "https://ci:hunter2pw@registry.example",
            "https://ci:hunter2pw@registry.example/",
            "https://:hunter2pw@registry.example",
            "https://ci@registry.example",
            "https://ci:hunter2pw@registry.example:99999",
            "https://ci:hunter2pw@registry.example/v2/",
        ];
        for url in cases {
            let err = load(&format!("[[upstream]]\nname = \"x\"\nurl = \"{url}\"")).unwrap_err().to_string();
            assert!(!err.contains("hunter2pw"), "{url}: the password is repeated: {err}");
            if !url.contains("99999") {
                assert!(err.contains("password_file") && err.contains("username"), "{url}: {err}");
            }
        }
        let over = Overrides { upstream_url: Some("https://ci:hunter2pw@registry.example".into()), ..Default::default() };
        let err = Config::from_toml("", &over, Path::new(".")).unwrap_err().to_string();
        assert!(err.contains("password_file") && !err.contains("hunter2pw"), "--upstream: {err}");
    }

    #[test]
    fn redirect_hosts_are_hosts() {
        let c = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nredirect_hosts = [\"Minio.Corp\", \"10.0.0.7\", \"[FD00::5]\"]")
            .unwrap();
        assert_eq!(c.upstreams[0].redirect_hosts, ["minio.corp", "10.0.0.7", "[fd00::5]"]);
        assert_eq!(c.upstreams[0].private_network, None, "a file never decides it");
        assert!(c.describe().contains("redirect_hosts = minio.corp, 10.0.0.7, [fd00::5]"));
        for bad in ["https://minio.corp", "minio.corp:9000", "", "a b"] {
            let err = load(&format!("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\nredirect_hosts = [\"{bad}\"]"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("redirect_hosts"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn access_and_admin() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("htpasswd"), "# users\nci:$2y$05$abcdefghijklmnopqrstuu5KhjzQ0hXm9yJm8eWbJ0mYlQwq7G3Wi\n").unwrap();
        let text = "admin_listen = \"127.0.0.1:9090\"\n[access]\nhtpasswd = \"htpasswd\"\nallow = [\"10.0.0.0/8\", \"127.0.0.1\"]\n";
        let c = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap();
        assert_eq!(c.admin_listen.unwrap().port(), 9090);
        assert_eq!(c.access.users[0].0, "ci");
        assert_eq!(c.access.allow.len(), 2);
        assert!(!format!("{:?}", c.access).contains("$2y$"));
        std::fs::write(dir.path().join("htpasswd"), "ci:{SHA}plain\n").unwrap();
        let err = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("bcrypt"), "{err}");
        let err = load("[access]\nallow = [\"10.0.0.0/33\"]").unwrap_err().to_string();
        assert!(err.contains("allow"), "{err}");
        let err = load("[tls]\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"").unwrap_err().to_string();
        assert!(err.contains("tls cert"), "{err}");
    }

    #[test]
    fn unusable_tls_files_are_named_in_typed_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        let files = |cert: &str, key: &str| TlsFiles { cert: dir.path().join(cert), key: dir.path().join(key) };
        type IsKind = fn(&TlsError) -> bool;
        let cases: [(TlsFiles, IsKind, &str); 2] = [
            (files("missing.pem", "k.pem"), |e| matches!(e, TlsError::ReadCert { .. }), "tls cert "),
            (files("empty.pem", "k.pem"), |e| matches!(e, TlsError::NoCert { .. }), "holds no PEM certificate"),
        ];
        for (files, kind, words) in cases {
            let err = load_certified_key(&files).unwrap_err();
            assert!(kind(&err), "{files:?}: {err:?}");
            let text = err.to_string();
            assert!(text.contains(words) && text.contains(&files.cert.display().to_string()), "{text}");
        }
    }

    #[test]
    fn toml_and_duration_errors_are_typed_and_read_as_before() {
        let err = parse_toml("listen = \"x\"\nbogus = 1\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.to_string().starts_with("line 2: unknown field `bogus`"), "{err}");
        assert_eq!(parse_duration(" 0 ").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn connection_limits() {
        assert_eq!(load("").unwrap().connections, Connections::default());
        let c = load("header_timeout = \"5s\"\nkeepalive_timeout = \"1m\"\nclient_idle_timeout = \"90s\"\nmax_connections = 7")
            .unwrap()
            .connections;
        assert_eq!(
            c,
            Connections {
                header_timeout: Duration::from_secs(5),
                keepalive_timeout: Duration::from_secs(60),
                client_idle_timeout: Duration::from_secs(90),
                max_connections: 7
            }
        );
        let cases = [
            ("header_timeout = \"0s\"", "header_timeout"),
            ("keepalive_timeout = \"soon\"", "keepalive_timeout"),
            ("client_idle_timeout = \"0\"", "client_idle_timeout"),
            ("max_connections = 0", "max_connections"),
            ("max_connections = 1000001", "max_connections"),
            ("max_connections = -1", "line 1"),
            ("[access]\nmax_failures = 0", "max_failures"),
        ];
        for (text, want) in cases {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert_eq!(load("").unwrap().access.max_failures, DEFAULT_MAX_FAILURES);
        assert_eq!(load("[access]\nmax_failures = 3").unwrap().access.max_failures, 3);
    }

    #[test]
    fn sizes() {
        assert_eq!(load("").unwrap().max_size, None);
        assert_eq!(load("max_size = \"50GiB\"").unwrap().max_size, Some(50 << 30));
        assert_eq!(load("max_size = \"1 MB\"").unwrap().max_size, Some(1_000_000));
        assert!(load("max_size = \"lots\"").unwrap_err().to_string().contains("lots"));
    }

    #[test]
    fn fill_budgets() {
        let d = load("").unwrap().fills;
        assert_eq!(d.min_free, 1 << 30);
        assert_eq!(d.max_temp, None, "without max_size only free space limits temporaries");
        assert_eq!(d.unread_max, Duration::from_secs(15 * 60));
        assert_eq!(d.unread_min_rate, 64 << 10);
        assert_eq!(d.rate_window, Duration::from_secs(30));
        assert_eq!(load("max_size = \"50GiB\"").unwrap().fills.max_temp, Some(50 << 30), "max_temp follows max_size");
        let ok = [
            ("[fills]\nmin_free = \"5%\"", None),
            ("[fills]\nmax_temp = \"2GiB\"", Some(FillBudget { max_temp: Some(2 << 30), ..d.clone() })),
            ("max_size = \"9GB\"\n[fills]\nmax_temp = \"1GB\"", Some(FillBudget { max_temp: Some(1_000_000_000), ..d.clone() })),
            (
                "[fills]\nmin_free = \"0\"\nunread_max = \"2s\"\nunread_min_rate = \"1KiB\"\nrate_window = \"200ms\"",
                Some(FillBudget {
                    min_free: 0,
                    unread_max: Duration::from_secs(2),
                    unread_min_rate: 1024,
                    rate_window: Duration::from_millis(200),
                    ..d.clone()
                }),
            ),
        ];
        for (text, want) in ok {
            match want {
                Some(want) => assert_eq!(load(text).unwrap().fills, want, "{text:?}"),
                None => assert!(load(text).unwrap_err().to_string().contains("min_free"), "{text:?}"),
            }
        }
        let bad = [
            ("[fills]\nunread_max = \"0s\"", "unread_max"),
            ("[fills]\nrate_window = \"soon\"", "rate_window"),
            ("[fills]\nunread_min_rate = \"fast\"", "unread_min_rate"),
            ("[fills]\nbogus = 1", "bogus"),
        ];
        for (text, want) in bad {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }

    #[test]
    fn freshness_durations() {
        let c = load("").unwrap();
        assert_eq!(c.upstreams[0].tag_ttl, Duration::ZERO);
        assert_eq!(c.upstreams[0].stale_max, Duration::from_secs(7 * 86400));
        let c = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ntag_ttl = \"5m\"\nstale_max = \"90s\"").unwrap();
        assert_eq!(c.upstreams[0].tag_ttl, Duration::from_secs(300));
        assert_eq!(c.upstreams[0].stale_max, Duration::from_secs(90));
        let err = load("[[upstream]]\nname = \"x\"\nurl = \"https://x\"\ntag_ttl = \"soon\"").unwrap_err().to_string();
        assert!(err.contains("tag_ttl"), "{err}");
    }

    #[test]
    fn storage_defaults_to_local() {
        assert!(matches!(load("").unwrap().storage, Storage::Local));
        assert!(matches!(load("[storage]\nbackend = \"local\"").unwrap().storage, Storage::Local));
        assert!(load("").unwrap().describe().contains("storage = local"));
    }

    #[test]
    fn storage_s3() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "wJalrXUtnFEMIsecretK7MDENG\n").unwrap();
        let text = r#"
[storage]
backend = "s3"
endpoint = "http://127.0.0.1:8333"
region = "eu-west-3"
bucket = "regcache-blobs"
prefix = "/mirror/eu/"
path_style = true
access_key_id = "AKIDEXAMPLE"
secret_access_key_file = "secret"
bucket_max_size = "2TiB"
timeout = "10s"
"#;
        let c = Config::from_toml(text, &Overrides::default(), dir.path()).unwrap();
        let Storage::S3(s3) = &c.storage else { panic!("{:?}", c.storage) };
        assert_eq!(s3.endpoint.as_ref().unwrap().as_str(), "http://127.0.0.1:8333/");
        assert_eq!(s3.region, "eu-west-3");
        assert_eq!(s3.bucket, "regcache-blobs");
        assert_eq!(s3.prefix, "mirror/eu", "leading and trailing '/' are dropped");
        assert!(s3.path_style);
        let creds = s3.credentials.as_ref().unwrap();
        assert_eq!(creds.access_key_id, "AKIDEXAMPLE");
        assert_eq!(creds.secret_access_key, "wJalrXUtnFEMIsecretK7MDENG", "the file's newline is dropped");
        assert_eq!(s3.bucket_max_size, Some(2 << 40));
        assert_eq!(s3.timeout, Duration::from_secs(10));
        let shown = c.describe();
        assert!(shown.contains("bucket = regcache-blobs") && shown.contains("secret_access_key = ********"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMIsecretK7MDENG"), "{shown}");
        assert!(!format!("{c:?}").contains("wJalrXUtnFEMIsecretK7MDENG"));

        let c = load("[storage]\nbackend = \"s3\"\nbucket = \"b12\"").unwrap();
        let Storage::S3(s3) = &c.storage else { panic!("{:?}", c.storage) };
        assert_eq!((s3.endpoint.as_ref(), s3.region.as_str(), s3.prefix.as_str()), (None, DEFAULT_S3_REGION, ""));
        assert!(!s3.path_style);
        assert_eq!(s3.credentials, None);
        assert_eq!((s3.bucket_max_size, s3.timeout), (None, DEFAULT_S3_TIMEOUT));
        assert!(c.describe().contains("AWS_ACCESS_KEY_ID"), "{}", c.describe());
    }

    #[test]
    fn storage_rejects_bad_values() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("secret"), "s3cretvalue\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        std::fs::write(dir.path().join("notpem"), "hello").unwrap();
        let s3 = "[storage]\nbackend = \"s3\"\nbucket = \"bkt\"\n";
        let cases = [
            ("[storage]\nbackend = \"gcs\"".to_owned(), "must be \"local\" or \"s3\""),
            ("[storage]\nbucket = \"bkt\"".to_owned(), "bucket is for backend = \"s3\""),
            ("[storage]\nbackend = \"local\"\nendpoint = \"http://x\"".to_owned(), "endpoint is for backend"),
            ("[storage]\nbackend = \"s3\"".to_owned(), "needs bucket"),
            ("[storage]\nbackend = \"s3\"\nbucket = \"Bad_Name\"".to_owned(), "bucket \"Bad_Name\""),
            ("[storage]\nbackend = \"s3\"\nbucket = \"ab\"".to_owned(), "bucket \"ab\""),
            (format!("{s3}bogus = 1"), "bogus"),
            (format!("{s3}endpoint = \"ftp://x\""), "http:// or https://"),
            (format!("{s3}endpoint = \"not a url\""), "endpoint"),
            (format!("{s3}endpoint = \"http://x/some/path\""), "path"),
            (format!("{s3}endpoint = \"http://ak:hunter2pw@x\""), "secret_access_key_file"),
            (format!("{s3}region = \"eu west\""), "region"),
            (format!("{s3}prefix = \"a//b\""), "prefix"),
            (format!("{s3}prefix = \"a/../b\""), "prefix"),
            (format!("{s3}prefix = \"a b\""), "prefix"),
            (format!("{s3}access_key_id = \"AK\""), "go together"),
            (format!("{s3}secret_access_key_file = \"secret\""), "go together"),
            (format!("{s3}access_key_id = \"AK\"\nsecret_access_key_file = \"missing\""), "cannot read secret_access_key_file"),
            (format!("{s3}access_key_id = \"AK\"\nsecret_access_key_file = \"empty\""), "is empty"),
            (format!("{s3}ca_file = \"notpem\""), "holds no PEM certificate"),
            (format!("{s3}ca_file = \"missing.pem\""), "cannot read ca_file"),
            (format!("{s3}bucket_max_size = \"lots\""), "bucket_max_size"),
            (format!("{s3}timeout = \"0s\""), "longer than zero"),
            (format!("{s3}timeout = \"soon\""), "timeout"),
            (format!("{s3}path_style = \"yes\""), "line 4: invalid type"),
        ];
        for (text, want) in cases {
            let err = Config::from_toml(&text, &Overrides::default(), dir.path()).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
            assert!(!err.contains('\n') && !err.contains("hunter2pw") && !err.contains("s3cretvalue"), "{text:?}: {err}");
        }
    }

    #[test]
    fn overrides_win() {
        let over = Overrides {
            listen: Some("127.0.0.1:6000".into()),
            data_dir: Some("/tmp/x".into()),
            upstream_url: Some("http://127.0.0.1:9".into()),
        };
        let c = Config::from_toml("", &over, Path::new(".")).unwrap();
        assert_eq!(c.listen.port(), 6000);
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.upstreams[0].url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(c.upstreams[0].name, "docker.io");
    }
}
