//! The seeded fault soak (issue 22), run by `scripts/soak.sh [SECONDS] [SEED]`: the release binary
//! of regcache as a child process in front of the fake upstream (`support::fake_registry`), eight
//! clients pulling manifests by tag and by digest and blobs whole and by range through it, while
//! new images are published and tags move, and one fault at a time, chosen and timed from the seed,
//! is injected: regcache SIGKILLed and restarted on the same data directory; the upstream refusing
//! connections, cutting bodies, sending wrong bytes, answering 429, hanging; SeaweedFS killed and
//! restarted (with a bucket: odd seeds, or `SOAK_BUCKET=1`); the disk full (the data directory on a
//! small tmpfs, filled up by a ballast file; needs root for the mount).
//!
//! The checker: every complete 200 body is the blob or manifest asked for (length and digest), every
//! 206 the slice asked for, every tag answer a manifest the upstream really had under that tag;
//! errors only within a fault window (and a few seconds after it); after the last fault, everything
//! cached pulls with the upstream stopped; regcache stops on SIGTERM, `regcache verify` passes and
//! no temporary file is left; regcache's resident memory and open files stay flat (bounded growth
//! over a warmed-up baseline, per process). It prints a summary and exits non-zero on any violation,
//! naming the seed to replay it. Bounded in time (a watchdog kills every child and exits); talks
//! only to 127.0.0.1; every child is killed on exit.
//!
//! Not a test of `cargo test`: without `SOAK_SECONDS` it says so and exits 0.

// The soak uses part of the support; its self-tests are for the integration binary.
#[allow(dead_code, unused_imports)]
mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;

use support::fake_registry::{FakeRegistry, Fault};
use support::images;
use support::s3::{SeaweedFs, ACCESS_KEY, SECRET_KEY};

/// The binary under test: `cargo test --release --test soak` builds `target/release/regcache`.
const BIN: &str = env!("CARGO_BIN_EXE_regcache");
/// Concurrent clients.
const CLIENTS: usize = 8;
/// Repositories the images are published in.
const REPOS: usize = 6;
/// What every manifest request accepts.
const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json";
/// The tmpfs the data directory is on (filled by the disk-full fault).
const TMPFS_MIB: u64 = 160;
/// regcache's upstream timeouts (seconds): a hanging upstream is given up this fast.
const UPSTREAM_TIMEOUT: u64 = 3;

/// The children to kill when the watchdog fires (it can't run destructors).
static REGCACHE_PID: AtomicU32 = AtomicU32::new(0);
static WEED_PID: AtomicU32 = AtomicU32::new(0);
static MOUNT: OnceLock<PathBuf> = OnceLock::new();

fn main() -> ExitCode {
    let Some(seconds) = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse::<u64>().ok()) else {
        eprintln!("soak: not run (scripts/soak.sh [SECONDS] [SEED] runs it, with SOAK_SECONDS and SOAK_SEED)");
        return ExitCode::SUCCESS;
    };
    let seed = std::env::var("SOAK_SEED").ok().and_then(|s| s.parse::<u64>().ok()).unwrap_or(1);
    let bucket = match std::env::var("SOAK_BUCKET").ok().as_deref() {
        Some("1") => true,
        Some("0") => false,
        _ => seed % 2 == 1,
    };
    let plan = Plan { seconds, seed, bucket, short: seconds < 300 };
    // Setup (SeaweedFS takes up to 90 s) and the final checks fit in 300 s more.
    let budget = Duration::from_secs(seconds + 300);
    std::thread::spawn(move || {
        std::thread::sleep(budget);
        eprintln!("soak: WATCHDOG: still running after {budget:?}: killing the children; replay: scripts/soak.sh {seconds} {seed}");
        kill_children();
        std::process::exit(3);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
    let violations = runtime.block_on(soak(plan));
    runtime.shutdown_timeout(Duration::from_secs(5));
    kill_children();
    if violations == 0 {
        println!("soak: PASSED (seed {seed})");
        ExitCode::SUCCESS
    } else {
        println!("soak: FAILED with {violations} violations; replay: scripts/soak.sh {seconds} {seed}");
        ExitCode::FAILURE
    }
}

/// SIGKILL regcache and SeaweedFS if they run, unmount the tmpfs.
fn kill_children() {
    for pid in [&REGCACHE_PID, &WEED_PID] {
        let pid = pid.swap(0, Ordering::SeqCst);
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    if let Some(dir) = MOUNT.get() {
        let _ = Command::new("umount").arg("-l").arg(dir).stderr(Stdio::null()).status();
    }
}

/// What one run does, from its arguments.
#[derive(Clone, Copy)]
struct Plan {
    seconds: u64,
    seed: u64,
    bucket: bool,
    /// The 60-second form: faults closer together, so that several kinds happen.
    short: bool,
}

impl Plan {
    /// No fault before this (the cache warms up, memory gets a baseline).
    fn warmup(&self) -> Duration {
        Duration::from_secs(if self.short { 5 } else { 20 })
    }
    /// No fault in the last part of the run: errors must stop, then the final checks.
    fn settle(&self) -> Duration {
        Duration::from_secs(if self.short { 12 } else { 30 })
    }
    /// The quiet time between one fault's end and the next one's start.
    fn gap(&self, rng: &mut Rng) -> Duration {
        Duration::from_millis(if self.short { rng.range(500, 2_000) } else { rng.range(7_000, 22_000) })
    }
    /// How long a fault lasts.
    fn hold(&self, rng: &mut Rng) -> Duration {
        Duration::from_millis(if self.short { rng.range(1_500, 3_000) } else { rng.range(3_000, 8_000) })
    }
    fn publish_every(&self) -> Duration {
        Duration::from_millis(if self.short { 700 } else { 3_000 })
    }
    /// regcache's `max_size`: below what is published, so that eviction keeps misses coming (and
    /// with them, upstream faults that matter).
    fn max_size_mib(&self) -> u64 {
        if self.short {
            24
        } else {
            64
        }
    }
    fn max_images(&self) -> usize {
        if self.short {
            60
        } else {
            110
        }
    }
}

/// splitmix64: everything random in the soak comes from the seed through this.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    KillRegcache,
    Refuse,
    CutBodies,
    WrongBytes,
    TooMany,
    Hang,
    KillBucket,
    DiskFull,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KillRegcache => "regcache SIGKILLed",
            Kind::Refuse => "upstream refusing",
            Kind::CutBodies => "upstream cutting bodies",
            Kind::WrongBytes => "upstream wrong bytes",
            Kind::TooMany => "upstream 429",
            Kind::Hang => "upstream hanging",
            Kind::KillBucket => "SeaweedFS killed",
            Kind::DiskFull => "disk full",
        }
    }
    /// How long after its end a fault may still explain errors.
    fn grace(self) -> Duration {
        Duration::from_secs(match self {
            Kind::KillRegcache | Kind::KillBucket => 5,
            Kind::Hang => UPSTREAM_TIMEOUT + 3,
            _ => 3,
        })
    }
}

/// One injected fault, from its start to its end (regcache or SeaweedFS answering again).
#[derive(Clone)]
struct Window {
    kind: Kind,
    start: Instant,
    end: Instant,
}

impl Window {
    fn explains(&self, start: Instant, end: Instant) -> bool {
        start <= self.end + self.kind.grace() && end >= self.start
    }
}

/// One published image, as clients pick it.
struct Published {
    repo: String,
    tag: String,
    manifest: String,
    /// (digest, size)
    blobs: Vec<(String, u64)>,
}

/// What was published: what clients pull and what the checker accepts.
#[derive(Default)]
struct Catalog {
    images: Vec<Published>,
    /// `repo:tag` → every manifest digest the tag ever named upstream.
    tags: HashMap<String, HashSet<String>>,
    /// Per repository, the indexes of its images.
    by_repo: HashMap<String, Vec<usize>>,
    /// The exact bytes of every manifest, to tag it again.
    manifests: HashMap<String, Vec<u8>>,
}

/// One request a client makes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Op {
    Tag { repo: String, tag: String },
    Manifest { repo: String, digest: String },
    Blob { repo: String, digest: String },
    Range { repo: String, digest: String, first: u64, last: u64 },
}

impl Op {
    fn describe(&self) -> String {
        match self {
            Op::Tag { repo, tag } => format!("GET /v2/{repo}/manifests/{tag}"),
            Op::Manifest { repo, digest } => format!("GET /v2/{repo}/manifests/{digest}"),
            Op::Blob { repo, digest } => format!("GET /v2/{repo}/blobs/{digest}"),
            Op::Range { repo, digest, first, last } => format!("GET /v2/{repo}/blobs/{digest} Range: bytes={first}-{last}"),
        }
    }
}

impl Catalog {
    fn pick(&self, rng: &mut Rng) -> Op {
        let n = self.images.len() as u64;
        // Half the time one of the newest (misses, fills joined by several clients), else any.
        let i = if rng.chance(50) { n - 1 - rng.below(n.min(8)) } else { rng.below(n) } as usize;
        let image = &self.images[i];
        let roll = rng.below(100);
        if roll < 25 {
            let tag = if rng.chance(40) { "latest".to_owned() } else { image.tag.clone() };
            return Op::Tag { repo: image.repo.clone(), tag };
        }
        if roll < 40 {
            return Op::Manifest { repo: image.repo.clone(), digest: image.manifest.clone() };
        }
        let (digest, size) = image.blobs[rng.below(image.blobs.len() as u64) as usize].clone();
        if roll < 75 || size < 2 {
            return Op::Blob { repo: image.repo.clone(), digest };
        }
        let first = rng.below(size);
        let last = rng.range(first, size - 1);
        Op::Range { repo: image.repo.clone(), digest, first, last }
    }
}

/// How a request ended, when it did not end well.
enum Fail {
    /// An error: allowed within a fault window.
    Error(String),
    /// A wrong answer: never allowed.
    Violation(String),
}

/// One request that failed, for the check against the fault windows at the end.
struct Failed {
    start: Instant,
    end: Instant,
    what: String,
}

#[derive(Default)]
struct Tally {
    outcomes: BTreeMap<String, u64>,
    failed: Vec<Failed>,
    violations: Vec<String>,
    bytes: u64,
    /// Ops answered well after the last fault: they must still be answered with the upstream stopped.
    settled: HashSet<Op>,
}

struct Ctx {
    base: String,
    http: reqwest::Client,
    reg: FakeRegistry,
    catalog: Mutex<Catalog>,
    tally: Mutex<Tally>,
    stop: AtomicBool,
    /// From when successes count as settled (set when the last fault is over).
    settled_from: Mutex<Option<Instant>>,
    t0: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctx {
    fn secs(&self, at: Instant) -> f64 {
        at.duration_since(self.t0).as_secs_f64()
    }

    fn violation(&self, what: String) {
        eprintln!("soak: VIOLATION at {:.1}s: {what}", self.secs(Instant::now()));
        lock(&self.tally).violations.push(what);
    }

    fn record(&self, op: &Op, start: Instant, result: &Result<(String, u64), Fail>) {
        let end = Instant::now();
        let settled = lock(&self.settled_from).is_some_and(|from| start >= from);
        let mut tally = lock(&self.tally);
        match result {
            Ok((label, bytes)) => {
                *tally.outcomes.entry(label.clone()).or_default() += 1;
                tally.bytes += bytes;
                if settled {
                    tally.settled.insert(op.clone());
                }
            }
            Err(Fail::Error(label)) => {
                *tally.outcomes.entry(label.clone()).or_default() += 1;
                if tally.failed.len() < 500_000 {
                    tally.failed.push(Failed { start, end, what: format!("{}: {label}", op.describe()) });
                }
            }
            Err(Fail::Violation(what)) => {
                *tally.outcomes.entry("VIOLATION".into()).or_default() += 1;
                drop(tally);
                self.violation(format!("{}: {what}", op.describe()));
            }
        }
    }

    /// Make `op` through regcache and check the answer.
    async fn run(&self, op: &Op) -> Result<(String, u64), Fail> {
        let (path, range) = match op {
            Op::Tag { repo, tag } => (format!("/v2/{repo}/manifests/{tag}"), None),
            Op::Manifest { repo, digest } => (format!("/v2/{repo}/manifests/{digest}"), None),
            Op::Blob { repo, digest } => (format!("/v2/{repo}/blobs/{digest}"), None),
            Op::Range { repo, digest, first, last } => (format!("/v2/{repo}/blobs/{digest}"), Some((*first, *last))),
        };
        let mut req = self.http.get(format!("{}{path}", self.base)).header("accept", ACCEPT);
        if let Some((first, last)) = range {
            req = req.header("range", format!("bytes={first}-{last}"));
        }
        let mut resp = req.send().await.map_err(|e| Fail::Error(transport(&e)))?;
        let status = resp.status().as_u16();
        if status != 200 && status != 206 {
            return Err(Fail::Error(format!("status {status}")));
        }
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let content_range = header("content-range");
        let docker_digest = header("docker-content-digest");
        let mut hasher = Sha256::new();
        let mut body = Vec::new();
        let mut n = 0u64;
        let expected = match op {
            Op::Blob { digest, .. } | Op::Range { digest, .. } => Some(self.reg.blob(digest).expect("a published blob")),
            _ => None,
        };
        // The bytes a 206 must carry: the slice it names (checked against the one asked for below).
        let served = match (status, &content_range) {
            (206, Some(cr)) => match parse_content_range(cr) {
                Some((first, last, total)) => Some((first, last, total)),
                None => return Err(Fail::Violation(format!("206 with Content-Range {cr:?}"))),
            },
            (206, None) => return Err(Fail::Violation("206 without Content-Range".into())),
            _ => None,
        };
        let mut differs_at = None;
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if let Some(expected) = &expected {
                        let offset = served.map_or(0, |s| s.0) + n;
                        let want = expected.get(offset as usize..(offset as usize + chunk.len()).min(expected.len()));
                        if differs_at.is_none() && want != Some(&chunk[..]) {
                            differs_at = Some(n);
                        }
                    } else {
                        body.extend_from_slice(&chunk);
                    }
                    hasher.update(&chunk);
                    n += chunk.len() as u64;
                }
                Ok(None) => break,
                Err(e) => return Err(Fail::Error(format!("body cut ({})", transport(&e)))),
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        match op {
            Op::Blob { digest, .. } | Op::Range { digest, .. } => {
                let size = expected.as_ref().map_or(0, |b| b.len() as u64);
                if let Some((first, last, total)) = served {
                    let asked = match op {
                        Op::Range { first, last, .. } => (*first, *last),
                        _ => (0, size - 1),
                    };
                    if (first, last) != asked || total != size {
                        return Err(Fail::Violation(format!("206 for bytes {first}-{last}/{total}, asked {}-{} of {size}", asked.0, asked.1)));
                    }
                    if n != last - first + 1 || differs_at.is_some() {
                        return Err(Fail::Violation(format!("206 body of {n} bytes (first difference at {differs_at:?}), {} expected", last - first + 1)));
                    }
                    return Ok(("206 blob range".into(), n));
                }
                if n != size || got != *digest || differs_at.is_some() {
                    return Err(Fail::Violation(format!("complete 200 body of {n} bytes, {got}; {size} bytes expected")));
                }
                let label = if matches!(op, Op::Range { .. }) { "200 whole blob for a range" } else { "200 blob" };
                Ok((label.into(), n))
            }
            Op::Manifest { digest, .. } => {
                if got != *digest {
                    return Err(Fail::Violation(format!("200 manifest of {n} bytes is {got}")));
                }
                Ok(("200 manifest by digest".into(), n))
            }
            Op::Tag { repo, tag } => {
                let known = lock(&self.catalog).tags.get(&format!("{repo}:{tag}")).is_some_and(|d| d.contains(&got));
                if !known {
                    return Err(Fail::Violation(format!("200 manifest {got} that the upstream never had under the tag")));
                }
                if docker_digest.as_deref().is_some_and(|d| d != got) {
                    return Err(Fail::Violation(format!("Docker-Content-Digest {docker_digest:?} for a body of {got}")));
                }
                Ok(("200 manifest by tag".into(), n))
            }
        }
    }
}

/// A transport error in a few words.
fn transport(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect error".into()
    } else if e.is_body() || e.is_decode() {
        "body error".into()
    } else {
        "transport error".into()
    }
}

/// `bytes FIRST-LAST/TOTAL`.
fn parse_content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

/// Push image `version` into repository `r` and tag it `v<version>`.
fn publish(ctx: &Ctx, rng: &mut Rng, r: usize, version: usize, big: bool) {
    let repo = format!("soak/app{r}");
    let tag = format!("v{version}");
    // Mostly small layers; some of a few MiB; in a long run a few above the bucket's part size
    // (multipart uploads).
    let roll = rng.below(100);
    let layer_size = if roll < 3 && big {
        rng.range(6 << 20, 12 << 20)
    } else if roll < 12 {
        rng.range(1 << 20, 4 << 20)
    } else {
        rng.range(2 << 10, 300 << 10)
    } as usize;
    let layers = rng.range(1, 3) as usize;
    // The tag is in the catalog before clients can pick the image, so it is known before asked for.
    let image = images::schema2_image(&ctx.reg, &repo, &tag, layers, layer_size);
    let mut catalog = lock(&ctx.catalog);
    catalog.tags.entry(format!("{repo}:{tag}")).or_default().insert(image.manifest.digest.clone());
    let index = catalog.images.len();
    catalog.by_repo.entry(repo.clone()).or_default().push(index);
    catalog.manifests.insert(image.manifest.digest.clone(), image.manifest.bytes.clone());
    catalog.images.push(Published {
        repo,
        tag,
        manifest: image.manifest.digest.clone(),
        blobs: image.blobs().iter().map(|b| (b.digest.clone(), b.size() as u64)).collect(),
    });
}

/// Point `soak/app<r>:latest` at one of its images (the history first: it is never asked for before).
fn retag(ctx: &Ctx, rng: &mut Rng, r: usize) {
    let repo = format!("soak/app{r}");
    let mut catalog = lock(&ctx.catalog);
    let Some(indexes) = catalog.by_repo.get(&repo) else { return };
    let i = indexes[rng.below(indexes.len() as u64) as usize];
    let digest = catalog.images[i].manifest.clone();
    catalog.tags.entry(format!("{repo}:latest")).or_default().insert(digest.clone());
    let bytes = catalog.manifests[&digest].clone();
    drop(catalog);
    let stored = ctx.reg.put_manifest(&repo, Some("latest"), images::DOCKER_MANIFEST, bytes);
    assert_eq!(stored, digest, "a manifest's digest is the sha256 of its bytes");
}

async fn publisher(ctx: Arc<Ctx>, mut rng: Rng, plan: Plan) {
    let mut version = lock(&ctx.catalog).images.len();
    while !ctx.stop.load(Ordering::SeqCst) {
        tokio::time::sleep(plan.publish_every()).await;
        if version < plan.max_images() {
            publish(&ctx, &mut rng, version % REPOS, version, !plan.short);
            version += 1;
        }
        let r = rng.below(REPOS as u64) as usize;
        retag(&ctx, &mut rng, r);
    }
}

async fn client(ctx: Arc<Ctx>, mut rng: Rng) {
    while !ctx.stop.load(Ordering::SeqCst) {
        let op = lock(&ctx.catalog).pick(&mut rng);
        let start = Instant::now();
        let result = match tokio::time::timeout(Duration::from_secs(120), ctx.run(&op)).await {
            Ok(r) => r,
            Err(_) => Err(Fail::Error("no answer within 120 s".into())),
        };
        let failed = result.is_err();
        ctx.record(&op, start, &result);
        if failed {
            tokio::time::sleep(Duration::from_millis(rng.range(50, 250))).await;
        }
    }
}

/// One sample of regcache's resources.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    pid: u32,
    rss_kib: u64,
    fds: u64,
}

fn sample(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Sample { at: Instant::now(), pid, rss_kib, fds })
}

async fn monitor(stop: Arc<AtomicBool>, samples: Arc<Mutex<Vec<Sample>>>) {
    while !stop.load(Ordering::SeqCst) {
        let pid = REGCACHE_PID.load(Ordering::SeqCst);
        if pid != 0 {
            if let Some(s) = sample(pid) {
                lock(&samples).push(s);
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// regcache as a child process, on one data directory and port across restarts.
struct Regcache {
    child: Option<Child>,
    config: PathBuf,
    log: PathBuf,
    base: String,
    started: u32,
}

impl Regcache {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("regcache log");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for proxy in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(proxy);
        }
        // SAFETY: only an async-signal-safe prctl between fork and exec. Spawned from the main
        // thread (the runtime's `block_on`), which lives as long as the soak: the child dies with it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("starting regcache");
        REGCACHE_PID.store(child.id(), Ordering::SeqCst);
        self.child = Some(child);
        self.started += 1;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            REGCACHE_PID.store(0, Ordering::SeqCst);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and its exit status within `within`.
    async fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus, String> {
        let Some(mut child) = self.child.take() else { return Err("not running".into()) };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                REGCACHE_PID.store(0, Ordering::SeqCst);
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                REGCACHE_PID.store(0, Ordering::SeqCst);
                return Err(format!("still running {within:?} after SIGTERM"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Wait until it answers `/v2/`.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(r) = http.get(format!("{}/v2/", self.base)).timeout(Duration::from_secs(2)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!("regcache exited with {status} before answering: {}", tail(&self.log)));
            }
            if started.elapsed() > Duration::from_secs(60) {
                return Err(format!("regcache did not answer within 60 s: {}", tail(&self.log)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Regcache {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The end of a log file.
fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(3000)..]).into_owned()
}

/// The data directory's tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path) -> Option<Tmpfs> {
        if std::env::var("SOAK_TMPFS").as_deref() == Ok("0") {
            return None;
        }
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_MIB}m,mode=0700"), "regcache-soak"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return None;
        }
        let _ = MOUNT.set(dir.to_owned());
        Some(Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Write zeros to `path` until the file system is full; how many bytes that took.
fn fill_disk(path: &Path) -> u64 {
    let Ok(mut f) = std::fs::File::create(path) else { return 0 };
    let buf = vec![0u8; 1 << 20];
    let mut total = 0;
    while let Ok(n) = f.write(&buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    total
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

async fn soak(plan: Plan) -> usize {
    let mut rng = Rng(plan.seed);
    let work = tempfile::Builder::new().prefix("regcache-soak-").tempdir().expect("temporary directory");
    let disk = work.path().join("disk");
    let tmpfs = Tmpfs::mount(&disk);
    if tmpfs.is_none() {
        std::fs::create_dir_all(&disk).expect("data directory parent");
    }
    let data = disk.join("data");
    let reg = FakeRegistry::start().await;

    let mut weed = None;
    let mut storage = String::new();
    if plan.bucket {
        let w = SeaweedFs::start().await;
        w.create_bucket("soak").await;
        WEED_PID.store(w.pid().unwrap_or(0), Ordering::SeqCst);
        let secret = work.path().join("s3-secret");
        std::fs::write(&secret, SECRET_KEY).expect("secret file");
        storage = format!(
            "[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"soak\"\nprefix = \"soak\"\npath_style = true\naccess_key_id = \"{ACCESS_KEY}\"\n\
             secret_access_key_file = {:?}\ntimeout = \"5s\"\n",
            w.endpoint,
            secret.display().to_string()
        );
        weed = Some(w);
    }

    // The run's clock starts once SeaweedFS is up (it takes seconds).
    let t0 = Instant::now();
    let port = free_port();
    let config = work.path().join("regcache.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\nmax_size = \"{}MiB\"\n\n[fills]\nmin_free = \"4MiB\"\n\n{storage}\n\
             [[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nusername = \"ci\"\npassword = \"s3cret\"\n\
             connect_timeout = {UPSTREAM_TIMEOUT}\nresponse_timeout = {UPSTREAM_TIMEOUT}\nidle_timeout = {UPSTREAM_TIMEOUT}\n",
            data.display().to_string(),
            plan.max_size_mib(),
            reg.url()
        ),
    )
    .expect("configuration");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("HTTP client");
    let ctx = Arc::new(Ctx {
        base: base.clone(),
        http: http.clone(),
        reg: reg.clone(),
        catalog: Mutex::new(Catalog::default()),
        tally: Mutex::new(Tally::default()),
        stop: AtomicBool::new(false),
        settled_from: Mutex::new(None),
        t0,
    });
    for version in 0..REPOS * 3 {
        publish(&ctx, &mut rng, version % REPOS, version, !plan.short);
    }
    for r in 0..REPOS {
        retag(&ctx, &mut rng, r);
    }

    let log = work.path().join("regcache.log");
    let mut rc = Regcache { child: None, config: config.clone(), log: log.clone(), base, started: 0 };
    rc.spawn();
    if let Err(e) = rc.wait_ready(&http).await {
        ctx.violation(e);
        return report(&plan, &ctx, &[], &[], &log, tmpfs.is_some());
    }

    let samples = Arc::new(Mutex::new(Vec::new()));
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = tokio::spawn(monitor(monitor_stop.clone(), samples.clone()));
    let mut tasks: Vec<JoinHandle<()>> =
        (0..CLIENTS).map(|i| tokio::spawn(client(ctx.clone(), Rng(plan.seed ^ (0xC11E_0000 + i as u64))))).collect();
    let publisher = tokio::spawn(publisher(ctx.clone(), Rng(plan.seed ^ 0x9B_1154), plan));

    // The faults: one at a time, in a seeded order (each kind once per round), until the settle time.
    let mut kinds = vec![Kind::KillRegcache, Kind::Refuse, Kind::CutBodies, Kind::WrongBytes, Kind::TooMany, Kind::Hang];
    if weed.is_some() {
        kinds.push(Kind::KillBucket);
    }
    if tmpfs.is_some() {
        kinds.push(Kind::DiskFull);
    }
    let total = Duration::from_secs(plan.seconds);
    let faults_until = total.saturating_sub(plan.settle());
    let mut windows = Vec::new();
    let mut round: Vec<Kind> = Vec::new();
    tokio::time::sleep(plan.warmup()).await;
    loop {
        if round.is_empty() {
            round = kinds.clone();
            for i in (1..round.len()).rev() {
                round.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let hold = plan.hold(&mut rng);
        if t0.elapsed() + hold + Duration::from_secs(3) > faults_until {
            break;
        }
        let kind = round.pop().expect("a round has kinds");
        let start = Instant::now();
        eprintln!("soak: {:6.1}s fault: {} for {:.1}s", ctx.secs(start), kind.name(), hold.as_secs_f64());
        match kind {
            Kind::KillRegcache => {
                rc.kill();
                tokio::time::sleep(hold.min(Duration::from_secs(2))).await;
                rc.spawn();
                if let Err(e) = rc.wait_ready(&http).await {
                    ctx.violation(format!("restart after SIGKILL: {e}"));
                    break;
                }
            }
            Kind::Refuse => {
                reg.stop().await;
                tokio::time::sleep(hold).await;
                reg.restart().await;
            }
            Kind::CutBodies | Kind::WrongBytes | Kind::TooMany | Kind::Hang => {
                reg.set_fault(match kind {
                    Kind::CutBodies => Fault::CutBlobsAfter(rng.range(1, 64 << 10) as usize),
                    Kind::WrongBytes => Fault::CorruptBlobs,
                    Kind::TooMany => Fault::Status { code: 429, retry_after: Some(1), path_contains: "/v2/".into() },
                    _ => Fault::HangHeaders { path_contains: "/v2/".into() },
                });
                tokio::time::sleep(hold).await;
                reg.clear_faults();
            }
            Kind::KillBucket => {
                let w = weed.as_mut().expect("a bucket");
                w.stop();
                WEED_PID.store(0, Ordering::SeqCst);
                tokio::time::sleep(hold).await;
                w.restart().await;
                WEED_PID.store(w.pid().unwrap_or(0), Ordering::SeqCst);
            }
            Kind::DiskFull => {
                let ballast = disk.join("ballast");
                let path = ballast.clone();
                let filled = tokio::task::spawn_blocking(move || fill_disk(&path)).await.unwrap_or(0);
                eprintln!("soak:         disk full: {} MiB of ballast", filled >> 20);
                tokio::time::sleep(hold).await;
                let _ = std::fs::remove_file(&ballast);
            }
        }
        let end = Instant::now();
        windows.push(Window { kind, start, end });
        tokio::time::sleep(plan.gap(&mut rng)).await;
    }
    let last_fault_over = windows.last().map_or(t0, |w| w.end + w.kind.grace());
    *lock(&ctx.settled_from) = Some(last_fault_over.max(Instant::now()));
    let remaining = total.saturating_sub(t0.elapsed()).max(Duration::from_secs(5));
    eprintln!("soak: {:6.1}s faults over; settling for {:.0}s", ctx.secs(Instant::now()), remaining.as_secs_f64());
    tokio::time::sleep(remaining).await;

    ctx.stop.store(true, Ordering::SeqCst);
    tasks.push(publisher);
    for t in tasks {
        if tokio::time::timeout(Duration::from_secs(150), t).await.is_err() {
            ctx.violation("a client was still in a request 150 s after the end".into());
        }
    }
    monitor_stop.store(true, Ordering::SeqCst);
    let _ = monitor.await;

    // Errors only within fault windows.
    let failed = std::mem::take(&mut lock(&ctx.tally).failed);
    let mut outside = 0;
    for f in &failed {
        if !windows.iter().any(|w| w.explains(f.start, f.end)) {
            outside += 1;
            if outside <= 20 {
                ctx.violation(format!("error outside any fault window ({:.1}s–{:.1}s): {}", ctx.secs(f.start), ctx.secs(f.end), f.what));
            }
        }
    }
    if outside > 20 {
        ctx.violation(format!("… {} more errors outside fault windows", outside - 20));
    }

    // Everything cached pulls with the upstream stopped. What is cached: the tags `regcache ls`
    // lists with their manifest stored, and the blobs in `blobs/`, once nothing moves (eviction
    // made room all along, so what was answered a moment ago may be gone): regcache is stopped
    // for `ls` and started again.
    reg.stop().await;
    match rc.terminate(Duration::from_secs(30)).await {
        Ok(s) if s.success() => {}
        Ok(s) => ctx.violation(format!("regcache exited with {s} on SIGTERM: {}", tail(&log))),
        Err(e) => ctx.violation(format!("regcache on SIGTERM: {e}")),
    }
    let mut final_ops: Vec<Op> = Vec::new();
    match Command::new(BIN).args(["ls", "--config"]).arg(&config).stdin(Stdio::null()).output() {
        Ok(o) if o.status.success() => {
            let mut repo = None;
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                if let Some(tag_line) = line.strip_prefix("  ") {
                    let mut words = tag_line.split_whitespace();
                    let (Some(tag), Some(_digest), Some(size)) = (words.next(), words.next(), words.next()) else { continue };
                    if let (Some(repo), false) = (&repo, size == "?") {
                        final_ops.push(Op::Tag { repo: String::clone(repo), tag: tag.to_owned() });
                    }
                } else {
                    repo = line.strip_prefix("docker.io/").map(str::to_owned);
                }
            }
        }
        Ok(o) => ctx.violation(format!("regcache ls failed ({}): {}", o.status, String::from_utf8_lossy(&o.stderr))),
        Err(e) => ctx.violation(format!("running regcache ls: {e}")),
    }
    let blob_repos: HashMap<String, String> = {
        let catalog = lock(&ctx.catalog);
        catalog.images.iter().flat_map(|i| i.blobs.iter().map(|(d, _)| (d.clone(), i.repo.clone()))).collect()
    };
    let cached: HashSet<String> = files_under(&data.join("blobs"))
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("sha256:{}", n.to_string_lossy())))
        .collect();
    let mut cached_blobs = 0;
    for digest in &cached {
        if let Some(repo) = blob_repos.get(digest) {
            cached_blobs += 1;
            final_ops.push(Op::Blob { repo: repo.clone(), digest: digest.clone() });
        }
    }
    // The ranges answered after the last fault, of blobs still cached.
    final_ops.extend(lock(&ctx.tally).settled.iter().filter(|op| matches!(op, Op::Range { digest, .. } if cached.contains(digest))).cloned());
    final_ops.sort_by_key(Op::describe);
    final_ops.dedup();
    rc.spawn();
    if let Err(e) = rc.wait_ready(&http).await {
        ctx.violation(format!("restart for the final check: {e}"));
    }
    let mut final_failed = 0;
    for op in &final_ops {
        match ctx.run(op).await {
            Ok(_) => {}
            Err(Fail::Error(e)) | Err(Fail::Violation(e)) => {
                final_failed += 1;
                if final_failed <= 20 {
                    ctx.violation(format!("cached, but not served with the upstream stopped: {}: {e}", op.describe()));
                }
            }
        }
    }
    eprintln!(
        "soak: with the upstream stopped: {} of {} requests answered ({cached_blobs} cached blobs, the tags `regcache ls` lists, ranges)",
        final_ops.len() - final_failed,
        final_ops.len(),
    );

    // Stops cleanly; verify passes; nothing temporary left.
    match rc.terminate(Duration::from_secs(30)).await {
        Ok(s) if s.success() => {}
        Ok(s) => ctx.violation(format!("regcache exited with {s} on SIGTERM: {}", tail(&log))),
        Err(e) => ctx.violation(format!("regcache on SIGTERM: {e}")),
    }
    let verify = Command::new(BIN).args(["verify", "--config"]).arg(&config).stdin(Stdio::null()).output();
    match verify {
        Ok(o) => {
            let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
            eprintln!("soak: regcache verify: {}", text.trim().replace('\n', "\n      "));
            if !o.status.success() || text.contains("corrupt:") || text.contains("corrupt in the bucket") {
                ctx.violation(format!("regcache verify failed ({}): {text}", o.status));
            }
        }
        Err(e) => ctx.violation(format!("running regcache verify: {e}")),
    }
    let left = files_under(&data.join("tmp"));
    if !left.is_empty() {
        ctx.violation(format!("temporary files left in tmp/: {left:?}"));
    }
    // The records of unfinished bucket uploads (`<data_dir>/uploads/`), and the uploads themselves.
    let records = files_under(&data.join("uploads"));
    if !records.is_empty() {
        ctx.violation(format!("records of unfinished uploads left in uploads/: {records:?}"));
    }
    if let Some(w) = &weed {
        match w.unfinished_uploads("soak").await {
            Ok(0) => eprintln!("soak: no unfinished multipart upload in the bucket"),
            Ok(n) => ctx.violation(format!("{n} unfinished multipart uploads in the bucket")),
            Err(e) => ctx.violation(format!("listing the bucket's unfinished uploads: {e}")),
        }
    }
    let samples = lock(&samples).clone();
    let violations = report(&plan, &ctx, &windows, &samples, &log, tmpfs.is_some());
    drop(rc);
    drop(weed);
    WEED_PID.store(0, Ordering::SeqCst);
    drop(tmpfs);
    if violations > 0 {
        let kept = work.keep();
        println!("soak: kept {} (regcache.log)", kept.display());
    }
    violations
}

/// Check memory and open files, print the summary; the number of violations.
fn report(plan: &Plan, ctx: &Ctx, windows: &[Window], samples: &[Sample], log: &Path, disk_full: bool) -> usize {
    // Per process: a baseline once warmed up (the first quarter of its quiet samples after 10 s)
    // against its end (the last quarter): bounded growth.
    let quiet = |s: &Sample| !windows.iter().any(|w| w.explains(s.at, s.at));
    let mut pids: Vec<u32> = samples.iter().map(|s| s.pid).collect();
    pids.dedup();
    let mut memory = Vec::new();
    for pid in pids {
        let of: Vec<&Sample> = samples.iter().filter(|s| s.pid == pid).collect();
        let Some(first) = of.first() else { continue };
        let warm: Vec<&&Sample> = of.iter().filter(|s| s.at >= first.at + Duration::from_secs(10) && quiet(s)).collect();
        let life = of.last().map_or(Duration::ZERO, |l| l.at - first.at);
        if warm.len() < 40 {
            memory.push(format!("pid {pid}: {:.0}s, too short to judge", life.as_secs_f64()));
            continue;
        }
        let q = warm.len() / 4;
        let base_rss = warm[..q].iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let end_rss = warm[warm.len() - q..].iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let base_fds = warm[..q].iter().map(|s| s.fds).max().unwrap_or(0);
        let end_fds = warm[warm.len() - q..].iter().map(|s| s.fds).max().unwrap_or(0);
        memory.push(format!(
            "pid {pid}: {:.0}s, RSS {} → {} MiB, open files {base_fds} → {end_fds}",
            life.as_secs_f64(),
            base_rss >> 10,
            end_rss >> 10
        ));
        if end_rss > base_rss + base_rss / 2 + (48 << 10) {
            ctx.violation(format!("RSS of regcache (pid {pid}) grew from {} to {} MiB", base_rss >> 10, end_rss >> 10));
        }
        if end_fds > base_fds + 48 {
            ctx.violation(format!("open files of regcache (pid {pid}) grew from {base_fds} to {end_fds}"));
        }
    }
    let peak = samples.iter().max_by_key(|s| s.rss_kib);
    if let Some(p) = peak {
        if p.rss_kib > 1 << 20 {
            ctx.violation(format!("regcache's RSS reached {} MiB", p.rss_kib >> 10));
        }
    }
    let tally = lock(&ctx.tally);
    println!("==== soak summary: seed {}, {} s, bucket {}, disk-full fault {}", plan.seed, plan.seconds, plan.bucket, disk_full);
    println!("requests by outcome:");
    let total: u64 = tally.outcomes.values().sum();
    for (k, v) in &tally.outcomes {
        println!("  {v:>8}  {k}");
    }
    println!("  {total:>8}  in all");
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for w in windows {
        *by_kind.entry(w.kind.name()).or_default() += 1;
    }
    println!(
        "faults injected: {} ({})",
        windows.len(),
        by_kind.iter().map(|(k, v)| format!("{k} ×{v}")).collect::<Vec<_>>().join(", ")
    );
    println!("bytes verified: {} MiB ({} bytes)", tally.bytes >> 20, tally.bytes);
    match peak {
        Some(p) => println!(
            "peak RSS: {} MiB; peak open files: {}",
            p.rss_kib >> 10,
            samples.iter().map(|s| s.fds).max().unwrap_or(0)
        ),
        None => println!("peak RSS: not sampled"),
    }
    for m in &memory {
        println!("  {m}");
    }
    println!("regcache log: {}", log.display());
    let n = tally.violations.len();
    if n == 0 {
        println!("violations: none");
    } else {
        println!("violations: {n}");
        for v in tally.violations.iter().take(40) {
            println!("  {v}");
        }
    }
    n
}

