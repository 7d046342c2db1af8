//! Where an upstream's connections may go: a redirect or token realm of a public registry must not
//! lead into the operator's own network (loopback, link-local incl. cloud metadata, private, CGNAT);
//! and no redirect or token realm, even a private registry's, leads to an unspecified address
//! (`0.0.0.0/8`, `::`: the local host on Linux) or a link-local one (`169.254.0.0/16` incl. the cloud
//! metadata service, `fe80::/10`), where no registry's blob store ever legitimately is. Only the
//! upstream's own host and the hosts in `redirect_hosts` are exempt.
//!
//! The check sits in the connector, on the addresses actually connected to: a DNS name is resolved
//! by [`GuardedResolver`], which drops internal addresses before `HttpConnector` sees them (so a name
//! that resolves to 127.0.0.1, or is rebound between a check and the connect, can't slip through);
//! an IP literal, which `HttpConnector` connects to without resolving, is checked by
//! [`GuardedConnector`].

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;

/// Whether `ip` is in the operator's own networks: loopback, link-local, private, unique-local,
/// CGNAT, unspecified, or an IPv4-mapped / IPv4-compatible IPv6 form of one of those.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_internal_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (first & 0xfe00) == 0xfc00 // unique-local fc00::/7
        }
    }
}

/// Whether `ip` is unspecified (`0.0.0.0/8`, `::`) or link-local (`169.254.0.0/16`, `fe80::/10`),
/// or an IPv4-mapped / IPv4-compatible / NAT64 form of one of those: never where a registry's
/// redirect or token realm may lead, whatever the upstream's own address.
pub fn is_never_a_registry(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_never_a_registry_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_v4(v6) {
                return is_never_a_registry_v4(v4);
            }
            v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn is_never_a_registry_v4(ip: Ipv4Addr) -> bool {
    ip.octets()[0] == 0 || ip.is_link_local()
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || a == 0 // 0.0.0.0/8: "this network", reaches the local host on Linux
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
}

/// The IPv4 address an IPv6 address carries: `::ffff:a.b.c.d` (mapped), `::a.b.c.d` (compatible,
/// deprecated but still routed to the IPv4 address by some stacks), or `64:ff9b::a.b.c.d` (NAT64's
/// well-known prefix, which a NAT64 gateway forwards to the IPv4 address).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(Ipv4Addr::from(ip.to_bits() as u32));
    }
    (s[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified()).then(|| Ipv4Addr::from(ip.to_bits() as u32))
}

/// A connection refused because its target is in an internal network. Its `Display` names the host,
/// for the log only.
#[derive(Debug, thiserror::Error)]
#[error("{host} is in a private network (loopback, link-local, private, CGNAT or unspecified addresses) and not in redirect_hosts")]
pub struct Blocked {
    /// The host as the URL named it.
    pub host: String,
}

/// The policy of one upstream: which hosts may be connected to at internal addresses.
#[derive(Debug)]
pub struct Guard {
    /// The configured upstream's host, lowercased, without IPv6 brackets: always allowed.
    own: String,
    /// `redirect_hosts`: allowed at internal addresses.
    allowed: Vec<String>,
    /// Set by configuration or an IP-literal upstream; otherwise learned from resolving `own`.
    fixed: Option<bool>,
    /// Whether `own` last resolved to internal addresses only (a private registry).
    learned: AtomicBool,
}

impl Guard {
    /// The guard for `cfg`.
    pub fn new(cfg: &UpstreamConfig) -> Guard {
        let own = bare_host(cfg.url.host_str().unwrap_or_default());
        let literal = own.parse::<IpAddr>().ok().map(is_internal);
        Guard {
            allowed: cfg.redirect_hosts.iter().map(|h| bare_host(h)).collect(),
            fixed: decided(cfg).or(literal),
            learned: AtomicBool::new(false),
            own,
        }
    }

    /// Whether the upstream is a private registry, whose redirects may go to internal addresses.
    pub fn upstream_is_private(&self) -> bool {
        self.fixed.unwrap_or_else(|| self.learned.load(Ordering::Relaxed))
    }

    /// Whether `host` may be connected to at any address: the upstream itself, or a host the
    /// operator listed in `redirect_hosts`.
    fn is_exempt(&self, host: &str) -> bool {
        host == self.own || self.allowed.iter().any(|h| h == host)
    }

    /// The addresses of `host` that may be connected to: all of them for an exempt host; else,
    /// for a private registry, all but unspecified and link-local ones; else only external ones.
    fn filter(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Blocked> {
        if host == self.own && self.fixed.is_none() {
            let private = !addrs.is_empty() && addrs.iter().all(|a| is_internal(a.ip()));
            self.learned.store(private, Ordering::Relaxed);
        }
        if self.is_exempt(host) {
            return Ok(addrs);
        }
        let refuse: fn(IpAddr) -> bool = if self.upstream_is_private() { is_never_a_registry } else { is_internal };
        let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| !refuse(a.ip())).collect();
        if allowed.is_empty() {
            return Err(Blocked { host: host.to_owned() });
        }
        Ok(allowed)
    }
}

/// A host as compared: lowercased, without IPv6 brackets.
/// Whether `cfg` says it is a private registry: only a test decides it (a file never does).
#[cfg(any(test, feature = "test-hooks"))]
fn decided(cfg: &UpstreamConfig) -> Option<bool> {
    cfg.private_network
}

/// Whether `cfg` says it is a private registry: a file never decides it.
#[cfg(not(any(test, feature = "test-hooks")))]
fn decided(_: &UpstreamConfig) -> Option<bool> {
    None
}

fn bare_host(host: &str) -> String {
    host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

/// Resolves names like `getaddrinfo` and keeps only the addresses the [`Guard`] allows.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    guard: Arc<Guard>,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        Box::pin(async move {
            let host = bare_host(name.as_str());
            // Port 0: HttpConnector sets the URL's port on every address.
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(guard.filter(&host, addrs)?.into_iter())
        })
    }
}

/// `HttpConnector` with the [`Guard`] applied to IP-literal hosts (names go through
/// [`GuardedResolver`]).
#[derive(Clone, Debug)]
pub struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Arc<Guard>,
}

impl GuardedConnector {
    /// A connector for the upstream `cfg`; configure the returned `HttpConnector` through `setup`.
    pub fn new(cfg: &UpstreamConfig, setup: impl FnOnce(&mut HttpConnector<GuardedResolver>)) -> GuardedConnector {
        let guard = Arc::new(Guard::new(cfg));
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver { guard: guard.clone() });
        setup(&mut inner);
        GuardedConnector { inner, guard }
    }
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let host = bare_host(dst.host().unwrap_or_default());
        if let Ok(ip) = host.parse::<IpAddr>() {
            if let Err(refused) = self.guard.filter(&host, vec![SocketAddr::new(ip, 0)]) {
                return Box::pin(std::future::ready(Err(refused.into())));
            }
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The [`Blocked`] somewhere in the causes of `e`, if the guard refused the connection.
pub fn blocked<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<Blocked>() {
            return Some(r);
        }
        cur = c.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};

    #[test]
    fn internal_addresses() {
        let cases = [
            ("127.0.0.1", true),
            ("127.255.0.9", true),
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.1.1", true),
            ("169.254.169.254", true),
            ("100.64.0.1", true),
            ("100.127.255.255", true),
            ("100.128.0.1", false),
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("8.8.8.8", false),
            ("52.1.2.3", false),
            ("::1", true),
            ("::", true),
            ("fe80::1", true),
            ("febf::1", true),
            ("fec0::1", false),
            ("fc00::1", true),
            ("fd12:3456::1", true),
            ("::ffff:127.0.0.1", true),
            ("::ffff:169.254.169.254", true),
            ("::ffff:10.0.0.1", true),
            ("::ffff:8.8.8.8", false),
            ("64:ff9b::a9fe:a9fe", true),
            ("64:ff9b::808:808", false),
            ("::127.0.0.1", true),
            ("2001:db8::1", false),
            ("2606:4700::1111", false),
        ];
        for (ip, want) in cases {
            assert_eq!(is_internal(ip.parse().unwrap()), want, "{ip}");
        }
    }

    fn guard(url: &str, redirect_hosts: &str, private: Option<bool>) -> Guard {
        let toml = format!("[[upstream]]\nname = \"x.io\"\nurl = \"{url}\"\nredirect_hosts = [{redirect_hosts}]\n");
        let mut c = Config::from_toml(&toml, &Overrides::default(), std::path::Path::new(".")).unwrap();
        c.upstreams[0].private_network = private;
        Guard::new(&c.upstreams[0])
    }

    fn addrs(ips: &[&str]) -> Vec<SocketAddr> {
        ips.iter().map(|ip| SocketAddr::new(ip.parse().unwrap(), 0)).collect()
    }

    #[test]
    fn a_public_upstream_keeps_its_redirects_out_of_internal_networks() {
        let g = guard("https://registry.example", "\"Storage.Internal\", \"[fd00::5]\"", None);
        assert!(!g.upstream_is_private());
        assert!(g.filter("cdn.example", addrs(&["127.0.0.1"])).is_err());
        assert!(g.filter("169.254.169.254", addrs(&["169.254.169.254"])).is_err());
        assert_eq!(g.filter("cdn.example", addrs(&["10.0.0.1", "93.184.216.34"])).unwrap(), addrs(&["93.184.216.34"]));
        assert!(g.filter("storage.internal", addrs(&["10.0.0.1"])).is_ok(), "listed in redirect_hosts");
        assert!(g.filter("fd00::5", addrs(&["fd00::5"])).is_ok(), "listed in redirect_hosts");
        assert!(g.filter("registry.example", addrs(&["127.0.0.1", "93.184.216.34"])).is_ok(), "the upstream itself");
        assert!(!g.upstream_is_private(), "one external address: not a private registry");
    }

    #[test]
    fn a_private_upstream_may_redirect_internally() {
        let literal = guard("http://10.0.0.5:5000", "", None);
        assert!(literal.upstream_is_private());
        assert!(literal.filter("10.0.0.6", addrs(&["10.0.0.6"])).is_ok());

        let named = guard("https://registry.corp", "", None);
        assert!(named.filter("minio.corp", addrs(&["10.0.0.7"])).is_err(), "unknown until the upstream is resolved");
        named.filter("registry.corp", addrs(&["10.0.0.5"])).unwrap();
        assert!(named.upstream_is_private());
        assert!(named.filter("minio.corp", addrs(&["10.0.0.7"])).is_ok());

        let forced = guard("http://127.0.0.1:5000", "", Some(false));
        assert!(!forced.upstream_is_private());
        assert!(forced.filter("127.0.0.1", addrs(&["127.0.0.1"])).is_ok(), "the upstream's own host");
        let e = forced.filter("localhost", addrs(&["127.0.0.1", "::1"])).unwrap_err();
        assert_eq!(e.host, "localhost");
    }

    #[test]
    fn unspecified_and_link_local_addresses() {
        let cases = [
            ("0.0.0.0", true),
            ("0.1.2.3", true),
            ("169.254.169.254", true),
            ("169.254.0.1", true),
            ("::", true),
            ("fe80::1", true),
            ("febf:ffff::1", true),
            ("::ffff:0.0.0.0", true),
            ("::ffff:169.254.169.254", true),
            ("::169.254.169.254", true),
            ("::0.0.0.7", true),
            ("64:ff9b::a9fe:a9fe", true),
            ("127.0.0.1", false),
            ("10.0.0.1", false),
            ("192.168.1.1", false),
            ("100.64.0.1", false),
            ("1.0.0.0", false),
            ("169.255.0.1", false),
            ("::1", false),
            ("fec0::1", false),
            ("fd00::1", false),
            ("::ffff:127.0.0.1", false),
            ("8.8.8.8", false),
        ];
        for (ip, want) in cases {
            assert_eq!(is_never_a_registry(ip.parse().unwrap()), want, "{ip}");
            if want {
                assert!(is_internal(ip.parse().unwrap()), "{ip} is internal too");
            }
        }
    }

    #[test]
    fn a_private_upstream_never_redirects_to_unspecified_or_link_local_addresses() {
        let g = guard("http://127.0.0.1:5000", "\"metadata.internal\", \"169.254.10.10\"", None);
        assert!(g.upstream_is_private());
        // By address (IP-literal targets) and by name (what a resolver returned for it).
        for (host, ip) in [
            ("0.0.0.0", "0.0.0.0"),
            ("::", "::"),
            ("169.254.169.254", "169.254.169.254"),
            ("fe80::1", "fe80::1"),
            ("::ffff:0.0.0.0", "::ffff:0.0.0.0"),
            ("::ffff:169.254.169.254", "::ffff:169.254.169.254"),
            ("::169.254.169.254", "::169.254.169.254"),
            ("blobs.example", "0.0.0.0"),
            ("blobs.example", "::"),
            ("blobs.example", "169.254.169.254"),
            ("blobs.example", "fe80::1"),
            ("blobs.example", "::ffff:169.254.169.254"),
        ] {
            let e = g.filter(host, addrs(&[ip])).expect_err(ip);
            assert_eq!(e.host, host);
        }
        assert_eq!(
            g.filter("blobs.example", addrs(&["169.254.169.254", "10.0.0.9", "0.0.0.0"])).unwrap(),
            addrs(&["10.0.0.9"]),
            "only the usable addresses of a name are connected to",
        );
        assert!(g.filter("minio.corp", addrs(&["10.0.0.7", "127.0.0.2"])).is_ok(), "a private registry's own network");
        assert!(g.filter("metadata.internal", addrs(&["169.254.169.254"])).is_ok(), "listed in redirect_hosts");
        assert!(g.filter("169.254.10.10", addrs(&["169.254.10.10"])).is_ok(), "listed in redirect_hosts");

        let public = guard("https://registry.example", "", Some(false));
        for ip in ["0.0.0.0", "169.254.169.254", "::", "fe80::1"] {
            assert!(public.filter("blobs.example", addrs(&[ip])).is_err(), "{ip}");
        }
    }
}
