//! The sled database behind the index, replaceable while the server runs.
//!
//! sled (pinned at 0.34.7) keeps the first I/O error its log hits (`ENOSPC` while the disk is full,
//! `EIO`) as a "global error" of the open database and refuses every write from then on; only
//! opening the database again clears it (sled's `PageCache::start`). Reads keep working. So every
//! handle on the database's trees is a [`Slot`]: the index can empty its slots (which lets go of the
//! old database and, with it, sled's file lock), open the database again and fill them (see
//! `Index::reopen`). Reopening in the same process is sound because sled's exclusive lock on its
//! `db` file is held until the last handle on the old database is dropped: the new one cannot be
//! opened while anything could still write through the old one.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::sync::{read, write};

/// A handle on a part of the database (a tree, or all of them) that is empty while the database is
/// being opened again, and refuses writes while its gate is shut (the index's disk was full:
/// `index::reserve`). Clones share the slot.
pub struct Slot<T> {
    value: Arc<RwLock<Option<T>>>,
    read_only: Arc<AtomicBool>,
}

impl<T> Clone for Slot<T> {
    fn clone(&self) -> Self {
        Slot { value: self.value.clone(), read_only: self.read_only.clone() }
    }
}

impl<T: Clone> Slot<T> {
    /// A slot holding `value`, taking writes.
    pub fn new(value: T) -> Slot<T> {
        Slot::gated(value, &Arc::new(AtomicBool::new(false)))
    }

    /// A slot holding `value` that refuses writes while `read_only` is set.
    pub(in crate::store) fn gated(value: T, read_only: &Arc<AtomicBool>) -> Slot<T> {
        Slot { value: Arc::new(RwLock::new(Some(value))), read_only: read_only.clone() }
    }

    /// What the slot holds now; an I/O error while the database is being opened again. The caller
    /// holds the clone only for one operation: a clone kept keeps the old database (and its lock).
    pub fn get(&self) -> sled::Result<T> {
        read(&self.value).clone().ok_or_else(reopening)
    }

    /// The same, for a write: refused while the gate is shut.
    pub fn get_for_write(&self) -> sled::Result<T> {
        if self.read_only.load(Ordering::Relaxed) {
            return Err(read_only());
        }
        self.get()
    }

    /// Empty the slot; what it held.
    pub(in crate::store) fn take(&self) -> Option<T> {
        write(&self.value).take()
    }

    /// Fill the slot with `value`.
    pub(in crate::store) fn put(&self, value: T) {
        *write(&self.value) = Some(value);
    }
}

/// The error of an operation while the database is being opened again.
fn reopening() -> sled::Error {
    sled::Error::Io(std::io::Error::other("the index is being reopened after a write error"))
}

/// The error of a write while the index takes none (its disk was full).
pub fn read_only() -> sled::Error {
    sled::Error::Io(std::io::Error::new(std::io::ErrorKind::StorageFull, "the index takes no writes until its disk has room again"))
}

/// The open database and its trees.
pub struct Trees {
    /// The configuration it was opened with: it holds sled's global error.
    config: sled::Config,
    /// The database.
    pub db: sled::Db,
    /// Digest → size of the blobs stored.
    pub blobs: sled::Tree,
    /// Digest → media type, NUL, bytes of the manifests stored.
    pub manifests: sled::Tree,
    /// `upstream\0repository\0tag` → the answers per kind.
    pub tags: sled::Tree,
    /// Digest → last use (unix milliseconds).
    pub access: sled::Tree,
    /// `upstream\0repository\0subject` → the last referrers list.
    pub referrers: sled::Tree,
    /// Digest → size of the blobs known to be in the shared bucket.
    pub shared: sled::Tree,
    /// `upstream\0repository` → the place in `tag_list_order` (8 bytes, big-endian) and the
    /// `ListedTags` record.
    pub tag_lists: sled::Tree,
    /// Place (8 bytes, big-endian, increasing with every write) → the `tag_lists` key written then:
    /// the first entry is the list remembered longest ago.
    pub tag_list_order: sled::Tree,
    /// The shared bucket's backlog (`store::bucket::backlog`).
    pub backlog: sled::Tree,
}

/// How long opening waits for a lock that is being let go.
const LOCK_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

impl Trees {
    /// Open the database at `path` and its trees. A database closed a moment ago (a restart in the
    /// same process, a server that is just exiting, the index reopened) may still hold its file lock
    /// until sled's background flusher has stopped, so a lock failure is retried for
    /// [`LOCK_GRACE`]; a lock held longer (a running server) is an error.
    pub fn open(path: &Path) -> sled::Result<Trees> {
        let config = sled::Config::new().path(path).flush_every_ms(Some(1000));
        let start = std::time::Instant::now();
        let db = loop {
            match config.open() {
                Err(e) if start.elapsed() < LOCK_GRACE && is_lock_error(&e) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => break other?,
            }
        };
        Ok(Trees {
            blobs: db.open_tree("blobs")?,
            manifests: db.open_tree("manifests")?,
            tags: db.open_tree("tags")?,
            access: db.open_tree("access")?,
            referrers: db.open_tree("referrers")?,
            shared: db.open_tree("shared")?,
            tag_lists: db.open_tree("tag_lists")?,
            tag_list_order: db.open_tree("tag_list_order")?,
            backlog: db.open_tree("backlog")?,
            config,
            db,
        })
    }

    /// The I/O error that stopped the database's writes, if one did.
    pub fn failure(&self) -> Option<sled::Error> {
        // `Config::global_error` is public but hidden in sled's docs; the configuration's clone the
        // database runs with shares the error (an `Arc` in sled's `Inner`), checked by
        // `index::tests::a_failed_database_is_noticed_and_reopened`.
        self.config.global_error().err()
    }
}

/// Whether `e` is sled failing to lock its database file (another process, or a store closed a
/// moment ago, holds it).
///
/// sled (pinned at 0.34.7) has no error variant for this: a failed `try_lock_exclusive` on its `db`
/// file becomes `Error::Io(io::Error::new(ErrorKind::Other, "could not acquire lock on …: <the OS
/// error>"))` (sled's `config.rs`), so the original `WouldBlock` kind survives only as text. Hence
/// the message match; a sled upgrade must recheck it (`it::commands` runs the commands beside a
/// running server).
pub fn is_lock_error(e: &sled::Error) -> bool {
    let msg = e.to_string();
    msg.contains("lock") || msg.contains("Resource temporarily unavailable")
}
