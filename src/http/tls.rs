//! HTTPS for clients: rustls with HTTP/2 and HTTP/1.1 by ALPN, and a certificate that can be
//! reloaded (SIGHUP) without dropping connections: new handshakes use the new one.

use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::{load_certified_key, TlsError, TlsFiles};
use crate::sync::{read, write};

/// The serving certificate, swappable.
#[derive(Debug)]
struct Reloadable(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Reloadable {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(read(&self.0).clone())
    }
}

/// TLS for the client listener.
pub struct Tls {
    files: TlsFiles,
    current: Arc<Reloadable>,
    acceptor: TlsAcceptor,
}

impl Tls {
    /// Load the certificate and key.
    pub fn new(files: TlsFiles) -> Result<Tls, TlsError> {
        let current = Arc::new(Reloadable(RwLock::new(Arc::new(load_certified_key(&files)?))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Tls { files, current, acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// The acceptor for new connections.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Read the certificate and key again; on failure the old ones stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.files)?;
        *write(&self.current.0) = Arc::new(fresh);
        Ok(())
    }
}
