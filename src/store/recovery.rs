//! Getting the index writable again after sled stopped writing.
//!
//! After one I/O error of its log (the disk full: `ENOSPC`), sled fails every read and write of
//! that database until it is opened again (`index::handle`). The index opens it again at once, on
//! the room kept for it (`index::reserve`), when an operation finds it failed (or this watcher
//! does); from then on it serves reads (cached content is still served) and takes no writes (a miss
//! may be a 500 with an OCI error body), so that sled has no cause to fail again while the disk
//! stays full. The watcher, every [`CHECK_EVERY`], opens a failed or closed index again, writes the
//! room back once the file system has room (writes work again), and then runs the start-up repair
//! (`Store::reconcile`): blobs whose index write was refused are indexed again. No restart.
//!
//! In the same process rather than an exit for the service manager to restart: the index is the
//! only part that fails, sled's file lock makes reopening safe (the new database cannot open while
//! the old one has a handle left), and an exit would drop every connection and running fill and
//! stop serving cached content, which the index opened again still does.

use std::sync::Arc;
use std::time::Duration;

use super::hot::budget::free_bytes;
use super::{Reconciled, Store, StoreError};

/// How often the index is checked for a failed database.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Why the index could not be brought back.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Opening it again failed.
    #[error(transparent)]
    Reopen(#[from] StoreError),
    /// The free space of its file system could not be measured.
    #[error("measuring the index's free space: {0}")]
    FreeSpace(std::io::Error),
    /// It opened, and the repair after it failed.
    #[error("repair after reopening the index: {0}")]
    Repair(#[from] std::io::Error),
}

/// Start the watcher of `store`'s index. Holds the store only weakly, so it ends once the server's
/// store is gone.
pub fn spawn_index_recovery(store: &Arc<Store>) {
    let weak = Arc::downgrade(store);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(store) = weak.upgrade() else { return };
            if !needs_work(&store) {
                continue;
            }
            match tokio::task::spawn_blocking(move || recover(&store)).await {
                Ok(Ok(Some(r))) => {
                    tracing::warn!(dropped = r.dropped, reindexed = r.reindexed, removed = r.removed, "the index takes writes again, repaired after it was opened again");
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "bringing the index back failed; trying again"),
                Err(e) => tracing::error!(error = %e, "bringing the index back panicked; trying again"),
            }
        }
    });
}

/// Whether the index failed, is closed, refuses writes or is due its repair.
fn needs_work(store: &Store) -> bool {
    let index = &store.index;
    index.failure().is_some() || index.is_closed() || index.is_read_only() || index.repair_due()
}

/// One step of bringing the index back: open it again if it failed or is closed (it serves reads
/// then, and refuses writes); once its file system has room, take writes again; then make it and
/// the blob files agree. What the repair did, if it ran.
pub fn recover(store: &Store) -> Result<Option<Reconciled>, RecoveryError> {
    let index = &store.index;
    if index.failure().is_some() || index.is_closed() {
        index.reopen()?;
    }
    let free = free_bytes(index.path()).map_err(RecoveryError::FreeSpace)?;
    if !index.restore_reserve(free) || !index.take_repair_due() {
        return Ok(None);
    }
    Ok(Some(store.reconcile()?))
}
