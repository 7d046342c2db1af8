//! The accept loop: HTTP/1.1 and HTTP/2 (h2c) per connection, and graceful shutdown that lets running
//! transfers finish for up to 30 seconds.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use super::Registry;

/// How long running transfers may go on after shutdown begins.
const DRAIN: Duration = Duration::from_secs(30);

/// Serve `registry` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>, shutdown: impl Future<Output = ()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
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
                let svc = service_fn(move |req| registry.clone().handle(req, peer));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: no new connections; waiting up to {DRAIN:?} for running transfers");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("transfers still running after {DRAIN:?}; stopping anyway");
    }
    let store = registry.cache().store();
    if let Err(e) = store.flush_access().and_then(|_| store.index.flush()) {
        tracing::error!(error = %e, "flushing the index failed");
    }
}
