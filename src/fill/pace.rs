//! When a fill nobody reads is given up: it must keep a minimum rate over each window, and end
//! within a limited time ([`FillBudget`]'s `unread_min_rate`, `rate_window`, `unread_max`).

use tokio::time::{Duration, Instant};

use super::FillError;
use crate::config::FillBudget;
use crate::upstream::UpstreamError;

/// The error of a fill given up on because nobody reads it and it is too slow or too long.
pub(super) fn abandoned(why: GiveUp) -> FillError {
    FillError::Upstream(UpstreamError::Timeout(why.to_string()))
}

/// Why a fill nobody reads is given up ([`Pace`]).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum GiveUp {
    /// Unread for `unread_max`.
    #[error("nobody has read the blob for {unread_max:?} (unread_max); given up")]
    Unread { unread_max: Duration },
    /// Unread, and slower than `unread_min_rate` over a window.
    #[error("nobody reads the blob and only {bytes} bytes arrived in {elapsed:?} (unread_min_rate {min_rate} bytes/s); given up")]
    TooSlow { bytes: u64, elapsed: Duration, min_rate: u64 },
}

/// Whether a fill nobody reads is still worth finishing: from the moment its last reader leaves
/// it must get `unread_min_rate` bytes per second, measured over each `rate_window`, and end within
/// `unread_max`. A reader coming back lifts both.
pub(super) struct Pace {
    min_rate: u64,
    window: Duration,
    unread_max: Duration,
    /// Since when nobody reads the fill.
    unread_since: Option<Instant>,
    /// Where the current window began, and the bytes that arrived in it.
    window_start: Instant,
    window_bytes: u64,
}

impl Pace {
    pub(super) fn new(budget: &FillBudget, now: Instant) -> Pace {
        Pace {
            min_rate: budget.unread_min_rate,
            window: budget.rate_window,
            unread_max: budget.unread_max,
            unread_since: None,
            window_start: now,
            window_bytes: 0,
        }
    }

    /// Note `bytes` that arrived at `now`, `read` or not: why to give up, if it is time to.
    pub(super) fn check(&mut self, read: bool, bytes: u64, now: Instant) -> Result<(), GiveUp> {
        let Some(since) = self.unread_since.filter(|_| !read) else {
            // Read, or just left unread: a new window starts.
            self.unread_since = (!read).then_some(now);
            self.window_start = now;
            self.window_bytes = 0;
            return Ok(());
        };
        self.window_bytes = self.window_bytes.saturating_add(bytes);
        if now.saturating_duration_since(since) >= self.unread_max {
            return Err(GiveUp::Unread { unread_max: self.unread_max });
        }
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= self.window {
            // Float to integer saturates: a huge rate just can't be met.
            let needed = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
            if self.window_bytes < needed {
                return Err(GiveUp::TooSlow { bytes: self.window_bytes, elapsed, min_rate: self.min_rate });
            }
            self.window_start = now;
            self.window_bytes = 0;
        }
        Ok(())
    }

    /// When to check again without new bytes: the end of the window or of `unread_max`, while
    /// nobody reads the fill.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let since = self.unread_since?;
        let window_end = self.window_start.checked_add(self.window);
        match (since.checked_add(self.unread_max), window_end) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fill budget for pace tests: at least 100 bytes a 2 s window while unread, for at most 10 s.
    fn pace_budget() -> FillBudget {
        FillBudget {
            min_free: 0,
            max_temp: None,
            unread_max: Duration::from_secs(10),
            unread_min_rate: 100,
            rate_window: Duration::from_secs(2),
        }
    }

    #[test]
    fn a_fill_nobody_reads_keeps_its_pace_or_is_given_up() {
        let budget = pace_budget();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        // Steps of (ms, read, bytes arrived); Some(n): given up at step n, None: never.
        type Steps = &'static [(u64, bool, u64)];
        let cases: [(&str, Steps, Option<usize>); 7] = [
            ("read, however slow", &[(1000, true, 1), (60_000, true, 1)], None),
            ("unread, a window at the rate", &[(0, false, 0), (1000, false, 100), (2000, false, 100)], None),
            ("unread, a window below the rate", &[(0, false, 0), (1000, false, 100), (2000, false, 99)], Some(2)),
            ("a drip: 1 byte every 2 s", &[(0, false, 0), (2000, false, 1)], Some(1)),
            ("nothing at all by the window's end", &[(0, false, 0), (2000, false, 0)], Some(1)),
            ("a reader came back", &[(0, false, 0), (1900, true, 0), (3000, false, 0), (4000, false, 10_000)], None),
            ("fast but unread too long", &[(0, false, 0), (5000, false, 100_000), (9999, false, 100_000), (10_000, false, 100_000)], Some(3)),
        ];
        for (what, steps, given_up) in cases {
            let mut pace = Pace::new(&budget, t0);
            let got = steps.iter().position(|(ms, read, bytes)| pace.check(*read, *bytes, at(*ms)).is_err());
            assert_eq!(got, given_up, "{what}");
        }
        let mut pace = Pace::new(&budget, t0);
        assert_eq!(pace.deadline(), None, "no deadline while read");
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), Some(at(2500)), "the end of the first window");
        let budget = FillBudget { unread_max: Duration::from_secs(1), ..budget };
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), Some(at(1500)), "unread_max comes first");
        let budget = FillBudget { unread_max: Duration::MAX, rate_window: Duration::MAX, ..budget };
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(500)).unwrap();
        assert_eq!(pace.deadline(), None, "limits past the end of time never fire");
    }

    #[test]
    fn a_fill_is_given_up_for_a_typed_reason() {
        let budget = pace_budget();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(0)).unwrap();
        let slow = pace.check(false, 99, at(2000)).unwrap_err();
        assert_eq!(slow, GiveUp::TooSlow { bytes: 99, elapsed: Duration::from_secs(2), min_rate: 100 });
        assert!(slow.to_string().contains("only 99 bytes arrived in 2s (unread_min_rate 100 bytes/s)"), "{slow}");
        let mut pace = Pace::new(&budget, t0);
        pace.check(false, 0, at(0)).unwrap();
        let unread = pace.check(false, 1_000_000, at(10_000)).unwrap_err();
        assert_eq!(unread, GiveUp::Unread { unread_max: Duration::from_secs(10) });
        assert!(unread.to_string().contains("nobody has read the blob for 10s (unread_max)"), "{unread}");
    }
}
