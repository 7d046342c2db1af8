//! `regcache warm IMAGE…`: fetch manifests (every platform, or one) and every blob into the cache
//! ahead of a CI rush, by pulling through a regcache server like any client would — the running
//! one, or a temporary one when none runs — over the server's local socket in the data directory.
//! That socket needs neither TLS nor credentials whatever the configuration says, because only
//! the host's administrator (the owner of the data directory) can open it.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::sync::Mutex;

use crate::oci::{references, Digest, ImageRef, Reference, MANIFEST_MEDIA_TYPES};

/// What warming one image fetched.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Warmed {
    /// Manifests fetched.
    pub manifests: usize,
    /// Blobs fetched.
    pub blobs: usize,
    /// Blob bytes.
    pub bytes: u64,
}

/// Why warming an image failed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The image's manifest is not one regcache can read.
    #[error("the manifest is not one regcache can read")]
    UnreadableManifest,
    /// A child manifest of the image's index is not one regcache can read.
    #[error("a child manifest is not one regcache can read")]
    UnreadableChild,
    /// The image's index has no manifest for the platform asked for.
    #[error("no manifest for platform {0}")]
    NoPlatform(String),
    /// The request could not be built.
    #[error("{0}")]
    Request(http::Error),
    /// Sending a request failed.
    #[error("{url}: {error}")]
    Send {
        /// The request's path.
        url: String,
        /// Why.
        error: Box<WarmError>,
    },
    /// The server answered with an error.
    #[error("{status}: {body}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its body, trimmed.
        body: String,
    },
    /// The server's local socket can't be opened.
    #[error("cannot reach the server's local socket {}: {error}", .socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("{0}")]
    Http(hyper::Error),
    /// A blob's body broke off.
    #[error("blob {digest}: {error}")]
    Blob {
        /// The blob.
        digest: Digest,
        /// Why.
        error: hyper::Error,
    },
}

/// Pulls images through the regcache listening on a local socket.
pub struct Warmer {
    socket: PathBuf,
    /// One HTTP/1.1 connection, opened on first use and again when the server closed it; requests
    /// go one at a time.
    conn: Mutex<Option<SendRequest<Empty<Bytes>>>>,
}

/// Progress of one image: total bytes when known, bytes done.
trait Progress {
    fn grow(&self, bytes: u64);
    fn advance(&self, bytes: u64);
}

impl Progress for Option<indicatif::ProgressBar> {
    fn grow(&self, bytes: u64) {
        if let Some(b) = self {
            b.inc_length(bytes);
        }
    }
    fn advance(&self, bytes: u64) {
        if let Some(b) = self {
            b.inc(bytes);
        }
    }
}

impl Warmer {
    /// A warmer pulling through the server on the local socket `socket`.
    pub fn new(socket: &Path) -> Warmer {
        Warmer { socket: socket.to_owned(), conn: Mutex::new(None) }
    }

    /// Warm every image; one progress bar per image on a terminal, plain lines otherwise.
    /// Returns whether all succeeded.
    pub async fn warm_all(&self, images: &[ImageRef], platform: Option<&str>) -> bool {
        let multi = std::io::stderr().is_terminal().then(indicatif::MultiProgress::new);
        let style = indicatif::ProgressStyle::with_template("{prefix:40!} {bar:30} {bytes}/{total_bytes} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        let mut ok = true;
        for image in images {
            let bar = multi.as_ref().map(|m| {
                let b = m.add(indicatif::ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(image.to_string());
                b
            });
            if bar.is_none() {
                println!("warming {image}");
            }
            match self.warm(image, platform, &bar).await {
                Ok(w) => {
                    let line = format!(
                        "warmed {image}: {} manifests, {} blobs, {}",
                        w.manifests,
                        w.blobs,
                        crate::admin::human_bytes(w.bytes)
                    );
                    match &bar {
                        Some(b) => b.finish_with_message("done"),
                        None => println!("{line}"),
                    }
                }
                Err(e) => {
                    ok = false;
                    match &bar {
                        Some(b) => b.abandon_with_message(format!("failed: {e}")),
                        None => println!("failed {image}: {e}"),
                    }
                }
            }
        }
        ok
    }

    async fn warm(&self, image: &ImageRef, platform: Option<&str>, progress: &dyn Progress) -> Result<Warmed, WarmError> {
        let mut w = Warmed::default();
        let top = self.manifest(image, &image.reference).await?;
        w.manifests += 1;
        let refs = references(&top).ok_or(WarmError::UnreadableManifest)?;
        let mut images = Vec::new();
        if refs.children.is_empty() {
            images.push(refs);
        } else {
            let chosen: Vec<_> = refs
                .children
                .iter()
                .filter(|c| platform.is_none_or(|p| c.platform.as_deref().is_some_and(|cp| cp == p || cp.starts_with(&format!("{p}/")))))
                .collect();
            if chosen.is_empty() {
                return Err(WarmError::NoPlatform(platform.unwrap_or("?").to_owned()));
            }
            for child in chosen {
                let bytes = self.manifest(image, &Reference::Digest(child.digest.clone())).await?;
                w.manifests += 1;
                images.push(references(&bytes).ok_or(WarmError::UnreadableChild)?);
            }
        }
        progress.grow(images.iter().map(|r| r.blob_bytes()).fold(0, u64::saturating_add));
        for (digest, _) in images.into_iter().flat_map(|r| r.blobs) {
            w.bytes += self.blob(image, &digest, progress).await?;
            w.blobs += 1;
        }
        Ok(w)
    }

    fn url(&self, image: &ImageRef, rest: &str) -> String {
        format!("/v2/{}/{rest}?ns={}", image.name, image.registry)
    }

    async fn get(&self, url: &str, accept: &[&str]) -> Result<hyper::Response<hyper::body::Incoming>, WarmError> {
        let mut req = Request::get(url).header(header::HOST, "localhost");
        for a in accept {
            req = req.header(header::ACCEPT, *a);
        }
        let req = req.body(Empty::new()).map_err(WarmError::Request)?;
        let resp = self.send(req).await.map_err(|e| WarmError::Send { url: url.to_owned(), error: Box::new(e) })?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Err(WarmError::Refused { status, body: String::from_utf8_lossy(&body).trim().to_owned() });
        }
        Ok(resp)
    }

    /// Send `req` on the connection, opening it first if needed.
    async fn send(&self, req: Request<Empty<Bytes>>) -> Result<hyper::Response<hyper::body::Incoming>, WarmError> {
        let mut conn = self.conn.lock().await;
        let mut open = conn.take();
        if let Some(s) = &mut open {
            if s.ready().await.is_err() {
                open = None;
            }
        }
        let sender = match open {
            Some(s) => conn.insert(s),
            None => {
                let stream = tokio::net::UnixStream::connect(&self.socket)
                    .await
                    .map_err(|error| WarmError::Connect { socket: self.socket.clone(), error })?;
                let (sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(WarmError::Http)?;
                tokio::spawn(connection);
                conn.insert(sender)
            }
        };
        sender.send_request(req).await.map_err(WarmError::Http)
    }

    async fn manifest(&self, image: &ImageRef, reference: &Reference) -> Result<Bytes, WarmError> {
        let resp = self.get(&self.url(image, &format!("manifests/{reference}")), &MANIFEST_MEDIA_TYPES).await?;
        resp.into_body().collect().await.map(|b| b.to_bytes()).map_err(WarmError::Http)
    }

    async fn blob(&self, image: &ImageRef, digest: &Digest, progress: &dyn Progress) -> Result<u64, WarmError> {
        let mut body = self.get(&self.url(image, &format!("blobs/{digest}")), &[]).await?.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| WarmError::Blob { digest: digest.clone(), error })?;
            if let Some(d) = frame.data_ref() {
                n += d.len() as u64;
                progress.advance(d.len() as u64);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_server_warming_fails_naming_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("regcache.sock");
        let image: ImageRef = "alpine:3".parse().unwrap();
        let err = Warmer::new(&socket).warm(&image, None, &None).await.unwrap_err();
        let WarmError::Send { url, error } = &err else { panic!("{err:?}") };
        assert_eq!(url, "/v2/alpine/manifests/3?ns=docker.io");
        assert!(matches!(**error, WarmError::Connect { .. }), "{error:?}");
        let text = err.to_string();
        assert!(text.starts_with("/v2/alpine/manifests/3?ns=docker.io: cannot reach the server's local socket "), "{text}");
        assert!(text.contains(&socket.display().to_string()), "{text}");
    }
}
