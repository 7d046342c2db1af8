//! `regcache healthcheck`: ask a running server's `/healthz` and say in one line what is wrong,
//! for images without curl (distroless, scratch) and Docker's `HEALTHCHECK`.
//!
//! Without `--url` the address comes from the configuration: `admin_listen` when set (always
//! plain HTTP), else `listen` (HTTPS when `[tls]` is set); a wildcard address (`0.0.0.0`, `::`)
//! is asked on loopback. With `[tls]` configured, the server must present exactly the certificate
//! in `[tls] cert`, whatever names it carries (a self-signed one works; after a renewal, the check
//! fails until the server has reloaded it); without, an `https://` URL is checked against the
//! built-in web PKI roots.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::config::{Config, ConfigError, Overrides};

/// How long the whole check may take: connecting, the TLS handshake, and the response headers.
pub const TIMEOUT: Duration = Duration::from_secs(3);

/// Why the server is not healthy, or could not be asked. Each says which, in one line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HealthError {
    /// The configuration can't be read.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `--url` is not an `http(s)://` URL with a host.
    #[error("--url {url:?}: {why}")]
    BadUrl {
        /// As given.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The `[tls] cert` file holds no usable certificate.
    #[error("tls cert {}: {why}", .path.display())]
    Cert {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// The runtime for the request can't be started.
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    /// Nothing listens there.
    #[error("{url}: connection refused (is regcache running?)")]
    Refused {
        /// The URL asked.
        url: Url,
    },
    /// Connecting failed otherwise (no route, name not found, …).
    #[error("{url}: cannot connect: {error}")]
    Connect {
        /// The URL asked.
        url: Url,
        /// Why.
        error: std::io::Error,
    },
    /// The TLS handshake failed (a different certificate, not HTTPS, …).
    #[error("{url}: TLS handshake failed: {error}")]
    Tls {
        /// The URL asked.
        url: Url,
        /// Why.
        error: std::io::Error,
    },
    /// The connection broke, or the answer was not HTTP (an address `[access] allow` does not
    /// admit is closed at once).
    #[error("{url}: no HTTP answer: {error}")]
    Http {
        /// The URL asked.
        url: Url,
        /// Why.
        error: hyper::Error,
    },
    /// No answer within [`TIMEOUT`].
    #[error("{url}: no answer within {} s", TIMEOUT.as_secs())]
    Timeout {
        /// The URL asked.
        url: Url,
    },
    /// An answer, but not 200.
    #[error("{url}: answered {status}, not 200")]
    Status {
        /// The URL asked.
        url: Url,
        /// What it answered.
        status: StatusCode,
    },
}

/// Check the server the configuration `config_file` describes (the defaults without one), or the
/// one at `url`: `Ok` when its `/healthz` answered 200 within [`TIMEOUT`].
pub fn run(config_file: Option<&Path>, url: Option<&str>) -> Result<(), HealthError> {
    let config = Config::load(config_file, &Overrides::default())?;
    let url = match url {
        Some(u) => parse_url(u)?,
        None => healthz_url(&config),
    };
    let pinned = match &config.tls {
        Some(files) => Some(leaf_certificate(&files.cert)?),
        None => None,
    };
    let tls = tls_connector(pinned);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(HealthError::Runtime)?;
    runtime.block_on(async {
        match tokio::time::timeout(TIMEOUT, ask(&url, &tls)).await {
            Ok(Ok(StatusCode::OK)) => Ok(()),
            Ok(Ok(status)) => Err(HealthError::Status { url: url.clone(), status }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(HealthError::Timeout { url: url.clone() }),
        }
    })
}

/// The `/healthz` URL of the server `config` describes: `admin_listen` (plain HTTP) when set, else
/// `listen` (HTTPS with `[tls]`), a wildcard address replaced by loopback.
pub fn healthz_url(config: &Config) -> Url {
    let (addr, https) = match config.admin_listen {
        Some(admin) => (admin, false),
        None => (config.listen, config.tls.is_some()),
    };
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let scheme = if https { "https" } else { "http" };
    let text = format!("{scheme}://{}/healthz", SocketAddr::new(ip, addr.port()));
    // A socket address always makes a valid authority.
    Url::parse(&text).expect("a URL made of a socket address")
}

/// `--url`: an `http(s)://` URL with a host; an empty path (or `/`) means `/healthz`.
fn parse_url(given: &str) -> Result<Url, HealthError> {
    let bad = |why: &str| HealthError::BadUrl { url: given.to_owned(), why: why.to_owned() };
    let mut url = Url::parse(given).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("not http:// or https://"));
    }
    if url.host().is_none() {
        return Err(bad("no host"));
    }
    if url.path() == "/" {
        url.set_path("/healthz");
    }
    Ok(url)
}

/// The first certificate of a PEM file (the leaf: `[tls] cert` is a chain, leaf first).
fn leaf_certificate(path: &Path) -> Result<CertificateDer<'static>, HealthError> {
    let cert_error = |why: String| HealthError::Cert { path: path.to_owned(), why };
    let pem = std::fs::read(path).map_err(|e| cert_error(e.to_string()))?;
    let first = rustls_pemfile::certs(&mut pem.as_slice()).next();
    match first {
        Some(Ok(cert)) => Ok(cert),
        Some(Err(e)) => Err(cert_error(e.to_string())),
        None => Err(cert_error("no PEM certificate".into())),
    }
}

/// The TLS client: trusting only `pinned` when given, else the web PKI roots.
fn tls_connector(pinned: Option<CertificateDer<'static>>) -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        // ring supports every default version; the builder checks only that.
        .expect("ring supports the default TLS versions");
    let mut config = match pinned {
        Some(cert) => {
            let verifier = Pinned { cert, algorithms: provider.signature_verification_algorithms };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
        }
        None => {
            let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

/// One `GET` of `url` over HTTP/1.1 (TLS for `https`): the status of the answer.
async fn ask(url: &Url, tls: &TlsConnector) -> Result<StatusCode, HealthError> {
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(80);
    let stream = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::ConnectionRefused {
            HealthError::Refused { url: url.clone() }
        } else {
            HealthError::Connect { url: url.clone(), error }
        }
    })?;
    if url.scheme() == "https" {
        let name = match url.host() {
            Some(url::Host::Domain(d)) => ServerName::try_from(d.to_owned()),
            Some(url::Host::Ipv4(ip)) => Ok(ServerName::IpAddress(IpAddr::V4(ip).into())),
            Some(url::Host::Ipv6(ip)) => Ok(ServerName::IpAddress(IpAddr::V6(ip).into())),
            None => ServerName::try_from(""),
        };
        let name = name.map_err(|e| HealthError::Tls { url: url.clone(), error: std::io::Error::other(e) })?;
        let stream = tls.connect(name, stream).await.map_err(|error| HealthError::Tls { url: url.clone(), error })?;
        get(url, stream).await
    } else {
        get(url, stream).await
    }
}

/// `GET` the URL's path on an open connection.
async fn get<T>(url: &Url, io: T) -> Result<StatusCode, HealthError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let http = |error| HealthError::Http { url: url.clone(), error };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(http)?;
    // The connection is driven until the answer's head is read; the task ends with the runtime.
    tokio::spawn(conn);
    let authority = url[url::Position::BeforeHost..url::Position::AfterPort].to_owned();
    let req = Request::get(&url[url::Position::BeforePath..url::Position::AfterQuery])
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, concat!("regcache-healthcheck/", env!("CARGO_PKG_VERSION")))
        .body(Empty::<Bytes>::new())
        // Path and host come from a parsed URL: always a valid request.
        .expect("a request made of a parsed URL");
    let resp = sender.send_request(req).await.map_err(http)?;
    Ok(resp.status())
}

/// Accepts exactly one certificate, the configured one, whatever its names or issuer: the check
/// asks the server the configuration describes, which serves that file.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("the server's certificate is not the one in [tls] cert".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        Config::load(Some(f.path()), &Overrides::default()).unwrap()
    }

    #[test]
    fn the_url_comes_from_admin_listen_else_listen_with_wildcards_on_loopback() {
        let cases = [
            ("", "http://127.0.0.1:5000/healthz"),
            ("listen = \"0.0.0.0:5000\"\n", "http://127.0.0.1:5000/healthz"),
            ("listen = \"[::]:5001\"\n", "http://[::1]:5001/healthz"),
            ("listen = \"10.1.2.3:80\"\n", "http://10.1.2.3/healthz"),
            ("listen = \"0.0.0.0:5000\"\nadmin_listen = \"0.0.0.0:9090\"\n", "http://127.0.0.1:9090/healthz"),
            ("admin_listen = \"[::1]:9090\"\n", "http://[::1]:9090/healthz"),
        ];
        for (text, want) in cases {
            assert_eq!(healthz_url(&config(text)).as_str(), want, "{text:?}");
        }
    }

    #[test]
    fn a_given_url_is_checked_and_its_root_means_healthz() {
        let cases = [
            ("http://127.0.0.1:5000", Some("http://127.0.0.1:5000/healthz")),
            ("https://mirror.internal/", Some("https://mirror.internal/healthz")),
            ("http://127.0.0.1:9090/healthz", Some("http://127.0.0.1:9090/healthz")),
            ("http://[::1]:9090/custom?x=1", Some("http://[::1]:9090/custom?x=1")),
            ("ftp://127.0.0.1/", None),
            ("127.0.0.1:5000", None),
            ("not a url", None),
        ];
        for (given, want) in cases {
            match (parse_url(given), want) {
                (Ok(url), Some(want)) => assert_eq!(url.as_str(), want),
                (Err(HealthError::BadUrl { .. }), None) => {}
                (other, _) => panic!("{given:?}: {other:?}"),
            }
        }
    }
}
