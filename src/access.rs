//! Who may use the mirror: an address allow list (checked when a connection is accepted, before a
//! byte is read) and htpasswd Basic credentials (401 with a Basic challenge, so `docker login`
//! works).
//!
//! bcrypt is slow on purpose, so checking a password must not be a way to stall the server: it runs
//! on threads of its own, on at most half the cores and at a lower scheduling priority than the
//! async workers (which serve transfers and `/healthz` first); an unknown user costs the same bcrypt
//! as a known one (no username oracle); verified credentials are remembered, so a correct client
//! pays once; and an address that sends [`Access::max_failures`] wrong credentials within a minute
//! gets 429 until the minute is over, without any bcrypt.
//!
//! The htpasswd file is read once, when the configuration is resolved ([`read_htpasswd`]: bcrypt
//! entries only).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;
use sha2::{Digest as _, Sha256};

use crate::config::Access;
use crate::oci::Blame;
use crate::sync::lock;

/// How many verified credentials are remembered before the memory is cleared. Only correct
/// credentials are remembered, so clients that don't know a password can't fill it.
const REMEMBERED: usize = 10_000;
/// How many bcrypt verifications run at once (each occupies a thread and a core): half the cores,
/// at least one, so that the other half keeps serving while a crowd sends passwords.
fn bcrypt_at_once() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

/// The `nice` of the password-checking threads: the scheduler runs the async workers first.
const CHECKER_NICE: i32 = 10;
/// How many password checks may wait per checking thread; past that, clients are told to retry.
const QUEUED_PER_CHECKER: usize = 64;
/// The window wrong credentials are counted in.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// How many client addresses the failure counts keep; past it, new addresses share one count.
const TRACKED_ADDRESSES: usize = 10_000;

/// Why a request is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Credentials are missing or wrong: 401.
    Unauthorized,
    /// This address sent too many wrong credentials lately: 429, try again after the duration.
    TooManyFailures(Duration),
}

impl Rejected {
    /// Who is to blame: always the client, whose credentials are missing or wrong.
    pub fn blame(&self) -> Blame {
        match self {
            Rejected::Unauthorized | Rejected::TooManyFailures(_) => Blame::Client,
        }
    }
}

/// The access policy, ready to check connections and requests.
pub struct Gate {
    policy: Access,
    // std Mutexes: a set or map lookup or insert, never held across bcrypt or an await.
    /// `sha256(user \0 password)` of credentials that verified.
    verified: Mutex<HashSet<[u8; 32]>>,
    failures: Mutex<Failures>,
    /// Jobs for the password-checking threads, which end when this is dropped.
    checkers: mpsc::SyncSender<Job>,
    /// `verify(password, hash)`: bcrypt, or a stand-in in tests.
    verify: Verifier,
    verifications: AtomicU64,
}

/// Checks a password against a stored hash.
type Verifier = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// One password check for a checker thread.
type Job = Box<dyn FnOnce() + Send>;

/// Start `n` password-checking threads (none when no htpasswd is configured) at a lower priority.
fn start_checkers(n: usize) -> mpsc::SyncSender<Job> {
    // Bounded: a client that sends wrong credentials and goes away must not pile up work.
    let (jobs, queue) = mpsc::sync_channel::<Job>(n.saturating_mul(QUEUED_PER_CHECKER));
    let queue = Arc::new(Mutex::new(queue));
    for i in 0..n {
        let queue = queue.clone();
        let spawned = std::thread::Builder::new().name(format!("regcache-bcrypt-{i}")).spawn(move || {
            // On Linux a thread id names just this thread to setpriority. Failing to lower the
            // priority (some sandboxes forbid it) leaves the thread at the normal one.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), CHECKER_NICE);
            loop {
                // The lock is held only while waiting for the next job, never while checking.
                let job = lock(&queue).recv();
                match job {
                    Ok(job) => job(),
                    Err(_) => return, // the gate is gone
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a password-checking thread");
        }
    }
    jobs
}

impl Gate {
    /// A gate for `policy`.
    pub fn new(policy: Access) -> Gate {
        Gate::with_verifier(policy, Arc::new(|password, hash| bcrypt::verify(password, hash).unwrap_or(false)))
    }

    fn with_verifier(policy: Access, verify: Verifier) -> Gate {
        Gate {
            verified: Mutex::new(HashSet::new()),
            checkers: start_checkers(if policy.users.is_empty() { 0 } else { bcrypt_at_once() }),
            failures: Mutex::new(Failures::default()),
            verify,
            verifications: AtomicU64::new(0),
            policy,
        }
    }

    /// How many passwords were checked against a hash so far (remembered credentials aren't).
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// Whether a connection from `peer` may be served at all.
    pub fn allows(&self, peer: IpAddr) -> bool {
        let peer = unmapped(peer);
        self.policy.allow.is_empty() || self.policy.allow.iter().any(|n| n.contains(&peer))
    }

    /// Whether the request carries valid credentials (always, when no htpasswd is configured).
    pub async fn authenticates(&self, peer: IpAddr, authorization: Option<&HeaderValue>) -> Result<(), Rejected> {
        let Some((_, first_hash)) = self.policy.users.first() else {
            return Ok(());
        };
        let (user, password) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(parse_basic)
            .ok_or(Rejected::Unauthorized)?;
        let key: [u8; 32] = Sha256::digest(format!("{user}\0{password}").as_bytes()).into();
        if lock(&self.verified).contains(&key) {
            return Ok(());
        }
        // Counted as a failure before verifying, so that concurrent attempts can't exceed the limit.
        let counted = lock(&self.failures).attempt(
            peer,
            Instant::now(),
            self.policy.max_failures,
        )?;
        let known = self.policy.users.iter().find(|(u, _)| *u == user);
        // An unknown user is checked against the first user's hash (and fails whatever the result):
        // the same work, so the time of the answer doesn't tell whether the user exists.
        let hash = known.map_or(first_hash, |(_, h)| h).clone();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let verify = self.verify.clone();
        // Jobs queue while every checker is busy, up to QUEUED_PER_CHECKER each; a full queue is a
        // 429 to retry in a second. A job whose client has gone is skipped. No checker thread:
        // refused.
        let job: Job = Box::new(move || {
            if !tx.is_closed() {
                let _ = tx.send(verify(&password, &hash));
            }
        });
        let matched = match self.checkers.try_send(job) {
            Ok(()) => rx.await.unwrap_or(false),
            Err(mpsc::TrySendError::Full(_)) => return Err(Rejected::TooManyFailures(Duration::from_secs(1))),
            Err(mpsc::TrySendError::Disconnected(_)) => false,
        };
        if !(matched && known.is_some()) {
            return Err(Rejected::Unauthorized);
        }
        lock(&self.failures).forgive(counted);
        let mut verified = lock(&self.verified);
        if verified.len() >= REMEMBERED {
            verified.clear();
        }
        verified.insert(key);
        Ok(())
    }
}

/// An IPv4 address mapped into IPv6 as the IPv4 address it is.
fn unmapped(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    }
}

/// Wrong credentials per client address in the current minute.
///
/// Bounded: at most [`TRACKED_ADDRESSES`] entries. Windows that have ended are pruned when the map is
/// full; addresses that still find it full share one entry ([`Failures::OVERFLOW`]), so a crowd of
/// addresses is limited together rather than growing the map. IPv6 clients are counted by /64, the
/// block one host usually holds.
#[derive(Default)]
struct Failures {
    by_addr: HashMap<IpAddr, Window>,
}

/// The failures of one address since `start`.
struct Window {
    start: Instant,
    count: u32,
}

impl Failures {
    /// The key every address beyond the bound shares.
    const OVERFLOW: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

    /// Count one attempt of `peer` at `now`; refused when `max` are already counted this minute.
    /// Returns the key it was counted under, for [`Failures::forgive`].
    fn attempt(&mut self, peer: IpAddr, now: Instant, max: u32) -> Result<IpAddr, Rejected> {
        let mut key = match unmapped(peer) {
            IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
            v4 => v4,
        };
        if !self.by_addr.contains_key(&key) && self.by_addr.len() >= TRACKED_ADDRESSES {
            self.by_addr.retain(|_, w| now.saturating_duration_since(w.start) < FAILURE_WINDOW);
            if self.by_addr.len() >= TRACKED_ADDRESSES {
                key = Self::OVERFLOW;
            }
        }
        let w = self.by_addr.entry(key).or_insert(Window { start: now, count: 0 });
        if now.saturating_duration_since(w.start) >= FAILURE_WINDOW {
            *w = Window { start: now, count: 0 };
        }
        if w.count >= max {
            let left = FAILURE_WINDOW.saturating_sub(now.saturating_duration_since(w.start));
            return Err(Rejected::TooManyFailures(left.max(Duration::from_secs(1))));
        }
        w.count += 1;
        Ok(key)
    }

    /// Take back an attempt that turned out to be correct.
    fn forgive(&mut self, key: IpAddr) {
        if let Some(w) = self.by_addr.get_mut(&key) {
            w.count = w.count.saturating_sub(1);
        }
    }
}

/// `Basic base64(user:password)` → (user, password).
pub fn parse_basic(value: &str) -> Option<(String, String)> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}


/// Why an htpasswd file can't be used.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file can't be read.
    #[error("cannot read htpasswd {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `user:bcrypt-hash`.
    #[error("htpasswd {} line {line}: expected user:bcrypt-hash (htpasswd -B)", .path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The line (from 1).
        line: usize,
    },
    /// The file names no user.
    #[error("htpasswd {} has no entries", .path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// The users of the htpasswd file at `path`: `user → bcrypt hash`, comments and blank lines
/// skipped. Only bcrypt (`htpasswd -B`) is accepted: the other schemes are fast to guess.
pub fn read_htpasswd(path: &Path) -> Result<Vec<(String, String)>, HtpasswdError> {
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read { path: path.to_owned(), source })?;
    let users = parse_htpasswd(&text).map_err(|line| HtpasswdError::Line { path: path.to_owned(), line })?;
    if users.is_empty() {
        return Err(HtpasswdError::Empty { path: path.to_owned() });
    }
    Ok(users)
}

/// The entries of an htpasswd file; the number of the first line that isn't one.
pub fn parse_htpasswd(text: &str) -> Result<Vec<(String, String)>, usize> {
    let mut users = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some((user, hash)) if !user.is_empty() && ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) => {
                users.push((user.to_owned(), hash.to_owned()));
            }
            _ => return Err(i + 1),
        }
    }
    Ok(users)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> HeaderValue {
        let v = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        HeaderValue::from_str(&format!("Basic {v}")).unwrap()
    }

    fn access(users: Vec<(String, String)>, allow: Vec<ipnet::IpNet>) -> Access {
        Access { users, allow, ..Access::default() }
    }

    #[test]
    fn htpasswd_files() {
        let ok = "$2y$05$abcdefghijklmnopqrstuu5KhjzQ0hXm9yJm8eWbJ0mYlQwq7G3Wi";
        let cases: [(String, Result<Vec<&str>, usize>); 7] = [
            (format!("ci:{ok}\n"), Ok(vec!["ci"])),
            (format!("# users\n\nci:{ok}\n  dev:{ok}  \n"), Ok(vec!["ci", "dev"])),
            (String::new(), Ok(vec![])),
            ("ci:{SHA}plain\n".into(), Err(1)),
            (format!("ci:{ok}\nnocolon\n"), Err(2)),
            (format!(":{ok}\n"), Err(1)),
            ("ci:$apr1$md5\n".into(), Err(1)),
        ];
        for (text, want) in cases {
            let got = parse_htpasswd(&text).map(|users| users.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>());
            assert_eq!(got, want.map(|users| users.iter().map(|u| u.to_string()).collect()), "{text:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        assert!(matches!(read_htpasswd(&path), Err(HtpasswdError::Read { .. })));
        std::fs::write(&path, "# nobody\n").unwrap();
        assert!(read_htpasswd(&path).unwrap_err().to_string().contains("has no entries"));
        std::fs::write(&path, "ci:{SHA}plain\n").unwrap();
        let err = read_htpasswd(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("bcrypt") && err.contains(&path.display().to_string()), "{err}");
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[tokio::test]
    async fn allow_list() {
        let gate = Gate::new(access(vec![], vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]));
        assert!(gate.allows("10.1.2.3".parse().unwrap()));
        assert!(gate.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(gate.allows("::1".parse().unwrap()));
        assert!(!gate.allows("192.168.1.1".parse().unwrap()));
        let open = Gate::new(Access::default());
        assert!(open.allows("192.168.1.1".parse().unwrap()));
        assert_eq!(open.authenticates(PEER, None).await, Ok(()));
    }

    #[tokio::test]
    async fn htpasswd_credentials() {
        let hash = bcrypt::hash("s3cret", 4).unwrap().replacen("$2b$", "$2y$", 1);
        let gate = Gate::new(access(vec![("ci".into(), hash)], vec![]));
        let cases: [(Option<HeaderValue>, Result<(), Rejected>); 7] = [
            (Some(basic("ci", "s3cret")), Ok(())),
            (Some(basic("ci", "s3cret")), Ok(())), // remembered
            (Some(basic("ci", "wrong")), Err(Rejected::Unauthorized)),
            (Some(basic("other", "s3cret")), Err(Rejected::Unauthorized)),
            (None, Err(Rejected::Unauthorized)),
            (Some(HeaderValue::from_static("Bearer x")), Err(Rejected::Unauthorized)),
            (Some(HeaderValue::from_static("Basic !!!")), Err(Rejected::Unauthorized)),
        ];
        for (header, want) in cases {
            assert_eq!(gate.authenticates(PEER, header.as_ref()).await, want, "{header:?}");
        }
    }

    #[tokio::test]
    async fn unknown_users_cost_the_same_work_and_successes_are_remembered() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let gate = Gate::new(access(vec![("ci".into(), hash)], vec![]));
        let cases = [("nobody", "x", 1), ("ci", "wrong", 2), ("ci", "s3cret", 3), ("ci", "s3cret", 3), ("nobody", "s3cret", 4)];
        for (user, password, verifications) in cases {
            let _ = gate.authenticates(PEER, Some(&basic(user, password))).await;
            assert_eq!(gate.verifications(), verifications, "after {user}:{password}");
        }
    }

    #[test]
    fn passwords_are_checked_off_the_async_threads() {
        // The stand-in verifier blocks until released. Run on the async thread, it would stall this
        // single-threaded runtime, and the check below would only run after it finished.
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let entered_tx = Mutex::new(entered_tx);
        let release_rx = Mutex::new(release_rx);
        let verifier: Verifier = Arc::new(move |_, _| {
            let _ = entered_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv_timeout(Duration::from_secs(10));
            false
        });
        let gate = Arc::new(Gate::with_verifier(access(vec![("ci".into(), "$2y$04$x".into())], vec![]), verifier));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let auth = tokio::spawn({
                let gate = gate.clone();
                async move { gate.authenticates(PEER, Some(&basic("ci", "wrong"))).await }
            });
            tokio::task::spawn_blocking(move || entered_rx.recv().unwrap()).await.unwrap();
            assert!(!auth.is_finished(), "the runtime ran on while the password was being checked");
            release_tx.send(()).unwrap();
            assert_eq!(auth.await.unwrap(), Err(Rejected::Unauthorized));
        });
    }

    #[test]
    fn failures_are_limited_per_address_per_minute() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "::ffff:10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(f.attempt(a, t0, 3), Ok(a));
        }
        assert_eq!(f.attempt(a, t0 + Duration::from_secs(20), 3), Err(Rejected::TooManyFailures(Duration::from_secs(40))));
        assert_eq!(f.attempt(b, t0, 3), Ok("10.0.0.2".parse().unwrap()), "other addresses are not affected");
        f.forgive(a);
        assert_eq!(f.attempt(a, t0, 3), Ok(a), "a correct attempt doesn't count");
        assert_eq!(f.attempt(a, t0 + FAILURE_WINDOW, 3), Ok(a), "a new minute starts afresh");
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        f.attempt(v6a, t0, 1).unwrap();
        assert!(f.attempt(v6b, t0, 1).is_err(), "one /64 counts as one client");
    }

    #[test]
    fn failure_counts_are_bounded() {
        let mut f = Failures::default();
        let t0 = Instant::now();
        for i in 0..TRACKED_ADDRESSES as u32 {
            f.attempt(IpAddr::V4(i.into()), t0, 5).unwrap();
        }
        let late: IpAddr = "203.0.113.9".parse().unwrap();
        assert_eq!(f.attempt(late, t0, 1), Ok(Failures::OVERFLOW), "beyond the bound, addresses share a count");
        assert!(f.attempt("203.0.113.10".parse().unwrap(), t0, 1).is_err());
        assert_eq!(f.by_addr.len(), TRACKED_ADDRESSES + 1);
        assert_eq!(f.attempt(late, t0 + FAILURE_WINDOW, 1), Ok(late), "ended windows are pruned when full");
        assert!(f.by_addr.len() <= 2);
    }
}
