//! One running fill as requests and readers see it: where it stands, waiting for it to start, and
//! its verdict for a request that may be answered with verified bytes only (a range).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use tokio::sync::{watch, Notify};

use super::window::Recent;
use super::FillError;
use crate::cache::ServedFrom;
use crate::oci::{Digest, RepositoryName};
use crate::store::PartialBlob;
use crate::sync::lock;
use crate::upstream::{RateLimit, Upstream};

/// Where a fill stands. Readers watch it.
#[derive(Clone, Debug)]
pub enum FillState {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes are arriving; `written` of them are on disk.
    Running {
        /// The size the upstream announced, if it did.
        total: Option<u64>,
        /// Bytes written to the store so far.
        written: u64,
    },
    /// Verified and committed.
    Done {
        /// The blob's size.
        size: u64,
    },
    /// Failed; nothing was stored.
    Failed(FillError),
}


/// One running fill.
pub struct Fill {
    pub(super) digest: Digest,
    /// The repository it fetches from, as the upstream names it (on the upstream of its
    /// `FillKey`).
    pub(super) repo: RepositoryName,
    /// What has been written so far, for readers behind the recent window; set before the fill
    /// runs, unless it passes its bytes through from the start.
    pub(super) partial: OnceLock<Arc<dyn PartialBlob>>,
    pub(super) state: watch::Sender<FillState>,
    /// The newest bytes, in memory, for the readers close behind the fill.
    pub(super) recent: Mutex<Recent>,
    /// Where each reader following the fill is, so that after a disk failure the window keeps what
    /// the slowest still needs.
    pub(super) readers: Mutex<Vec<Weak<AtomicU64>>>,
    /// Signalled whenever a reader moves on.
    pub(super) advanced: Notify,
    /// The rate-limit headers of the upstream response, set before the fill starts running.
    pub(super) rate_limit: OnceLock<RateLimit>,
    /// Whether the bytes come from the shared bucket rather than the upstream; set before the fill
    /// starts running.
    pub(super) from_shared: OnceLock<bool>,
    /// How many of the blob's first bytes came from members of the fleet (the rest, if any, from
    /// the upstream: a fill fails over from members to the upstream, never back); raised as they
    /// arrive.
    pub(super) from_members: AtomicU64,
}

impl Fill {
    /// A fill of `digest` from `repo` (as the upstream names it), still connecting.
    pub(super) fn new(digest: Digest, repo: RepositoryName) -> Arc<Fill> {
        let (state, _) = watch::channel(FillState::Connecting);
        Arc::new(Fill {
            digest,
            repo,
            partial: OnceLock::new(),
            state,
            recent: Mutex::new(Recent::default()),
            readers: Mutex::new(Vec::new()),
            advanced: Notify::new(),
            rate_limit: OnceLock::new(),
            from_shared: OnceLock::new(),
            from_members: AtomicU64::new(0),
        })
    }

    /// Wait until the upstream has answered: the size it announced, or why it failed.
    pub async fn started(&self) -> Result<Option<u64>, FillError> {
        let mut rx = self.state.subscribe();
        let state = rx.wait_for(|s| !matches!(s, FillState::Connecting)).await.map(|s| s.clone());
        match state {
            Ok(FillState::Running { total, .. }) => Ok(total),
            Ok(FillState::Done { size }) => Ok(Some(size)),
            Ok(FillState::Failed(e)) => Err(e),
            Ok(FillState::Connecting) | Err(_) => Err(FillError::Disk("fill vanished".into())),
        }
    }

    /// Wait for this fill's verdict, for a request that may be answered with verified bytes only
    /// (a range: a client can't check part of a blob against its digest, so it would keep wrong
    /// bytes): [`Verdict::Verified`] once the digest checked out, with the bytes in the fill's file;
    /// [`Verdict::PassingThrough`] as soon as the fill passes its bytes through (they will never be
    /// in the file to be read once verified); why the fill failed otherwise. As bounded as the fill:
    /// its guard gives it a verdict however it ends. Dropped, it disturbs nothing.
    pub async fn verified(&self) -> Result<Verdict, FillError> {
        let mut rx = self.state.subscribe();
        loop {
            let state = rx.borrow_and_update().clone();
            match state {
                FillState::Failed(e) => return Err(e),
                _ if self.passing_through() => return Ok(Verdict::PassingThrough),
                FillState::Done { size } => return Ok(Verdict::Verified(size)),
                FillState::Connecting | FillState::Running { .. } => {}
            }
            // The fill's state changes after every batch, and right after it stops storing, so
            // passing through is noticed as soon as it begins. The sender lives in `self`: it
            // can't be dropped while this waits.
            if rx.changed().await.is_err() {
                return Err(FillError::Disk("fill vanished".into()));
            }
        }
    }

    /// The repository this fill fetches from, as its upstream names it.
    pub fn repository(&self) -> &RepositoryName {
        &self.repo
    }

    /// Whether this fill fetches from `repo` on `upstream` (`alpine` is `library/alpine` on Docker
    /// Hub). Fills are joined per upstream, so only the repository can differ.
    pub fn fetches_from(&self, upstream: &Upstream, repo: &RepositoryName) -> bool {
        self.repo == upstream.upstream_name(repo)
    }

    /// Whether anything still watches this fill (a request waiting for it to start, or a reader).
    pub fn waiters(&self) -> usize {
        self.state.receiver_count()
    }

    /// How many readers follow this fill (each request that joined it has one).
    pub fn readers(&self) -> usize {
        lock(&self.readers).iter().filter(|r| r.strong_count() > 0).count()
    }

    /// The rate-limit headers of the upstream response (none until it has answered).
    pub fn rate_limit(&self) -> RateLimit {
        self.rate_limit.get().cloned().unwrap_or_default()
    }

    /// Whether the fill reads the shared bucket (the upstream is not asked).
    pub fn from_shared(&self) -> bool {
        self.from_shared.get().copied().unwrap_or(false)
    }

    /// How the bytes `[start, start + len)` of the blob were had: from the shared bucket, or the
    /// first of them from members of the fleet and the rest from the upstream (each part with its
    /// length).
    pub fn sources(&self, start: u64, len: u64) -> [(ServedFrom, u64); 2] {
        if self.from_shared() {
            return [(ServedFrom::Shared, len), (ServedFrom::Upstream, 0)];
        }
        let from_members = self.from_members.load(Ordering::Relaxed).saturating_sub(start).min(len);
        [(ServedFrom::Peer, from_members), (ServedFrom::Upstream, len - from_members)]
    }

    /// The bytes written so far and the size, if known yet (for the status page).
    pub fn progress(&self) -> (u64, Option<u64>) {
        match &*self.state.borrow() {
            FillState::Running { total, written } => (*written, *total),
            FillState::Done { size } => (*size, Some(*size)),
            FillState::Connecting | FillState::Failed(_) => (0, None),
        }
    }

    /// The digest it fetches.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The size, if known yet.
    pub fn total(&self) -> Option<u64> {
        match &*self.state.borrow() {
            FillState::Running { total, .. } => *total,
            FillState::Done { size } => Some(*size),
            _ => None,
        }
    }
}

/// What a request that may be answered with verified bytes only learns from a fill
/// ([`Fill::verified`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Verified, with this size; every byte is in the fill's file, where a [`FillReader`](super::FillReader) reads
    /// it at once.
    Verified(u64),
    /// The fill passes its bytes through without storing them (the blob doesn't fit the disk
    /// budget, or a write failed): they can only be followed as they arrive.
    PassingThrough,
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn bytes_read_from_a_fill_are_counted_by_where_the_fill_had_them() {
        use ServedFrom::*;
        // (from the bucket, bytes from members, start, len, want)
        let cases = [
            (false, 0, 0, 10, [(Peer, 0), (Upstream, 10)]),
            (false, 10, 0, 10, [(Peer, 10), (Upstream, 0)]),
            (false, 4, 0, 10, [(Peer, 4), (Upstream, 6)]),
            (false, 4, 2, 5, [(Peer, 2), (Upstream, 3)]),
            (false, 4, 6, 4, [(Peer, 0), (Upstream, 4)]),
            (false, u64::MAX, 3, 7, [(Peer, 7), (Upstream, 0)]),
            (true, 0, 2, 8, [(Shared, 8), (Upstream, 0)]),
        ];
        for (shared, members, start, len, want) in cases {
            let fill = Fill::new(Digest::sha256_of(b"abcdef"), "library/alpine".parse().unwrap());
            let _ = fill.from_shared.set(shared);
            fill.from_members.store(members, Ordering::Relaxed);
            assert_eq!(fill.sources(start, len), want, "{shared} {members} {start} {len}");
        }
    }

    #[test]
    fn a_range_waits_for_the_verdict_of_its_fill() {
        #[derive(Clone, Copy, Debug)]
        enum Step {
            Running(u64),
            StopStoring(u64),
            Done(u64),
            Fail,
        }
        use Step::*;
        /// Steps of a fill of 6 bytes; what the waiter learns at the last one (pending before).
        type Case = (&'static str, &'static [Step], Result<Verdict, ()>);
        let cases: &[Case] = &[
            ("verified", &[Running(0), Running(3), Running(6), Done(6)], Ok(Verdict::Verified(6))),
            ("wrong bytes", &[Running(0), Running(6), Fail], Err(())),
            ("too large to store from the start", &[StopStoring(0), Running(0)], Ok(Verdict::PassingThrough)),
            ("the budget ran out on the way", &[Running(0), Running(3), StopStoring(3), Running(6)], Ok(Verdict::PassingThrough)),
            ("passed through, then failed", &[StopStoring(0), Fail], Err(())),
            ("failed while connecting", &[Fail], Err(())),
        ];
        for (what, steps, want) in cases {
            let fill = Fill::new(Digest::sha256_of(b"abcdef"), "library/alpine".parse().unwrap());
            let mut verdict = Box::pin(fill.verified());
            assert!((&mut verdict).now_or_never().is_none(), "{what}: connecting");
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Running(written) => fill.state.send_replace(FillState::Running { total: Some(6), written }),
                    // The fill's state changes next (it is running, or it ends), which wakes the waiter.
                    StopStoring(at) => {
                        fill.stop_storing(at);
                        continue;
                    }
                    Done(size) => fill.state.send_replace(FillState::Done { size }),
                    Fail => fill.state.send_replace(FillState::Failed(FillError::Corrupt("wrong".into()))),
                };
                let got = (&mut verdict).now_or_never();
                if i + 1 < steps.len() {
                    assert!(got.is_none(), "{what}: no verdict after {step:?}");
                } else {
                    let got = got.unwrap_or_else(|| panic!("{what}: a verdict after {step:?}")).map_err(|_| ());
                    assert_eq!(got, *want, "{what}");
                }
            }
        }
    }
}
