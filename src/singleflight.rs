//! One call at a time per key: callers that arrive while a call for their key is running share its
//! result instead of starting their own.
//!
//! The call runs as its own task, so it finishes (and its result is cached where the caller put it)
//! even if every caller that was waiting goes away.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

/// Shared calls keyed by `K` yielding `V`.
pub struct Singleflight<K, V: Clone> {
    // A std Mutex: it is held only to look up or insert a handle, never across an await.
    calls: Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, V>>>>>,
}

impl<K, V: Clone> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight { calls: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<K, V> Singleflight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of the running call for `key`, or of a new call made by `make`.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let shared = {
            let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(running) = calls.get(&key) {
                running.clone()
            } else {
                let fut = make();
                let calls_ref = Arc::clone(&self.calls);
                let k = key.clone();
                // The task removes its own entry when done; it can only run once we release the lock,
                // so the entry it removes is the one inserted below.
                let handle = tokio::spawn(async move {
                    let v = fut.await;
                    calls_ref.lock().unwrap_or_else(|p| p.into_inner()).remove(&k);
                    v
                });
                let shared = async move {
                    match handle.await {
                        Ok(v) => v,
                        Err(e) => std::panic::resume_unwind(e.into_panic()),
                    }
                }
                .boxed()
                .shared();
                calls.insert(key, shared.clone());
                shared
            }
        };
        shared.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let sf: Arc<Singleflight<&'static str, u32>> = Arc::new(Singleflight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (sf, calls, mut rx) = (sf.clone(), calls.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.wait_for(|v| *v).await;
                    7
                })
                .await
            }));
        }
        // Wait until the one call has started, then let it finish.
        while calls.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 7);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Finished calls are forgotten: the next caller makes a new call.
        let again = sf.run("k", || async { 8 }).await;
        assert_eq!(again, 8);
    }
}
