//! The store's background work: access times written to the index in batches, and eviction down
//! to the low-water mark once an insert takes the store over `max_size`.

use std::sync::Arc;
use std::time::Duration;

use super::{Store, LOW_WATER};
use crate::metrics::Metrics;

/// How often batched access times are written to the index.
const ACCESS_FLUSH: Duration = Duration::from_secs(30);

/// Start the background work of a store: evict when an insert passes `max_size` (signalled on
/// [`Store::pressure`]), and write access times every 30 s (`ACCESS_FLUSH`). Holds the store only
/// weakly, so it ends once the server's store is gone.
pub fn spawn_housekeeping(store: &Arc<Store>, metrics: Arc<Metrics>) {
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
