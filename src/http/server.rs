//! The accept loops: HTTP/1.1 and HTTP/2 per connection (h2c, or ALPN over TLS), the connection
//! limits (addresses outside `[access] allow` closed at once, `max_connections`, and the timeouts of
//! [`super::watch`]), the local socket, and graceful shutdown that lets running transfers finish for
//! up to 30 seconds.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::watch::{Busy, BusyGuard, Watched};
use crate::config::Connections;
use super::{Body, App, Surface};

/// How long running transfers may go on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);
/// The most a connection queues before hyper stops asking the body for more (also the limit of a
/// request head). With the blob reader's small chunks, a client that stops reading holds at most
/// about twice this in regcache's memory, the rest waits in the kernel's socket buffers.
const MAX_QUEUED: usize = 16 * 1024;
/// How long a client has to finish the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serve the registry API on `listener`, and on the local socket in the data directory, until
/// `shutdown` resolves; then drain and flush the index.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let local = match bind_local(app.local_socket()) {
        Ok(l) => Some(l),
        Err(e) => {
            let path = app.local_socket().display();
            tracing::warn!(%path, error = %e, "no local socket; `regcache warm` can't reach this server");
            None
        }
    };
    serve_on(Some(listener), local, app, shutdown).await
}

/// Serve the registry API on the local socket `local` only (the temporary server of
/// `regcache warm`) until `shutdown` resolves; then drain and flush the index.
pub async fn serve_local(local: UnixListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    serve_on(None, Some(local), app, shutdown).await
}

/// Bind the local socket: the registry API for the host's administrator (`regcache warm`), without
/// TLS or access control. Who may connect is decided by the file's permissions (owner only) and
/// the data directory's. Call only while holding the data directory (an open store): a socket file
/// found there is then stale and is replaced.
pub fn bind_local(path: &Path) -> io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn serve_on(
    main: Option<TcpListener>,
    local: Option<UnixListener>,
    app: Arc<App>,
    shutdown: impl Future<Output = ()>,
) {
    let stop = CancellationToken::new();
    let local = local.map(|l| tokio::spawn(accept_loop(l, app.clone(), Surface::Local, stop.clone().cancelled_owned())));
    let stopped = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    let main_deadline = match main {
        Some(listener) => Some(accept_loop(listener, app.clone(), Surface::Main, stopped).await),
        None => {
            stopped.await;
            None
        }
    };
    let local_deadline = match local {
        Some(task) => {
            let deadline = task.await.ok();
            let _ = std::fs::remove_file(app.local_socket());
            deadline
        }
        None => None,
    };
    let deadline = main_deadline.or(local_deadline).unwrap_or_else(tokio::time::Instant::now);
    // Downloads still running (their clients may be gone) finish and are stored, within the drain
    // time; those still running then are abandoned.
    if !app.cache().fills().drain(deadline).await {
        tracing::warn!("blob downloads still running at the end of the drain time were abandoned; they will be fetched again");
    }
    let store = app.cache().store();
    if let Err(e) = store.flush_access().and_then(|_| store.index().flush()) {
        tracing::error!(error = %e, "flushing the index failed");
    }
}

/// Serve only `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let _ = accept_loop(listener, app, Surface::Admin, shutdown).await;
}

/// Something connections are accepted from.
trait Listener: Send + 'static {
    /// A connection's transport.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// The next connection and its peer's address.
    fn accept(&self) -> impl Future<Output = io::Result<(Self::Io, SocketAddr)>> + Send;
}

impl Listener for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

impl Listener for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> io::Result<(Self::Io, SocketAddr)> {
        let (stream, _) = UnixListener::accept(self).await?;
        // Local clients have no network address; logs show them as 0.0.0.0:0.
        Ok((stream, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))))
    }
}

/// Accept until `shutdown`, then drain connections; returns when the drain time ends.
async fn accept_loop<L: Listener>(
    listener: L,
    app: Arc<App>,
    surface: Surface,
    shutdown: impl Future<Output = ()>,
) -> tokio::time::Instant {
    let limits = *app.connections();
    let builder = connection_builder(&limits);
    let graceful = GracefulShutdown::new();
    let tls = if surface == Surface::Main { app.tls().map(|t| t.acceptor().clone()) } else { None };
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept_next(&listener, &slots) => accepted,
            _ = &mut shutdown => break,
        };
        let (slot, stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Before a byte is read or a TLS handshake started.
        if surface == Surface::Main && !app.gate().allows(peer.ip()) {
            tracing::info!(%peer, "address not allowed: connection closed");
            continue;
        }
        serve_connection(&app, surface, &builder, graceful.watcher(), tls.clone(), (slot, stream, peer));
    }
    drop(listener);
    drain(graceful, surface).await
}

/// Serve one accepted connection on its own task, holding its `slot` until it ends: the TLS
/// handshake (within [`HANDSHAKE`]) when there is TLS, then HTTP/1.1 or HTTP/2, each request
/// counted as in progress (for the idle timeouts of [`Watched`]) until its body is done.
fn serve_connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    app: &Arc<App>,
    surface: Surface,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    tls: Option<TlsAcceptor>,
    (slot, stream, peer): (OwnedSemaphorePermit, I, SocketAddr),
) {
    let busy = Arc::new(Busy::default());
    let stream = Watched::new(stream, *app.connections(), busy.clone());
    let app = app.clone();
    let svc = service_fn(move |req| {
        let guard = busy.start();
        let app = app.clone();
        async move {
            let resp = app.handle(req, peer, surface).await?;
            Ok::<_, Infallible>(resp.map(|inner| Tracked { inner, _guard: guard }))
        }
    });
    let builder = builder.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let result = match tls {
            None => watcher.watch(builder.serve_connection(TokioIo::new(stream), svc).into_owned()).await,
            Some(acceptor) => match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => {
                    watcher.watch(builder.serve_connection(TokioIo::new(tls_stream), svc).into_owned()).await
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// The HTTP/1.1 and HTTP/2 connection settings: hyper keeps polling a body while less than
/// [`MAX_QUEUED`] is queued for a connection, so memory per connection stays flat however many
/// clients download at once.
fn connection_builder(limits: &Connections) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(MAX_QUEUED).timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// The next connection, its peer and the slot it holds: over `max_connections`, connections wait
/// in the kernel's listen backlog until a running one ends and frees its slot.
async fn accept_next<L: Listener>(listener: &L, slots: &Arc<Semaphore>) -> io::Result<(OwnedSemaphorePermit, L::Io, SocketAddr)> {
    // Not an error in practice: the semaphore is never closed, so acquiring only waits.
    let slot = slots.clone().acquire_owned().await.map_err(io::Error::other)?;
    let (stream, peer) = listener.accept().await?;
    Ok((slot, stream, peer))
}

/// After the accept loop stopped: let running connections finish for up to [`DRAIN`]; returns
/// when the drain time ends.
async fn drain(graceful: GracefulShutdown, surface: Surface) -> tokio::time::Instant {
    if surface == Surface::Main {
        tracing::info!("shutting down: no new connections; waiting up to {DRAIN:?} for running transfers");
    }
    let deadline = tokio::time::Instant::now() + DRAIN;
    if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("transfers still running after {DRAIN:?}; stopping anyway");
    }
    deadline
}

/// A response body that keeps its request counted as in progress until it is done or dropped.
struct Tracked {
    inner: Body,
    _guard: BusyGuard,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, io::Error>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
