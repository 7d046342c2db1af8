//! One call at a time per key: callers that arrive while a call for their key is running share its
//! result instead of starting their own.
//!
//! The call runs as its own task, so it finishes (and its result is cached where the caller put it)
//! even if every caller that was waiting goes away. A call that dies instead (it panics, or its task
//! is cancelled) gives every waiter [`CallDied`] and leaves nothing behind under its key: the next
//! caller starts a new call.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::sync::lock;

/// How many calls may be coalesced at once. Keys are chosen by clients (repository names, tags), so
/// the map is capped: past this many, a call runs alone (its caller still gets its result).
const MAX_COALESCED_CALLS: usize = 4096;

/// A coalesced call ended without a result: it panicked, or its task was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the shared call ended without a result (it panicked or was cancelled)")]
pub struct CallDied;

/// What the waiters of a dead call get: `Err(CallDied.into())`, so callers keep their own error type.
impl<T, E: From<CallDied>> From<CallDied> for Result<T, E> {
    fn from(died: CallDied) -> Self {
        Err(E::from(died))
    }
}

/// Coalesced calls keyed by `K` yielding `V`.
pub struct Singleflight<K, V: Clone> {
    // A std Mutex: it is held only to look up, insert or remove a handle, never across an await.
    calls: Arc<Mutex<Calls<K, V>>>,
}

/// The running calls. Bounded: at most [`MAX_COALESCED_CALLS`] entries, each removed by its call's
/// [`EntryGuard`] however the call ends.
struct Calls<K, V: Clone> {
    running: HashMap<K, (u64, Shared<BoxFuture<'static, V>>)>,
    /// Tells the entries of successive calls for one key apart.
    next_id: u64,
}

/// Another handle on the same calls.
impl<K, V: Clone> Clone for Singleflight<K, V> {
    fn clone(&self) -> Self {
        Singleflight { calls: Arc::clone(&self.calls) }
    }
}

impl<K, V: Clone> Default for Singleflight<K, V> {
    fn default() -> Self {
        Singleflight { calls: Arc::new(Mutex::new(Calls { running: HashMap::new(), next_id: 0 })) }
    }
}

/// Owned by a call's task: dropping it (the call returned, panicked or was cancelled) removes the
/// call's entry, so no later caller joins a call that is over.
struct EntryGuard<K: Hash + Eq, V: Clone> {
    calls: Arc<Mutex<Calls<K, V>>>,
    key: K,
    id: u64,
}

impl<K: Hash + Eq, V: Clone> Drop for EntryGuard<K, V> {
    fn drop(&mut self) {
        let mut calls = lock(&self.calls);
        // Only this call's own entry: a later call for the key may have replaced it already.
        if calls.running.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            calls.running.remove(&self.key);
        }
    }
}

impl<K, V> Singleflight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + From<CallDied> + 'static,
{
    /// The result of the running call for `key`, or of a new call made by `make`; `CallDied` (as a
    /// `V`) if the call panicked or was cancelled.
    pub async fn run<F>(&self, key: K, make: impl FnOnce() -> F) -> V
    where
        F: Future<Output = V> + Send + 'static,
    {
        let call = {
            let mut calls = lock(&self.calls);
            if let Some((_, running)) = calls.running.get(&key) {
                running.clone()
            } else {
                let id = calls.next_id;
                calls.next_id = calls.next_id.wrapping_add(1);
                let guard = EntryGuard { calls: Arc::clone(&self.calls), key: key.clone(), id };
                let fut = make();
                // The guard lives in the task and is dropped when the task ends, however it ends. It
                // removes the entry inserted below: the task cannot take the lock before we release it.
                let handle = tokio::spawn(async move {
                    let _guard = guard;
                    fut.await
                });
                let call = async move {
                    handle.await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "a shared call died; its waiters get an error");
                        V::from(CallDied)
                    })
                }
                .boxed()
                .shared();
                if calls.running.len() < MAX_COALESCED_CALLS {
                    calls.running.insert(key, (id, call.clone()));
                }
                call
            }
        };
        call.await
    }

    /// How many callers are waiting on the running calls, all keys together: lets a test that
    /// holds the upstream know that every request has joined before it lets the call go on.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn waiters(&self) -> usize {
        let calls = lock(&self.calls);
        // Each waiter holds a clone of the call's `Shared`; the map holds one more.
        calls.running.values().map(|(_, s)| s.strong_count().unwrap_or(1).saturating_sub(1)).sum()
    }

    /// How many calls are coalesced now.
    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.calls).running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type Answer = Result<u32, CallDied>;

    #[tokio::test]
    async fn concurrent_callers_share_one_call() {
        let sf: Arc<Singleflight<&'static str, Answer>> = Arc::new(Singleflight::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let (sf, calls, mut rx) = (sf.clone(), calls.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                sf.run("k", move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    let _ = rx.wait_for(|v| *v).await;
                    Ok(7)
                })
                .await
            }));
        }
        // Wait until all ten wait on the one call, then let it finish.
        let joined = async {
            while sf.waiters() < 10 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), joined).await.expect("all ten wait on the call");
        assert_eq!(sf.waiters(), 10);
        release_tx.send(true).unwrap();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(7));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(sf.waiters(), 0, "nobody waits on a finished call");
        // Finished calls are forgotten: the next caller makes a new call.
        let again = sf.run("k", || async { Ok(8) }).await;
        assert_eq!(again, Ok(8));
        assert_eq!(sf.len(), 0);
    }

    #[tokio::test]
    async fn a_panicked_call_fails_its_waiters_and_is_not_kept() {
        let sf: Arc<Singleflight<&'static str, Answer>> = Arc::new(Singleflight::default());
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let started = Arc::new(tokio::sync::Notify::new());
        let first = {
            let (sf, mut rx, started) = (sf.clone(), release_rx.clone(), started.clone());
            tokio::spawn(async move {
                sf.run("k", move || async move {
                    started.notify_one();
                    let _ = rx.wait_for(|v| *v).await;
                    panic!("injected panic inside a shared call");
                })
                .await
            })
        };
        started.notified().await;
        // A second caller joins the call that is about to panic.
        let joiner = {
            let sf = sf.clone();
            tokio::spawn(async move { sf.run("k", || async { Ok(1) }).await })
        };
        while !joined(&sf) {
            tokio::task::yield_now().await;
        }
        release_tx.send(true).unwrap();
        assert_eq!(first.await.unwrap(), Err(CallDied), "the caller gets an error, not a panic");
        assert_eq!(joiner.await.unwrap(), Err(CallDied), "so does every waiter");
        assert_eq!(sf.len(), 0, "the dead call left nothing under its key");
        assert_eq!(sf.run("k", || async { Ok(2) }).await, Ok(2), "the next caller starts a new call");
    }

    /// Whether the running call for "k" has a waiter besides its first caller (the map holds one
    /// handle, each waiter another).
    fn joined(sf: &Singleflight<&'static str, Answer>) -> bool {
        sf.calls.lock().unwrap().running.get("k").and_then(|(_, s)| s.strong_count()).is_some_and(|n| n > 2)
    }

    #[test]
    fn a_cancelled_call_is_not_kept() {
        let sf: Arc<Singleflight<&'static str, Answer>> = Arc::new(Singleflight::default());
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let started = Arc::new(tokio::sync::Notify::new());
        rt.block_on({
            let (sf, signal) = (sf.clone(), started.clone());
            async move {
                tokio::spawn(async move {
                    sf.run("k", move || async move {
                        signal.notify_one();
                        std::future::pending::<Answer>().await
                    })
                    .await
                });
                started.notified().await;
            }
        });
        assert_eq!(sf.len(), 1);
        // Shutting the runtime down cancels the call's task.
        drop(rt);
        assert_eq!(sf.len(), 0, "a cancelled call left nothing under its key");
    }

    #[tokio::test]
    async fn the_map_is_capped() {
        let sf: Arc<Singleflight<usize, Answer>> = Arc::new(Singleflight::default());
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        let mut tasks = Vec::new();
        for k in 0..MAX_COALESCED_CALLS + 10 {
            let (sf, mut rx) = (sf.clone(), release_rx.clone());
            tasks.push(tokio::spawn(async move {
                sf.run(k, move || async move {
                    let _ = rx.wait_for(|v| *v).await;
                    Ok(k as u32)
                })
                .await
            }));
        }
        while sf.len() < MAX_COALESCED_CALLS {
            tokio::task::yield_now().await;
        }
        assert_eq!(sf.len(), MAX_COALESCED_CALLS);
        release_tx.send(true).unwrap();
        for (k, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.unwrap(), Ok(k as u32), "calls past the cap still answer");
        }
        assert_eq!(sf.len(), 0);
    }
}
