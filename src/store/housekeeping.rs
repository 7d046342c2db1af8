//! The store's background work: access times written to the index in batches, and eviction down
//! to the low-water mark once an insert takes the store over `max_size`; with a shared bucket, the
//! drain of its backlog ([`super::bucket::Backlog`]), and under `bucket_max_size` this node's access
//! summaries and, when it is the evictor, the bucket's eviction ([`super::bucket_lru`]).

use std::sync::Arc;
use std::time::Duration;

use super::bucket::backlog::{self, Drained};
use super::bucket::lru::{EVICT_EVERY, SUMMARY_INTERVAL};
use super::{Shared, Store, LOW_WATER};
use crate::metrics::Metrics;

/// How often batched access times are written to the index.
const ACCESS_FLUSH: Duration = Duration::from_secs(30);

/// Start the background work of a store: evict when an insert passes `max_size` (signalled on
/// `Store::pressure`), write access times every 30 s (`ACCESS_FLUSH`), and with a shared bucket
/// drain its backlog. Holds the store only weakly, so it ends once the server's store is gone.
pub fn spawn_housekeeping(store: &Arc<Store>, metrics: Arc<Metrics>) {
    if let Some(shared) = &store.shared {
        spawn_backlog_drain(store, shared);
        if shared.eviction().is_some() {
            spawn_bucket_housekeeping(shared);
        }
    }
    let weak = Arc::downgrade(store);
    let pressure = store.pressure.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ACCESS_FLUSH);
        loop {
            let evict = tokio::select! {
                _ = pressure.notified() => true,
                _ = tick.tick() => false,
            };
            let Some(store) = weak.upgrade() else { return };
            let metrics = metrics.clone();
            let _ = tokio::task::spawn_blocking(move || housekeep(&store, &metrics, evict)).await;
        }
    });
}

/// One round: write the access times, then, if `evict` and the store is over `max_size`, evict
/// least-recently-used content down to [`LOW_WATER`] of it.
fn housekeep(store: &Store, metrics: &Metrics, evict: bool) {
    if let Err(e) = store.flush_access() {
        tracing::warn!(error = %e, "writing access times failed");
    }
    let Some(max) = store.max_size.filter(|max| evict && store.over_limit(*max)) else { return };
    let target = (max as f64 * LOW_WATER) as u64;
    match store.evict(target, false) {
        Ok(gone) => {
            let bytes: u64 = gone.iter().map(|e| e.size).sum();
            for e in &gone {
                metrics.evicted(e.size);
            }
            tracing::info!(evicted = gone.len(), bytes, used = store.index.used_bytes(), max_size = max, "evicted least-recently-used content");
        }
        Err(e) => tracing::error!(error = %e, "eviction failed"),
    }
}

/// Drain the bucket's backlog now (what a previous run left), and again whenever something is
/// added to it or the bucket is marked up; while the bucket is down, once its retry time has come
/// (one entry then tries it). Ends when the store is gone (dropping the bucket's client wakes it).
fn spawn_backlog_drain(store: &Arc<Store>, shared: &Arc<Shared>) {
    let weak = Arc::downgrade(store);
    let kick = shared.backlogged();
    tokio::spawn(async move {
        loop {
            match backlog::drain(&weak).await {
                Drained::Gone => return,
                Drained::Idle => kick.notified().await,
                Drained::DownUntil(at) => {
                    tokio::select! {
                        () = kick.notified() => {}
                        () = tokio::time::sleep_until(at.into()) => {}
                    }
                }
            }
        }
    });
}

/// This node's part in `bucket_max_size`, beside the requests (they only note accesses in memory):
/// every [`SUMMARY_INTERVAL`] (or sooner when the accesses noted fill up) publish the heartbeat and
/// access summary, and every [`EVICT_EVERY`]th time run an eviction round, which evicts only if
/// this node is the evictor. The first round comes one interval after the start. Nothing is asked
/// of the bucket while it is down. Holds the bucket's client weakly: ends with the server.
fn spawn_bucket_housekeeping(shared: &Arc<Shared>) {
    let weak = Arc::downgrade(shared);
    let Some(full) = shared.accesses_full() else { return };
    tokio::spawn(async move {
        let start = tokio::time::Instant::now() + SUMMARY_INTERVAL;
        let mut tick = tokio::time::interval_at(start, SUMMARY_INTERVAL);
        // A round slower than the interval (a large bucket's listing) must not be followed by a
        // burst of the ticks it missed: each would publish, and eviction would come early.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rounds = 0u32;
        loop {
            let timed = tokio::select! {
                _ = tick.tick() => true,
                _ = full.notified() => false,
            };
            let Some(shared) = weak.upgrade() else { return };
            if timed {
                rounds = rounds.wrapping_add(1);
            }
            if timed && rounds.is_multiple_of(EVICT_EVERY) {
                shared.evict_round().await;
            } else {
                shared.publish_accesses().await;
            }
        }
    });
}
