//! The accept loops: HTTP/1.1 and HTTP/2 per connection (h2c, or ALPN over TLS), and graceful
//! shutdown that lets running transfers finish for up to 30 seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::{Registry, Surface};

/// How long running transfers may go on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);
/// The most a connection queues before hyper stops asking the body for more.
const MAX_QUEUED: usize = 128 * 1024;
/// How long a client has to finish the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Serve the registry API on `listener` until `shutdown` resolves, then drain and flush the index.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: impl Future<Output = ()>) {
    let deadline = accept_loop(listener, registry.clone(), Surface::Main, shutdown).await;
    // Downloads still running (their clients may be gone) finish and are stored, within the drain
    // time; those still running then are abandoned.
    if !registry.cache().fills().drain(deadline).await {
        tracing::warn!("blob downloads still running at the end of the drain time were abandoned; they will be fetched again");
    }
    let store = registry.cache().store();
    if let Err(e) = store.flush_access().and_then(|_| store.index.flush()) {
        tracing::error!(error = %e, "flushing the index failed");
    }
}

/// Serve only `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve_admin(listener: TcpListener, registry: Arc<Registry>, shutdown: impl Future<Output = ()>) {
    let _ = accept_loop(listener, registry, Surface::Admin, shutdown).await;
}

/// Accept until `shutdown`, then drain connections; returns when the drain time ends.
async fn accept_loop(
    listener: TcpListener,
    registry: Arc<Registry>,
    surface: Surface,
    shutdown: impl Future<Output = ()>,
) -> tokio::time::Instant {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper keeps polling a body while less than this is queued for a connection: a small queue
    // keeps memory per connection flat however many clients download at once.
    builder.http1().max_buf_size(MAX_QUEUED);
    let graceful = GracefulShutdown::new();
    let tls = if surface == Surface::Main { registry.tls().map(|t| t.acceptor().clone()) } else { None };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let registry = registry.clone();
                let svc = service_fn(move |req| registry.clone().handle(req, peer, surface));
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let tls = tls.clone();
                tokio::spawn(async move {
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
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    if surface == Surface::Main {
        tracing::info!("shutting down: no new connections; waiting up to {DRAIN:?} for running transfers");
    }
    let deadline = tokio::time::Instant::now() + DRAIN;
    if tokio::time::timeout_at(deadline, graceful.shutdown()).await.is_err() {
        tracing::warn!("transfers still running after {DRAIN:?}; stopping anyway");
    }
    deadline
}
