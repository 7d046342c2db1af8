//! Room kept for the index: a file of [`RESERVE_BYTES`] beside it, given up when the index is
//! opened again after sled stopped writing. sled can neither read nor be opened on a file system
//! with no room at all (its reads write too, and opening writes its snapshot), so without this a
//! full disk would stop the serving of cached content as well; with it, the index opens again at
//! once, serves reads, and takes no writes of its own (`Index` refuses them) until the disk has
//! room again and the file is written back.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The room kept: sled's snapshot and a few log segments of 512 KiB.
pub const RESERVE_BYTES: u64 = 8 << 20;

/// The file keeping room for the index.
pub struct Reserve {
    path: PathBuf,
    /// Whether it was given up and not written back yet: the index takes no writes meanwhile (the
    /// gate of the index's slots).
    released: Arc<AtomicBool>,
}

impl Reserve {
    /// The reserve of the index at `index` (`index.reserve` beside it), written if missing; if there
    /// is no room for it, the index goes without (logged).
    pub fn open(index: &Path) -> Reserve {
        let reserve = Reserve { path: index.with_extension("reserve"), released: Arc::new(AtomicBool::new(false)) };
        if let Err(e) = reserve.write() {
            tracing::warn!(error = %e, path = %reserve.path.display(), "no room kept for the index: a full disk will stop it until there is room");
        }
        reserve
    }

    /// Write the file unless it is there (whole: a part written is removed).
    fn write(&self) -> io::Result<()> {
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
            return Ok(());
        }
        let result = (|| {
            let mut f = File::create(&self.path)?;
            let zeros = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / (1 << 20) {
                f.write_all(&zeros)?;
            }
            f.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&self.path);
        }
        result
    }

    /// Give the room up (the index is about to be opened again).
    pub fn release(&self) {
        match std::fs::remove_file(&self.path) {
            Ok(()) => tracing::warn!("gave up the room kept for the index"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "removing the room kept for the index failed"),
        }
        self.released.store(true, Ordering::Relaxed);
    }

    /// The gate: set while the room is given up.
    pub fn gate(&self) -> &Arc<AtomicBool> {
        &self.released
    }

    /// Whether the room was given up and not written back yet.
    pub fn is_released(&self) -> bool {
        self.released.load(Ordering::Relaxed)
    }

    /// Write the room back, once the file system has twice [`RESERVE_BYTES`] free: the index takes
    /// writes again.
    pub fn restore(&self, free: u64) -> bool {
        if free < 2 * RESERVE_BYTES {
            return false;
        }
        if let Err(e) = self.write() {
            tracing::warn!(error = %e, "writing the room kept for the index back failed");
        }
        self.released.store(false, Ordering::Relaxed);
        true
    }
}
