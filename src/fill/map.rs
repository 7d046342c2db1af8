//! The running fills by upstream and digest: which one a request may join, starting one when none
//! may be joined, and the guard that takes a fill out of the map however its task ends.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job::FillJob;
use super::{Fill, FillError, FillState, Sink};
use crate::config::FillBudget;
use crate::fleet::Fleet;
use crate::oci::{Digest, RegistryHost, RepositoryName};
use crate::singleflight::CallDied;
use crate::sync::lock;
use crate::upstream::{Upstream, UpstreamError};

/// A blob as it can be read now.
pub enum Readable {
    /// Stored and verified, with this size (as the index has it).
    Stored(u64),
    /// Being filled by a fill this request started.
    Filling(Arc<Fill>),
    /// Being filled by a fill another request started, which this one joined (coalesced).
    Joined(Arc<Fill>),
}

/// How many fills the map holds at most. Its keys are digests clients choose, so it is capped: past
/// this many, a fill runs alone, not joinable (its one request still gets the blob).
const MAX_JOINABLE_FILLS: usize = 4096;

/// Fills are joined per upstream (its name) and digest. Never across upstreams: a fill from a
/// hostile or stalled upstream must not hold up or fail a request for another one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FillKey {
    upstream: RegistryHost,
    digest: Digest,
}

/// The requests reading running fills (see [`Fills::readers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readers {
    /// All of them.
    pub total: usize,
    /// Those beside each fill's first reader.
    pub coalesced: usize,
}

/// Which running fill a request may join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Any fill of the blob from the request's upstream, whatever its repository.
    Any,
    /// Only a fill from the request's own repository: a fill from another one was refused.
    OwnRepository,
}

/// Where a new fill asks for its blob when this node's tiers don't have it.
#[derive(Clone)]
pub enum Via {
    /// The upstream.
    Upstream,
    /// The members of the fleet ranked above this node for the blob, then the upstream (a
    /// member's own request for a blob never goes further: it is filled from the upstream).
    Fleet(Arc<Fleet>),
}

/// The running fills, by upstream and digest.
pub struct Fills {
    // A std Mutex: held to look up, insert or remove, and to check the store once, never across an
    // await, so "stored or being filled" is decided atomically and a digest is fetched only once
    // per upstream.
    // Bounded: at most MAX_JOINABLE_FILLS fills in all; each is removed by its FillGuard however the
    // fill ends. A key holds more than one fill only while a request refetches a blob another
    // repository was refused, or a fill passing its bytes through has let go of its first ones
    // (each request starts at most two fills).
    running: Mutex<HashMap<FillKey, Vec<Arc<Fill>>>>,
    /// Fills running outside the map (it was full).
    alone: AtomicU64,
    /// The `fills_in_progress` gauge: one more as a fill starts, one less as its guard drops.
    counted: Gauge,
    /// Signalled whenever a fill ends.
    ended: Notify,
    /// The time budget of fills nobody reads.
    budget: FillBudget,
    /// Cancelled when the drain time at shutdown is over: every fill still running is abandoned.
    stop: CancellationToken,
}

impl Fills {
    /// No fills yet; those to come keep to `budget`, and are counted in `counted` while they run
    /// (`Metrics::fills_running`).
    pub fn new(budget: FillBudget, counted: Gauge) -> Fills {
        Fills {
            running: Mutex::default(),
            alone: AtomicU64::default(),
            counted,
            ended: Notify::new(),
            budget,
            stop: CancellationToken::new(),
        }
    }

    /// The running fill of `digest` from the upstream named `upstream`, if any.
    pub fn get(&self, upstream: &RegistryHost, digest: &Digest) -> Option<Arc<Fill>> {
        let key = FillKey { upstream: upstream.clone(), digest: digest.clone() };
        lock(&self.running).get(&key).and_then(|f| f.first().cloned())
    }

    /// The blob stored in `sink`, a running fill `join` allows, or a new fill fetching `digest`
    /// from `repo` on `upstream` into `sink`.
    pub fn join_or_start<S: Sink>(
        self: &Arc<Self>,
        sink: &Arc<S>,
        upstream: &Arc<Upstream>,
        repo: &RepositoryName,
        digest: &Digest,
        join: Join,
        via: &Via,
    ) -> io::Result<Readable> {
        let key = FillKey { upstream: upstream.config().name.clone(), digest: digest.clone() };
        // The lock is held across the index lookup below (a sled read, in memory in practice): a
        // fill commits its blob (store, then index) before its guard takes it out of `running`
        // under this lock, so under the lock a request sees either the running fill or the stored
        // blob, never neither, and never starts a second download of a blob that was just stored.
        // Only misses take this lock: hits never do (`Cache::blob` looks the index up first). The
        // fill's write begins in its own task, off the lock.
        let mut running = lock(&self.running);
        let joinable = running.get(&key).and_then(|fills| {
            fills
                .iter()
                .find(|f| (join == Join::Any || f.fetches_from(upstream, repo)) && f.serves_from_start())
                .cloned()
        });
        if let Some(fill) = joinable {
            return Ok(Readable::Joined(fill));
        }
        if let Some(size) = sink.stored(digest)? {
            return Ok(Readable::Stored(size));
        }
        let fill = Fill::new(digest.clone(), upstream.upstream_name(repo));
        let joinable = running.values().map(Vec::len).sum::<usize>() < MAX_JOINABLE_FILLS;
        if joinable {
            running.entry(key.clone()).or_default().push(fill.clone());
        } else {
            self.alone.fetch_add(1, Ordering::Relaxed);
        }
        self.counted.inc();
        let guard = FillGuard { fills: Arc::clone(self), key, fill: fill.clone(), joinable, failure: None };
        let sink: Arc<dyn Sink> = Arc::clone(sink) as Arc<dyn Sink>;
        tokio::spawn(self.job(&fill, sink, upstream, repo, via).run(guard));
        Ok(Readable::Filling(fill))
    }

    /// The work of `fill`: fetching its digest from `repo` on `upstream` into `sink`, within the
    /// fills' budget, until the drain at shutdown stops it.
    fn job(&self, fill: &Arc<Fill>, sink: Arc<dyn Sink>, upstream: &Arc<Upstream>, repo: &RepositoryName, via: &Via) -> FillJob {
        FillJob {
            via: via.clone(),
            request_id: crate::fleet::auth::current_request_id(),
            fill: fill.clone(),
            sink,
            upstream: Arc::clone(upstream),
            repo: repo.clone(),
            digest: fill.digest.clone(),
            budget: self.budget.clone(),
            stop: self.stop.clone(),
        }
    }

    /// How many fills are running.
    pub fn len(&self) -> usize {
        let joinable: usize = lock(&self.running).values().map(Vec::len).sum();
        joinable.saturating_add(usize::try_from(self.alone.load(Ordering::Relaxed)).unwrap_or(usize::MAX))
    }

    /// The requests reading the fills in the map (a fill run outside it has its one request), and
    /// how many of them read beside a fill's first reader: coalesced, no download of their own.
    pub fn readers(&self) -> Readers {
        let running = lock(&self.running);
        let each = running.values().flatten().map(|f| f.readers());
        each.fold(Readers::default(), |sum, n| Readers {
            total: sum.total + n,
            coalesced: sum.coalesced + n.saturating_sub(1),
        })
    }

    /// The fills in the map, each with the name of its upstream (for the status page; a fill run
    /// outside the map is not listed). A copy: the lock is not held once it returns.
    pub fn running(&self) -> Vec<(RegistryHost, Arc<Fill>)> {
        let running = lock(&self.running);
        running.iter().flat_map(|(key, fills)| fills.iter().map(|f| (key.upstream.clone(), f.clone()))).collect()
    }

    /// Whether no fill is running.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Wait until no fill is running (at shutdown: downloads finish and are stored).
    pub async fn idle(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.is_empty() {
                return;
            }
            ended.await;
        }
    }

    /// At shutdown: let running fills finish (and be stored) until `deadline`, then abandon the
    /// rest. Returns once no fill runs: whether all of them finished in time.
    pub async fn drain(&self, deadline: Instant) -> bool {
        if tokio::time::timeout_at(deadline, self.idle()).await.is_ok() {
            return true;
        }
        self.stop.cancel();
        // Each abandoned fill ends (and removes its temporary file) at its task's next poll.
        self.idle().await;
        false
    }
}

/// The one fetcher's hold on a fill (pingora's write permit), owned by the fill's task. However the
/// task ends (returned, panicked, cancelled), dropping it takes the fill out of the map and, unless
/// the fill already has its result, fails it, so no request waits for a fetch that is gone.
pub(super) struct FillGuard {
    fills: Arc<Fills>,
    key: FillKey,
    fill: Arc<Fill>,
    /// Whether the fill is in the map (else it is counted in `alone`).
    joinable: bool,
    /// Why the fill failed, when it ended with an error; `None` when it died.
    pub(super) failure: Option<FillError>,
}

impl Drop for FillGuard {
    fn drop(&mut self) {
        // Out of the map before the failure is told, so a request that retries after it never
        // finds this fill again.
        if self.joinable {
            let mut running = lock(&self.fills.running);
            if let Some(fills) = running.get_mut(&self.key) {
                fills.retain(|f| !Arc::ptr_eq(f, &self.fill));
                if fills.is_empty() {
                    running.remove(&self.key);
                }
            }
        } else {
            self.fills.alone.fetch_sub(1, Ordering::Relaxed);
        }
        self.fills.counted.dec();
        let failure = self.failure.take();
        self.fill.state.send_if_modified(|s| match s {
            FillState::Done { .. } | FillState::Failed(_) => false,
            _ => {
                if failure.is_none() {
                    tracing::error!(digest = %self.fill.digest, "a blob fill died without a result; its readers get an error");
                }
                *s = FillState::Failed(failure.unwrap_or_else(|| UpstreamError::from(CallDied).into()));
                true
            }
        });
        self.fills.ended.notify_waiters();
    }
}


#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::config::{Config, Overrides};
    use crate::metrics::Metrics;
    use crate::store::{BlobRead, BlobWrite, InUse, NoRoom, Opened, Reservation, Store};

    /// What a test makes a fill do.
    #[derive(Clone, Copy, Debug)]
    enum Injected {
        /// Panic before the request.
        Panic,
        /// Begin writing to the store, then never get anywhere.
        Hang,
    }

    /// A store whose fills misbehave as the test says: the tier behind it is asked first, and
    /// panics, or has a copy that never sends a byte (the fill begins its write, then waits).
    struct Rigged {
        store: Arc<Store>,
        injected: Mutex<Injected>,
    }

    impl Rigged {
        fn inject(&self, what: Injected) {
            *self.injected.lock().unwrap() = what;
        }
    }

    /// A copy that never sends a byte.
    struct Silent;

    #[async_trait]
    impl BlobRead for Silent {
        async fn next_chunk(&mut self) -> Option<io::Result<Bytes>> {
            std::future::pending().await
        }
    }

    #[async_trait]
    impl Sink for Rigged {
        fn stored(&self, digest: &Digest) -> io::Result<Option<u64>> {
            self.store.stored(digest)
        }
        fn max_size(&self) -> Option<u64> {
            self.store.max_size()
        }
        fn reserve(&self, size: u64) -> Result<Reservation, NoRoom> {
            self.store.reserve(size)
        }
        fn grow(&self, reservation: &mut Reservation, len: u64) -> Result<(), NoRoom> {
            self.store.grow(reservation, len)
        }
        async fn begin(&self, digest: &Digest, size: Option<u64>) -> io::Result<Box<dyn BlobWrite>> {
            self.store.begin(digest, size).await
        }
        async fn commit(&self, digest: &Digest, writer: Box<dyn BlobWrite>, size: u64) -> io::Result<()> {
            self.store.commit(digest, writer, size).await
        }
        fn hold(&self, digest: &Digest) -> InUse {
            self.store.hold(digest)
        }
        async fn open_copy(&self, _digest: &Digest) -> Option<Opened> {
            let injected = *self.injected.lock().unwrap();
            match injected {
                Injected::Panic => panic!("injected panic inside a blob fill"),
                Injected::Hang => Some(Opened { size: 1 << 20, reader: Box::new(Silent) }),
            }
        }
    }

    /// A store rigged with `injected`, an upstream that is never contacted (every fill here gets
    /// `injected` before its request), and the fills.
    fn setup(injected: Injected) -> (tempfile::TempDir, Arc<Rigged>, Arc<Upstream>, Arc<Fills>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let toml = "[[upstream]]\nname = \"x.io\"\nurl = \"http://127.0.0.1:9\"\n";
        let config = Config::from_toml(toml, &Overrides::default(), std::path::Path::new(".")).unwrap();
        let up = Arc::new(Upstream::new(config.upstreams[0].clone(), Arc::new(Metrics::new())).unwrap());
        let fills = Arc::new(Fills::new(config.fills.clone(), Gauge::default()));
        (dir, Arc::new(Rigged { store, injected: Mutex::new(injected) }), up, fills)
    }

    fn start(fills: &Arc<Fills>, store: &Arc<Rigged>, up: &Arc<Upstream>, digest: &Digest) -> Arc<Fill> {
        let repo: RepositoryName = "library/alpine".parse().unwrap();
        match fills.join_or_start(store, up, &repo, digest, Join::Any, &Via::Upstream).unwrap() {
            Readable::Filling(fill) | Readable::Joined(fill) => fill,
            Readable::Stored(_) => panic!("nothing is stored"),
        }
    }

    #[tokio::test]
    async fn a_panic_inside_a_fill_fails_its_waiters_and_is_not_kept() {
        let (dir, store, up, fills) = setup(Injected::Panic);
        let digest = Digest::sha256_of(b"never fetched");
        let fill = start(&fills, &store, &up, &digest);
        // Bounded: before the guard, the waiters of a panicked fill waited forever.
        let started = tokio::time::timeout(std::time::Duration::from_secs(10), fill.started()).await;
        let err = started.expect("the waiter is told").expect_err("the fill failed");
        assert!(matches!(err, FillError::Upstream(UpstreamError::Interrupted(_))), "{err:?}");
        assert!(fills.is_empty(), "the panicked fill left the map");
        tokio::time::timeout(std::time::Duration::from_secs(10), fills.idle()).await.expect("idle");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "its temporary file is gone");
        // The next request for the digest starts a new fill.
        store.inject(Injected::Hang);
        let again = start(&fills, &store, &up, &digest);
        assert!(!Arc::ptr_eq(&fill, &again));
        assert_eq!(fills.len(), 1);
        assert_eq!(fills.counted.get(), 1, "the gauge counts the running fill, not the one that died");
    }

    #[test]
    fn a_cancelled_fill_fails_its_waiters_and_is_not_kept() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"never fetched");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let fill = rt.block_on(async { start(&fills, &store, &up, &digest) });
        assert_eq!(fills.len(), 1);
        // Shutting the runtime down cancels the fill's task.
        drop(rt);
        assert!(fills.is_empty(), "the cancelled fill left the map");
        assert!(matches!(&*fill.state.borrow(), FillState::Failed(FillError::Upstream(UpstreamError::Interrupted(_)))));
    }

    #[tokio::test]
    async fn at_the_end_of_the_drain_time_fills_are_abandoned() {
        let (dir, store, up, fills) = setup(Injected::Hang);
        let fill = start(&fills, &store, &up, &Digest::sha256_of(b"never arrives"));
        // The fill's task begins its write, then hangs.
        let begun = async {
            while fill.partial.get().is_none() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), begun).await.expect("the fill begins its write");
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 1);
        // Bounded: before, a fill that never ended kept running after the drain time.
        let drained = tokio::time::timeout(std::time::Duration::from_secs(10), fills.drain(Instant::now())).await;
        assert!(!drained.expect("drain returns once the fills are gone"), "the fill did not finish, it was abandoned");
        assert!(fills.is_empty());
        assert_eq!(fills.counted.get(), 0, "an abandoned fill is counted no more");
        assert!(matches!(&*fill.state.borrow(), FillState::Failed(FillError::Upstream(UpstreamError::Interrupted(_)))));
        assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0, "its temporary file is gone");
    }

    #[tokio::test]
    async fn a_pass_through_fill_is_joined_only_while_it_holds_the_first_byte() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"too large to store");
        let first = start(&fills, &store, &up, &digest);
        first.stop_storing(0);
        first.recent.lock().unwrap().push(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")], 6);
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &digest), &first), "every byte is still in memory");
        // Its readers have passed the first chunk, which is gone: a new request gets its own fill.
        first.recent.lock().unwrap().trim(0, |end| end <= 3);
        let second = start(&fills, &store, &up, &digest);
        assert!(!Arc::ptr_eq(&second, &first), "a joiner would have fallen behind at once");
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &digest), &second));
        assert_eq!(fills.len(), 2);
        // A fill that stores keeps its first bytes in its file.
        let stored = Digest::sha256_of(b"stored");
        let filling = start(&fills, &store, &up, &stored);
        filling.recent.lock().unwrap().push(vec![Bytes::from_static(b"abc"), Bytes::from_static(b"def")], 6);
        filling.recent.lock().unwrap().trim(0, |_| true);
        assert!(Arc::ptr_eq(&start(&fills, &store, &up, &stored), &filling));
    }

    #[tokio::test]
    async fn a_request_joins_another_repository_only_when_it_may() {
        let (_dir, store, up, fills) = setup(Injected::Hang);
        let digest = Digest::sha256_of(b"shared layer");
        let first = start(&fills, &store, &up, &digest);
        let other: RepositoryName = "org/app".parse().unwrap();
        let joined = |join| match fills.join_or_start(&store, &up, &other, &digest, join, &Via::Upstream).unwrap() {
            Readable::Filling(fill) | Readable::Joined(fill) => fill,
            Readable::Stored(_) => panic!("nothing is stored"),
        };
        assert!(Arc::ptr_eq(&joined(Join::Any), &first));
        let own = joined(Join::OwnRepository);
        assert!(!Arc::ptr_eq(&own, &first), "a fill of its own repository");
        assert!(Arc::ptr_eq(&joined(Join::OwnRepository), &own));
        assert_eq!(fills.len(), 2);
        let alpine: RepositoryName = "alpine".parse().unwrap();
        assert!(first.fetches_from(&up, &"library/alpine".parse().unwrap()));
        assert!(!first.fetches_from(&up, &alpine), "x.io is not Docker Hub: no library/ prefix");
    }
}
