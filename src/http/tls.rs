//! HTTPS for clients: rustls with HTTP/2 and HTTP/1.1 by ALPN, and a certificate that can be
//! reloaded (SIGHUP) without dropping connections: new handshakes use the new one. The
//! certificate and key are read from their PEM files by [`load_certified_key`], which the
//! configuration calls too, so that a server never starts without them.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
