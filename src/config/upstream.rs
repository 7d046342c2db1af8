//! `[[upstream]]` resolved: one upstream registry, its credentials, trust roots, timeouts and
//! freshness durations.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use super::raw::RawUpstream;
use super::units::HumanDuration;
use super::{mask_userinfo, read_pem_roots, ConfigError};
use crate::oci::RegistryHost;

/// `connect_timeout` when not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `response_timeout` when not set.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// `idle_timeout` when not set.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// `stale_max` when not set.
pub const DEFAULT_STALE_MAX: Duration = Duration::from_secs(7 * 86400);

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
    /// `None` (what a file gives): decided from the addresses its host resolves to. Tests whose
    /// servers are all on loopback decide it.
    #[cfg(any(test, feature = "test-hooks"))]
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

impl UpstreamConfig {
    /// Resolve `raw`; files are read relative to `base`.
    pub(super) fn resolve(raw: RawUpstream, base: &Path) -> Result<UpstreamConfig, ConfigError> {
        let name = RegistryHost::new(raw.name.trim());
        if name.as_str().is_empty() || name.as_str().contains('/') || name.as_str().contains(char::is_whitespace) {
            return Err(ConfigError(format!("upstream name {:?} must be a registry host such as docker.io", raw.name)));
        }
        let err = |msg: String| ConfigError(format!("upstream {name}: {msg}"));
        let or = |d: Option<HumanDuration>, default: Duration| d.map_or(default, |d| d.0);
        Ok(UpstreamConfig {
            url: upstream_url(&raw.url).map_err(err)?,
            credentials: upstream_credentials(raw.username, raw.password, raw.password_file, base).map_err(err)?,
            ca_pem: raw.ca_file.map(|file| read_pem_roots(&base.join(file))).transpose().map_err(err)?,
            auth_hosts: raw.auth_hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
            redirect_hosts: redirect_hosts(&raw.redirect_hosts).map_err(err)?,
            #[cfg(any(test, feature = "test-hooks"))]
            private_network: None,
            connect_timeout: or(raw.connect_timeout, DEFAULT_CONNECT_TIMEOUT),
            response_timeout: or(raw.response_timeout, DEFAULT_RESPONSE_TIMEOUT),
            idle_timeout: or(raw.idle_timeout, DEFAULT_IDLE_TIMEOUT),
            tag_ttl: or(raw.tag_ttl, Duration::ZERO),
            stale_max: or(raw.stale_max, DEFAULT_STALE_MAX),
            name,
        })
    }

    /// Docker Hub at its registry endpoint: what a file without `[[upstream]]` mirrors.
    pub(super) fn docker_hub_raw() -> RawUpstream {
        RawUpstream { name: crate::oci::DOCKER_HUB.to_owned(), url: super::DOCKER_HUB_URL.to_owned(), ..Default::default() }
    }

    /// Its effective settings, one per line, the password masked.
    pub(super) fn describe(&self) -> String {
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

/// An upstream's `url`: http or https, a host, no credentials, no path or query.
fn upstream_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("url {:?}: {e}", mask_userinfo(raw)))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("url must not contain credentials (user:password@); \
             give username and password_file (or password) instead"
            .into());
    }
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("url {raw:?} must be http:// or https:// with a host"));
    }
    if url.path() != "/" || url.query().is_some() {
        return Err(format!("url {raw:?} must not have a path or query"));
    }
    Ok(url)
}

/// An upstream's credentials: `username` with `password` or `password_file` (relative to `base`),
/// or none at all.
fn upstream_credentials(
    username: Option<String>,
    password: Option<String>,
    password_file: Option<PathBuf>,
    base: &Path,
) -> Result<Option<Credentials>, String> {
    let password = match (password, password_file) {
        (Some(_), Some(_)) => return Err("give password or password_file, not both".into()),
        (Some(p), None) => Some(p),
        (None, Some(file)) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read password_file {}: {e}", path.display()))?;
            Some(text.trim_end_matches(['\r', '\n']).to_owned())
        }
        (None, None) => None,
    };
    match (username, password) {
        (Some(username), Some(password)) => Ok(Some(Credentials { username, password })),
        (None, None) => Ok(None),
        _ => Err("username and password go together".into()),
    }
}

/// `redirect_hosts`: host names or IP addresses, lowercased as URLs have them.
fn redirect_hosts(raw: &[String]) -> Result<Vec<String>, String> {
    raw.iter()
        .map(|h| {
            url::Host::parse(h.trim())
                .map(|host| host.to_string())
                .map_err(|e| format!("redirect_hosts entry {h:?} must be a host name or IP address: {e}"))
        })
        .collect()
}
