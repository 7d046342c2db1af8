//! The disk budget of fills: how many bytes their temporary files may hold together (`max_temp`),
//! and how much free space they always leave on the data directory's file system (`min_free`).
//!
//! A fill reserves bytes before it writes them: a blob whose size is announced, all of it up
//! front; a blob without a length, batch by batch. A refused reservation means "don't store":
//! the fill passes the bytes through to its readers instead. Reserved bytes not yet written are
//! counted against free space, so concurrent fills can't each promise the same free gigabytes.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::sync::lock;

/// How many bytes the file system holding `dir` has free for unprivileged writers.
pub(in crate::store) fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Measures free space (the real one, or a test's).
type FreeSpace = Box<dyn Fn() -> io::Result<u64> + Send + Sync>;

/// The budget all temporary files share.
pub struct TempBudget {
    max_temp: Option<u64>,
    min_free: u64,
    free: FreeSpace,
    // A std Mutex: held for a few additions only (free space is measured before taking it), never
    // across an await or I/O.
    totals: Arc<Mutex<Totals>>,
}

/// What all live reservations hold.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Totals {
    /// Bytes reserved (written or not).
    held: u64,
    /// Bytes reserved but not written yet.
    unwritten: u64,
}

/// Why bytes can't be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoRoom {
    /// The temporaries of all fills together would pass `max_temp`.
    MaxTemp {
        /// The limit.
        max_temp: u64,
        /// What the running fills already hold.
        held: u64,
    },
    /// Less than `min_free` would be left on the file system.
    MinFree {
        /// Free bytes now, less what running fills have reserved but not written.
        free: u64,
        /// The reserve.
        min_free: u64,
    },
    /// Free space could not be measured.
    Unmeasurable(String),
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoRoom::MaxTemp { max_temp, held } => {
                write!(f, "running fills already hold {held} of max_temp {max_temp} bytes")
            }
            NoRoom::MinFree { free, min_free } => write!(f, "{free} bytes free, min_free is {min_free}"),
            NoRoom::Unmeasurable(e) => write!(f, "free space unknown: {e}"),
        }
    }
}

/// Bytes one fill may write. Dropping it gives them back (the temporary file is gone by then or
/// has become a blob, counted by the index).
pub struct Reservation {
    totals: Arc<Mutex<Totals>>,
    mine: Totals,
}

impl TempBudget {
    /// A budget for temporaries in `tmp`: at most `max_temp` bytes together (`None`: no limit
    /// but free space), always leaving `min_free` bytes free.
    pub fn new(tmp: PathBuf, max_temp: Option<u64>, min_free: u64) -> TempBudget {
        TempBudget { max_temp, min_free, free: Box::new(move || free_bytes(&tmp)), totals: Default::default() }
    }

    /// A budget whose free space is whatever `free` says, for tests.
    #[cfg(test)]
    pub(crate) fn with_free(max_temp: Option<u64>, min_free: u64, free: impl Fn() -> u64 + Send + Sync + 'static) -> TempBudget {
        TempBudget { max_temp, min_free, free: Box::new(move || Ok(free())), totals: Default::default() }
    }

    /// Reserve `n` bytes for a new temporary file.
    pub fn reserve(&self, n: u64) -> Result<Reservation, NoRoom> {
        let mut r = Reservation { totals: self.totals.clone(), mine: Totals::default() };
        self.grow(&mut r, n)?;
        Ok(r)
    }

    /// Reserve `n` more bytes for the temporary file of `r`.
    pub fn grow(&self, r: &mut Reservation, n: u64) -> Result<(), NoRoom> {
        let free = (self.free)().map_err(|e| NoRoom::Unmeasurable(e.to_string()))?;
        let mut totals = lock(&self.totals);
        if let Some(max_temp) = self.max_temp.filter(|max| totals.held.saturating_add(n) > *max) {
            return Err(NoRoom::MaxTemp { max_temp, held: totals.held });
        }
        let free = free.saturating_sub(totals.unwritten);
        if n > free.saturating_sub(self.min_free) {
            return Err(NoRoom::MinFree { free, min_free: self.min_free });
        }
        totals.held = totals.held.saturating_add(n);
        totals.unwritten = totals.unwritten.saturating_add(n);
        r.mine.held = r.mine.held.saturating_add(n);
        r.mine.unwritten = r.mine.unwritten.saturating_add(n);
        Ok(())
    }

    /// Bytes all running fills hold reserved.
    pub fn held(&self) -> u64 {
        lock(&self.totals).held
    }
}

impl Reservation {
    /// `n` reserved bytes are now on disk.
    pub fn wrote(&mut self, n: u64) {
        let n = n.min(self.mine.unwritten);
        self.mine.unwritten -= n;
        let mut totals = lock(&self.totals);
        totals.unwritten = totals.unwritten.saturating_sub(n);
    }
}

impl Reservation {
    /// Nothing more will be written (the fill stopped storing): give back the bytes reserved but
    /// not written. What is written stays held: readers behind the fill still read it from the file.
    pub fn give_back_unwritten(&mut self) {
        let n = std::mem::take(&mut self.mine.unwritten);
        if n == 0 {
            return;
        }
        self.mine.held -= n;
        let mut totals = lock(&self.totals);
        totals.held = totals.held.saturating_sub(n);
        totals.unwritten = totals.unwritten.saturating_sub(n);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut totals = lock(&self.totals);
        totals.held = totals.held.saturating_sub(self.mine.held);
        totals.unwritten = totals.unwritten.saturating_sub(self.mine.unwritten);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn reservations_fit_max_temp_and_leave_min_free() {
        // (max_temp, min_free, free, already reserved and written, already reserved unwritten, asked, granted)
        let cases = [
            (None, 0, 1000, 0, 0, 1000, true),
            (None, 0, 1000, 0, 0, 1001, false),
            (None, 100, 1000, 0, 0, 900, true),
            (None, 100, 1000, 0, 0, 901, false),
            (None, 100, 50, 0, 0, 0, true),
            (None, 100, 50, 0, 0, 1, false),
            // Promised but unwritten bytes are not free.
            (None, 100, 1000, 0, 400, 501, false),
            (None, 100, 1000, 400, 0, 900, true),
            (Some(500), 0, u64::MAX, 300, 0, 200, true),
            (Some(500), 0, u64::MAX, 300, 100, 101, false),
        ];
        for (i, (max_temp, min_free, free, written, unwritten, asked, granted)) in cases.into_iter().enumerate() {
            let budget = TempBudget::with_free(max_temp, min_free, move || free);
            let mut other = budget.reserve(written + unwritten).expect("the other fill's reservation");
            other.wrote(written);
            assert_eq!(budget.reserve(asked).is_ok(), granted, "case {i}");
        }
    }

    #[test]
    fn a_fill_that_stops_storing_gives_back_what_it_will_not_write() {
        let budget = TempBudget::with_free(Some(600), 0, || 1000);
        let mut a = budget.reserve(500).unwrap();
        a.wrote(200);
        assert!(budget.reserve(101).is_err(), "500 of 600 held");
        a.give_back_unwritten();
        assert_eq!(budget.held(), 200, "the written part stays held for readers behind the fill");
        assert!(budget.reserve(400).is_ok());
        drop(a);
        assert_eq!(budget.held(), 0);
    }

    #[test]
    fn reservations_grow_and_give_back() {
        let free = Arc::new(AtomicU64::new(1000));
        let f = free.clone();
        let budget = TempBudget::with_free(Some(600), 100, move || f.load(Ordering::Relaxed));
        let mut a = budget.reserve(0).unwrap();
        budget.grow(&mut a, 300).unwrap();
        a.wrote(300);
        free.store(700, Ordering::Relaxed);
        budget.grow(&mut a, 200).unwrap();
        assert_eq!(budget.held(), 500);
        assert_eq!(budget.grow(&mut a, 101), Err(NoRoom::MaxTemp { max_temp: 600, held: 500 }));
        // 700 free, 200 of them promised to `a`: 500 free for others, 400 above min_free.
        let b = budget.reserve(100).unwrap();
        assert!(matches!(budget.reserve(1), Err(NoRoom::MaxTemp { .. })));
        drop(a);
        assert_eq!(budget.held(), 100);
        free.store(550, Ordering::Relaxed);
        // 550 free, 100 of them promised to `b`: 450, 350 above min_free.
        assert_eq!(budget.reserve(351).err(), Some(NoRoom::MinFree { free: 450, min_free: 100 }));
        drop(b);
        assert_eq!(budget.held(), 0);
        assert!(budget.reserve(450).is_ok());
        assert_eq!(budget.held(), 0, "a dropped reservation gives its bytes back");
    }
}
