//! An in-process fake upstream registry that behaves like Docker Hub as far as a
//! pull-through cache can see, plus misbehaviour switches ([`Fault`]).
//!
//! Two hyper servers run on `127.0.0.1:0`: the *registry* (`/v2/...` and the
//! bearer-token endpoint `/token`) and a separate *CDN* that blob downloads are
//! redirected to with a signed URL, like Docker Hub's redirects to presigned
//! object-storage URLs. The CDN refuses requests that carry an `Authorization`
//! header, so a client that leaks registry credentials across the redirect fails.
//!
//! Blobs live in one store shared by all repositories: any repository name can
//! fetch any blob added with [`FakeRegistry::add_blob`]. Manifests and tags are
//! per repository; a repository exists once a manifest has been put into it.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Response body type of both servers: small bodies are `Full`, blobs are streamed.
type Body = UnsyncBoxBody<Bytes, io::Error>;

/// `service` value of the bearer-token challenge.
pub const SERVICE: &str = "fake-registry";

/// One request as a server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Request method, e.g. `GET`.
    pub method: String,
    /// Path plus query string, e.g. `/token?service=fake-registry&scope=...`.
    pub path_and_query: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// Every `Accept` header line, in the order received.
    pub accept: Vec<String>,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// A misbehaviour switch; several can be active at once (see [`FakeRegistry::set_fault`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The CDN serves blobs with the right length but wrong bytes.
    CorruptBlobs,
    /// The CDN announces the full `Content-Length`, sends this many body bytes,
    /// then closes the connection.
    CutBlobsAfter(usize),
    /// The CDN sends the body in `chunk`-byte pieces, `delay_ms` apart.
    SlowBlobs { chunk: usize, delay_ms: u64 },
    /// The registry answers `code` (with an OCI error body and optional
    /// `Retry-After`) to requests whose path and query contain `path_contains`.
    Status {
        code: u16,
        retry_after: Option<u32>,
        path_contains: String,
    },
    /// Like `Status`, for `GET`s only (Docker Hub counts and refuses `GET`s, never `HEAD`s).
    GetStatus { code: u16, path_contains: String },
    /// The registry never answers requests whose path and query contain `path_contains`.
    HangHeaders { path_contains: String },
    /// The registry answers requests whose path and query contain `path_contains` only after
    /// `delay_ms` (a slow upstream, so concurrent requests overlap).
    DelayHeaders { path_contains: String, delay_ms: u64 },
    /// Blob redirects name the CDN as `localhost:PORT` instead of `127.0.0.1:PORT`.
    RedirectToOtherHost,
    /// The registry holds requests whose path and query contain `path_contains` (counted on
    /// arrival, see [`FakeRegistry::wait_held`]) until [`FakeRegistry::release_held`] (or
    /// [`FakeRegistry::pass_held`]); then they are answered as usual (other faults included). Lets
    /// a test act while a request is in flight without guessing how long it takes.
    Hold { path_contains: String },
    /// The CDN serves blobs without a `Content-Length`, repeating their bytes forever: a body
    /// that never ends.
    EndlessBlobs,
    /// The CDN sends the first `bytes` of blobs whose path contains `path_contains`, then holds
    /// the rest of the body until [`FakeRegistry::release_held`]. Lets a test act while a blob
    /// is half transferred. With [`Fault::CorruptBlobs`] the bytes before the hold are wrong
    /// already: wrong bytes, gated (a fill that will fail, under way).
    HoldBlobsAfter { bytes: usize, path_contains: String },
    /// The token endpoint answers `expires_in` as this raw JSON text (`None`: the field is left
    /// out), e.g. `"18446744073709551615"`, `"-1"`, `"1.5"`, `"\"300\""`. A whole number of
    /// seconds is also enforced: the token is refused (401) from then on (default: 300 s).
    TokenExpiresIn(Option<String>),
    /// Manifest answers carry this `Content-Type` instead of the manifest's own type.
    ManifestContentType(String),
    /// Manifest `HEAD`s are answered 405, as some registries do.
    NoManifestHead,
    /// Like distribution and Docker Hub: a tag that is a manifest list or index answers a client
    /// that doesn't accept its type with its linux/amd64 image.
    PlatformFallback,
    /// Like distribution 2.x: a tag that is a Docker schema2 image answers a client that accepts
    /// no v2 type but signed schema1 with a schema1 conversion, signed afresh on every answer
    /// (so only its payload digest is stable) and not retrievable by that digest.
    Schema1OnTheFly,
    /// Blob redirects go to `base` (e.g. `http://169.254.169.254`) + `/blobs/<digest>?sig=…`.
    RedirectBlobsTo(String),
    /// The token realm names the host the client addressed (its `Host` header) instead of
    /// `127.0.0.1:PORT`, as a registry reached by a DNS name does.
    RealmFromHost,
    /// The bearer challenge names this realm, verbatim (e.g. `ftp://10.1.2.3:2121/token`).
    Realm(String),
    /// `tags/list` ignores `n` and `last`: every tag, newest first (reverse order), no `Link`.
    TagsUnpaged,
    /// `tags/list` pages hold at most this many tags, whatever `n` asks (and without `n`), with a
    /// `Link` to the next when more follow: a registry with a page size of its own.
    TagsPageSize(usize),
    /// Every registry and CDN response carries Docker Hub's rate-limit headers
    /// (`ratelimit-limit: 100;w=21600`, `ratelimit-remaining: <remaining>;w=21600`,
    /// `docker-ratelimit-source: 192.0.2.7`).
    RateLimitHeaders { remaining: u32 },
}

/// Docker Hub's message in a 429 body.
pub const RATE_LIMIT_MESSAGE: &str = "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit";

/// Handle to a running fake registry + CDN pair; clones share the same servers.
#[derive(Clone)]
pub struct FakeRegistry {
    shared: Arc<Shared>,
}

struct Shared {
    reg_addr: SocketAddr,
    cdn_addr: SocketAddr,
    /// Secret mixed into CDN URL signatures and token strings.
    secret: String,
    /// std Mutex: every critical section is short and synchronous (never held
    /// across an `.await`), and the test API is synchronous.
    state: Mutex<State>,
    /// Tasks of the current server generation; `None` while stopped.
    running: Mutex<Option<Running>>,
    /// Woken whenever either server logs a request (see `wait_until`).
    logged: Notify,
    /// Opened by `release_held`: held requests ([`Fault::Hold`]) go on.
    release: tokio::sync::watch::Sender<bool>,
    /// Raised by `pass_held` to the gate generation it closed: a request held at generation `g`
    /// also goes on once this is above `g`. Only grows, so no pass is missed.
    passed: tokio::sync::watch::Sender<u64>,
}

struct State {
    user: String,
    pass: String,
    blobs: HashMap<String, Bytes>,
    repos: HashMap<String, Repo>,
    private: HashSet<String>,
    /// Issued bearer token -> repository names it may pull.
    tokens: HashMap<String, HashSet<String>>,
    /// (repository, subject digest) -> referrers list served by the referrers API.
    referrers: HashMap<(String, String), Bytes>,
    issued: u64,
    log: Vec<Seen>,
    cdn_log: Vec<Seen>,
    token_log: Vec<Seen>,
    /// Issued bearer token -> when it stops working: its `expires_in` from issue, when that is a
    /// whole number of seconds (other `expires_in` texts, see [`Fault::TokenExpiresIn`], never expire).
    expiry: HashMap<String, Instant>,
    faults: Vec<Fault>,
    /// How many requests [`Fault::Hold`] has held since the gate last closed (start or `pass_held`).
    held: usize,
    /// The generation of the gate of [`Fault::Hold`]: `pass_held` lets the requests held at this
    /// generation go on and holds later ones at the next.
    gate: u64,
}

#[derive(Default)]
struct Repo {
    /// digest -> (media type, exact bytes)
    manifests: HashMap<String, (String, Bytes)>,
    /// tag -> digest; a BTreeMap keeps tags sorted for `tags/list`.
    tags: BTreeMap<String, String>,
}

struct Running {
    accept_loops: Vec<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Registry,
    Cdn,
}

/// Locks a mutex, ignoring poisoning: a panicking test must not cascade into
/// unrelated failures in the server tasks.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // SO_REUSEADDR lets `restart` take the same port back despite TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl FakeRegistry {
    /// Starts the registry and the CDN, each on its own `127.0.0.1` port.
    pub async fn start() -> FakeRegistry {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let reg = bind(any).expect("bind fake registry listener");
        let cdn = bind(any).expect("bind fake CDN listener");
        let reg_addr = reg.local_addr().expect("registry listener address");
        let cdn_addr = cdn.local_addr().expect("CDN listener address");
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let secret = hex::encode(Sha256::digest(format!("{nanos}/{reg_addr}/{cdn_addr}")));
        let state = State {
            user: "ci".into(),
            pass: "s3cret".into(),
            blobs: HashMap::new(),
            repos: HashMap::new(),
            private: HashSet::new(),
            tokens: HashMap::new(),
            referrers: HashMap::new(),
            issued: 0,
            log: Vec::new(),
            cdn_log: Vec::new(),
            token_log: Vec::new(),
            expiry: HashMap::new(),
            faults: Vec::new(),
            held: 0,
            gate: 0,
        };
        let shared = Arc::new(Shared {
            reg_addr,
            cdn_addr,
            secret,
            state: Mutex::new(state),
            running: Mutex::new(None),
            logged: Notify::new(),
            release: tokio::sync::watch::Sender::new(false),
            passed: tokio::sync::watch::Sender::new(0),
        });
        let this = FakeRegistry { shared };
        this.launch(reg, cdn);
        this
    }

    fn launch(&self, reg: TcpListener, cdn: TcpListener) {
        let conns = Arc::new(Mutex::new(Vec::new()));
        let accept_loops = vec![
            tokio::spawn(accept_loop(
                self.shared.clone(),
                reg,
                Side::Registry,
                conns.clone(),
            )),
            tokio::spawn(accept_loop(
                self.shared.clone(),
                cdn,
                Side::Cdn,
                conns.clone(),
            )),
        ];
        *lock(&self.shared.running) = Some(Running {
            accept_loops,
            conns,
        });
    }

    /// `http://127.0.0.1:PORT` of the registry.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.reg_addr)
    }

    /// `127.0.0.1:PORT` of the registry.
    pub fn host(&self) -> String {
        self.shared.reg_addr.to_string()
    }

    /// `http://127.0.0.1:PORT` of the CDN.
    pub fn cdn_url(&self) -> String {
        format!("http://{}", self.shared.cdn_addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.shared.state)
    }

    /// Sets the Basic credentials the token endpoint accepts (default `ci`/`s3cret`).
    pub fn set_credentials(&self, user: &str, pass: &str) {
        let mut st = self.state();
        st.user = user.to_string();
        st.pass = pass.to_string();
    }

    /// Stores a blob (visible from every repository); returns `sha256:<hex>`.
    pub fn add_blob(&self, bytes: Vec<u8>) -> String {
        let digest = sha256_digest(&bytes);
        self.state()
            .blobs
            .insert(digest.clone(), Bytes::from(bytes));
        digest
    }

    /// The bytes of a blob added with [`add_blob`](Self::add_blob) (shared, not copied).
    pub fn blob(&self, digest: &str) -> Option<Bytes> {
        self.state().blobs.get(digest).cloned()
    }

    /// Stores a manifest's exact bytes under its digest, and under `tag` if given;
    /// returns the digest.
    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> String {
        let digest = sha256_digest(&bytes);
        let mut st = self.state();
        let entry = st.repos.entry(repo.to_string()).or_default();
        entry
            .manifests
            .insert(digest.clone(), (media_type.to_string(), Bytes::from(bytes)));
        if let Some(tag) = tag {
            entry.tags.insert(tag.to_string(), digest.clone());
        }
        digest
    }

    /// Stores `bytes` under `digest` whatever they hash to (a hostile or schema1 upstream), and
    /// under `tag` if given.
    pub fn put_manifest_as(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        bytes: Vec<u8>,
        digest: &str,
    ) {
        let mut st = self.state();
        let entry = st.repos.entry(repo.to_string()).or_default();
        entry.manifests.insert(
            digest.to_string(),
            (media_type.to_string(), Bytes::from(bytes)),
        );
        if let Some(tag) = tag {
            entry.tags.insert(tag.to_string(), digest.to_string());
        }
    }

    /// Serves `list` (an OCI image index) as the referrers of `subject` in `repo`; without one the
    /// referrers API answers 404, like a registry without it.
    pub fn put_referrers(&self, repo: &str, subject: &str, list: Vec<u8>) {
        self.state().referrers.insert((repo.to_string(), subject.to_string()), Bytes::from(list));
    }

    /// Removes a tag; the manifest stays reachable by digest.
    pub fn delete_tag(&self, repo: &str, tag: &str) {
        if let Some(r) = self.state().repos.get_mut(repo) {
            r.tags.remove(tag);
        }
    }

    /// Pull tokens for `repo` now need valid Basic credentials at the token endpoint.
    pub fn make_private(&self, repo: &str) {
        self.state().private.insert(repo.to_string());
    }

    /// Forgets every issued token, as if they had all expired.
    pub fn revoke_tokens(&self) {
        let mut st = self.state();
        st.tokens.clear();
        st.expiry.clear();
    }

    /// Waits until every token issued so far is past its `expires_in` (the registry refuses it from
    /// then on). A deadline set by the token endpoint, not a guess; returns at once if none expires.
    pub async fn wait_tokens_expired(&self) {
        let last = self.state().expiry.values().max().copied();
        if let Some(last) = last {
            tokio::time::sleep_until(tokio::time::Instant::from_std(last)).await;
        }
    }

    /// Everything the registry host saw (token requests included), in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.state().log.clone()
    }

    /// Everything the CDN saw, in order.
    pub fn cdn_requests(&self) -> Vec<Seen> {
        self.state().cdn_log.clone()
    }

    /// Requests to the token endpoint, in order.
    pub fn token_requests(&self) -> Vec<Seen> {
        self.state().token_log.clone()
    }

    /// Empties all three request logs.
    pub fn clear_log(&self) {
        let mut st = self.state();
        st.log.clear();
        st.cdn_log.clear();
        st.token_log.clear();
    }

    /// Registry requests with this method whose path and query contain `path_contains`.
    pub fn count(&self, method: &str, path_contains: &str) -> usize {
        let st = self.state();
        st.log
            .iter()
            .filter(|s| {
                s.method.eq_ignore_ascii_case(method) && s.path_and_query.contains(path_contains)
            })
            .count()
    }

    /// CDN requests (any method) whose path and query contain `path_contains`.
    pub fn cdn_count(&self, path_contains: &str) -> usize {
        let st = self.state();
        st.cdn_log
            .iter()
            .filter(|s| s.path_and_query.contains(path_contains))
            .count()
    }

    /// Waits until [`count`](Self::count)`(method, path_contains) >= n`; wrap in a timeout.
    pub async fn wait_for_requests(&self, method: &str, path_contains: &str, n: usize) {
        self.wait_until(|| self.count(method, path_contains) >= n)
            .await
    }

    /// Waits until [`cdn_count`](Self::cdn_count)`(path_contains) >= n`; wrap in a timeout.
    pub async fn wait_for_cdn_requests(&self, path_contains: &str, n: usize) {
        self.wait_until(|| self.cdn_count(path_contains) >= n).await
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        loop {
            let notified = self.shared.logged.notified();
            tokio::pin!(notified);
            // Register before checking, so a request logged in between still wakes us.
            notified.as_mut().enable();
            if done() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until [`Fault::Hold`] has held `n` requests since the gate last closed (start, or
    /// [`pass_held`](Self::pass_held)); wrap in a timeout.
    pub async fn wait_held(&self, n: usize) {
        self.wait_until(|| self.state().held >= n).await
    }

    /// Lets every request held by [`Fault::Hold`] go on, and those that arrive later too.
    pub fn release_held(&self) {
        self.shared.release.send_replace(true);
    }

    /// Lets the requests held by [`Fault::Hold`] so far go on, and keeps holding later ones
    /// (counted from zero) until the next `pass_held` or `release_held`: steps a test through a
    /// sequence of upstream requests one at a time.
    pub fn pass_held(&self) {
        let mut st = self.state();
        let passed = st.gate;
        st.gate += 1;
        st.held = 0;
        self.shared.passed.send_replace(passed + 1);
    }

    /// Turns a fault on (in addition to those already on).
    pub fn set_fault(&self, f: Fault) {
        self.state().faults.push(f);
    }

    /// Turns every fault off.
    pub fn clear_faults(&self) {
        self.state().faults.clear();
    }

    /// Makes both servers unreachable: listeners closed (connects are refused)
    /// and every open connection dropped. State is kept for [`restart`](Self::restart).
    pub async fn stop(&self) {
        let Some(running) = lock(&self.shared.running).take() else {
            return;
        };
        for h in &running.accept_loops {
            h.abort();
        }
        for h in running.accept_loops {
            let _ = h.await; // cancelled: its listener has been dropped
        }
        // The accept loops are gone, so no connection task can be added now.
        let conns = std::mem::take(&mut *lock(&running.conns));
        for h in &conns {
            h.abort();
        }
        for h in conns {
            let _ = h.await;
        }
    }

    /// Listens again on the same two ports after [`stop`](Self::stop); no-op if running.
    pub async fn restart(&self) {
        if lock(&self.shared.running).is_some() {
            return;
        }
        let reg = bind(self.shared.reg_addr).expect("rebind fake registry port");
        let cdn = bind(self.shared.cdn_addr).expect("rebind fake CDN port");
        self.launch(reg, cdn);
    }
}

// ---------------------------------------------------------------------------
// Connection handling

/// Lets a CDN response cut its connection once the bytes it sent so far have
/// really been written to the socket (see [`Fault::CutBlobsAfter`]).
#[derive(Default)]
struct CutSwitch {
    armed: AtomicBool,
    fire: Notify,
}

/// `TcpStream` wrapper that fires the connection's [`CutSwitch`] on the first
/// successful flush after it was armed. hyper only flushes the socket once its
/// write buffer is empty, so at that point every byte before the cut is out.
struct CutIo {
    inner: TcpStream,
    cut: Arc<CutSwitch>,
}

impl AsyncRead for CutIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CutIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = std::task::ready!(Pin::new(&mut self.inner).poll_flush(cx));
        if res.is_ok() && self.cut.armed.load(Ordering::SeqCst) {
            self.cut.fire.notify_one();
        }
        Poll::Ready(res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    side: Side,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                tokio::task::yield_now().await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let cut = Arc::new(CutSwitch::default());
        let io = TokioIo::new(CutIo {
            inner: stream,
            cut: cut.clone(),
        });
        let (svc_shared, svc_cut) = (shared.clone(), cut.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let shared = svc_shared.clone();
            let cut = svc_cut.clone();
            async move {
                if side == Side::Registry {
                    if let Some(gate) = hold(&shared, &req) {
                        let (mut open, mut passed) = (shared.release.subscribe(), shared.passed.subscribe());
                        tokio::select! {
                            _ = open.wait_for(|open| *open) => {}
                            _ = passed.wait_for(|passed| *passed > gate) => {}
                        }
                    }
                    if let Some(delay) = header_delay(&shared, &req) {
                        tokio::time::sleep(delay).await;
                    }
                }
                let resp = match side {
                    Side::Registry => match registry(&shared, &req) {
                        Some(resp) => resp,
                        None => std::future::pending().await, // Fault::HangHeaders
                    },
                    Side::Cdn => with_rate_limit(&shared, cdn(&shared, &req, &cut)),
                };
                Ok::<_, Infallible>(resp)
            }
        });
        let builder = builder.clone();
        let task = tokio::spawn(async move {
            let conn = builder.serve_connection(io, svc);
            tokio::select! {
                _ = conn => {}
                _ = cut.fire.notified() => {} // drops the connection mid-body
            }
        });
        let mut list = lock(&conns);
        list.retain(|h| !h.is_finished());
        list.push(task);
    }
}

// ---------------------------------------------------------------------------
// Response helpers

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn respond(status: u16, headers: &[(&str, &str)], body: Body) -> Response<Body> {
    let mut builder =
        Response::builder().status(StatusCode::from_u16(status).expect("valid status code"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(body).expect("valid response head")
}

/// A JSON body (omitted for HEAD, `Content-Length` kept).
fn json(status: u16, body: String, head: bool) -> Response<Body> {
    let len = body.len().to_string();
    let headers = [
        ("content-type", "application/json"),
        ("content-length", len.as_str()),
    ];
    respond(status, &headers, if head { empty() } else { full(body) })
}

fn oci_error(status: u16, code: &str, message: &str, head: bool) -> Response<Body> {
    let body = serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]});
    json(status, body.to_string(), head)
}

fn with_header(mut resp: Response<Body>, name: &'static str, value: &str) -> Response<Body> {
    resp.headers_mut().insert(
        name,
        HeaderValue::from_str(value).expect("valid header value"),
    );
    resp
}

fn header_text(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes()).into_owned()
}

impl Seen {
    fn from_request<B>(req: &Request<B>) -> Seen {
        let h = req.headers();
        Seen {
            method: req.method().to_string(),
            path_and_query: req
                .uri()
                .path_and_query()
                .map_or_else(|| req.uri().path().to_string(), |p| p.to_string()),
            authorization: h.get(AUTHORIZATION).map(header_text),
            accept: h.get_all(ACCEPT).iter().map(header_text).collect(),
            range: h.get(RANGE).map(header_text),
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let (scheme, token) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let (scheme, b64) = headers.get(AUTHORIZATION)?.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), pass.to_string()))
}

fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    let query = req.uri().query().unwrap_or("");
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn query_param(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
}

/// CDN URL signature for a digest.
fn sign(secret: &str, digest: &str) -> String {
    hex::encode(Sha256::digest(format!("{secret}:{digest}")))[..24].to_string()
}

fn rfc3339_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// Registry

enum Route<'a> {
    Base,
    Token,
    Manifest { name: &'a str, reference: &'a str },
    Blob { name: &'a str, digest: &'a str },
    Tags { name: &'a str },
    Referrers { name: &'a str, digest: &'a str },
    Other,
}

/// Splits `/v2/<name>/...` from the right, since names contain `/`.
fn route(path: &str) -> Route<'_> {
    if path == "/token" {
        return Route::Token;
    }
    if path == "/v2/" || path == "/v2" {
        return Route::Base;
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Route::Other;
    };
    if let Some((name, digest)) = rest.rsplit_once("/referrers/") {
        if !name.is_empty() && !digest.is_empty() && !digest.contains('/') {
            return Route::Referrers { name, digest };
        }
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return if name.is_empty() {
            Route::Other
        } else {
            Route::Tags { name }
        };
    }
    let manifests = rest.rfind("/manifests/").map(|i| (i, "/manifests/".len()));
    let blobs = rest.rfind("/blobs/").map(|i| (i, "/blobs/".len()));
    let is_manifest = match (manifests, blobs) {
        (Some((m, _)), Some((b, _))) => m > b,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (None, None) => return Route::Other,
    };
    let (i, len) = (if is_manifest { manifests } else { blobs }).expect("matched above");
    let (name, reference) = (&rest[..i], &rest[i + len..]);
    if name.is_empty() || reference.is_empty() || reference.contains('/') {
        Route::Other
    } else if is_manifest {
        Route::Manifest { name, reference }
    } else {
        Route::Blob {
            name,
            digest: reference,
        }
    }
}

fn challenge(shared: &Shared, req: &Request<Incoming>, name: Option<&str>) -> String {
    let from_host = lock(&shared.state).faults.contains(&Fault::RealmFromHost);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|_| from_host)
        .map(str::to_string)
        .unwrap_or_else(|| shared.reg_addr.to_string());
    let realm = lock(&shared.state).faults.iter().find_map(|f| match f {
        Fault::Realm(r) => Some(r.clone()),
        _ => None,
    });
    let realm = realm.unwrap_or_else(|| format!("http://{host}/token"));
    let mut value = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
    if let Some(name) = name {
        value.push_str(&format!(",scope=\"repository:{name}:pull\""));
    }
    value
}

fn unauthorized(shared: &Shared, req: &Request<Incoming>, name: Option<&str>, head: bool) -> Response<Body> {
    let resp = oci_error(401, "UNAUTHORIZED", "authentication required", head);
    with_header(resp, "www-authenticate", &challenge(shared, req, name))
}

fn status_code_name(code: u16) -> &'static str {
    match code {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        429 => "TOOMANYREQUESTS",
        503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

/// The injected latency for a registry request (Fault::DelayHeaders), if any.
fn header_delay(shared: &Shared, req: &Request<Incoming>) -> Option<std::time::Duration> {
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    lock(&shared.state).faults.iter().find_map(|f| match f {
        Fault::DelayHeaders { path_contains, delay_ms } if pq.contains(path_contains.as_str()) => {
            Some(std::time::Duration::from_millis(*delay_ms))
        }
        _ => None,
    })
}

/// The gate generation a registry request is held at (Fault::Hold), if it is to be held; counts it.
fn hold(shared: &Shared, req: &Request<Incoming>) -> Option<u64> {
    let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    let gate = {
        let mut st = lock(&shared.state);
        let held = st.faults.iter().any(|f| matches!(f, Fault::Hold { path_contains } if pq.contains(path_contains.as_str())));
        if held {
            st.held += 1;
        }
        held.then_some(st.gate)
    };
    if gate.is_some() {
        shared.logged.notify_waiters();
    }
    gate
}

/// Forgets the tokens past their `expires_in`, so the registry refuses them.
fn forget_expired_tokens(st: &mut State) {
    let now = Instant::now();
    let expired: Vec<String> = st.expiry.iter().filter(|(_, until)| now >= **until).map(|(t, _)| t.clone()).collect();
    for token in expired {
        st.tokens.remove(&token);
        st.expiry.remove(&token);
    }
}

/// Answers a registry request; `None` means "never answer" (Fault::HangHeaders).
fn registry(shared: &Shared, req: &Request<Incoming>) -> Option<Response<Body>> {
    let seen = Seen::from_request(req);
    let head = req.method() == Method::HEAD;
    let path = req.uri().path();
    let fault = {
        let mut st = lock(&shared.state);
        forget_expired_tokens(&mut st);
        st.log.push(seen.clone());
        if path == "/token" {
            st.token_log.push(seen.clone());
        }
        st.faults
            .iter()
            .find(|f| match f {
                Fault::Status { path_contains, .. } | Fault::HangHeaders { path_contains } => {
                    seen.path_and_query.contains(path_contains.as_str())
                }
                Fault::GetStatus { path_contains, .. } => !head && seen.path_and_query.contains(path_contains.as_str()),
                _ => false,
            })
            .cloned()
    };
    shared.logged.notify_waiters();
    let resp = match fault {
        Some(Fault::HangHeaders { .. }) => return None,
        Some(Fault::GetStatus { code, .. }) => with_header(
            oci_error(code, status_code_name(code), if code == 429 { RATE_LIMIT_MESSAGE } else { "injected fault" }, head),
            "retry-after",
            "60",
        ),
        Some(Fault::Status {
            code, retry_after, ..
        }) => {
            let message = if code == 429 { RATE_LIMIT_MESSAGE } else { "injected fault" };
            let resp = oci_error(code, status_code_name(code), message, head);
            match retry_after {
                Some(secs) => with_header(resp, "retry-after", &secs.to_string()),
                None => resp,
            }
        }
        _ => route_registry(shared, req, &seen, head),
    };
    let resp = with_rate_limit(shared, resp);
    Some(with_header(
        resp,
        "docker-distribution-api-version",
        "registry/2.0",
    ))
}

/// Adds Docker Hub's rate-limit headers while [`Fault::RateLimitHeaders`] is on.
fn with_rate_limit(shared: &Shared, resp: Response<Body>) -> Response<Body> {
    let remaining = lock(&shared.state).faults.iter().find_map(|f| match f {
        Fault::RateLimitHeaders { remaining } => Some(*remaining),
        _ => None,
    });
    match remaining {
        Some(r) => {
            let resp = with_header(resp, "ratelimit-limit", "100;w=21600");
            let resp = with_header(resp, "ratelimit-remaining", &format!("{r};w=21600"));
            with_header(resp, "docker-ratelimit-source", "192.0.2.7")
        }
        None => resp,
    }
}

fn route_registry(
    shared: &Shared,
    req: &Request<Incoming>,
    seen: &Seen,
    head: bool,
) -> Response<Body> {
    let get_or_head = matches!(*req.method(), Method::GET | Method::HEAD);
    match route(req.uri().path()) {
        Route::Token if get_or_head => token_endpoint(shared, req, head),
        Route::Base if get_or_head => {
            let valid =
                bearer(req.headers()).is_some_and(|t| lock(&shared.state).tokens.contains_key(t));
            if valid {
                json(200, "{}".into(), head)
            } else {
                unauthorized(shared, req, None, head)
            }
        }
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Tags { name }
        | Route::Referrers { name, .. }
            if !bearer(req.headers()).is_some_and(|t| {
                lock(&shared.state)
                    .tokens
                    .get(t)
                    .is_some_and(|granted| granted.contains(name))
            }) =>
        {
            unauthorized(shared, req, Some(name), head)
        }
        Route::Manifest { name, reference } if get_or_head => {
            manifest(shared, name, reference, &seen.accept, head)
        }
        Route::Blob { digest, .. } if get_or_head => blob(shared, digest, head),
        Route::Tags { name } if get_or_head => tags(shared, name, &query_pairs(req), head),
        Route::Referrers { name, digest } if get_or_head => {
            let list = lock(&shared.state).referrers.get(&(name.to_string(), digest.to_string())).cloned();
            match list {
                Some(list) => {
                    let len = list.len().to_string();
                    let headers = [
                        ("content-type", "application/vnd.oci.image.index.v1+json"),
                        ("content-length", len.as_str()),
                    ];
                    respond(200, &headers, if head { empty() } else { full(list) })
                }
                None => oci_error(404, "NOT_FOUND", "no such route", head),
            }
        }
        Route::Other => oci_error(404, "NOT_FOUND", "no such route", head),
        _ => oci_error(405, "UNSUPPORTED", "the operation is unsupported", head),
    }
}

fn token_endpoint(shared: &Shared, req: &Request<Incoming>, head: bool) -> Response<Body> {
    let scopes: Vec<String> = query_pairs(req)
        .into_iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let denied = || {
        json(
            401,
            r#"{"details":"incorrect username or password"}"#.into(),
            head,
        )
    };
    let mut st = lock(&shared.state);
    let creds_ok = match basic_credentials(req.headers()) {
        None => false,
        Some((user, pass)) if user == st.user && pass == st.pass => true,
        Some(_) => return denied(),
    };
    let mut granted = HashSet::new();
    for scope in &scopes {
        let Some((name, actions)) = scope
            .strip_prefix("repository:")
            .and_then(|s| s.rsplit_once(':'))
        else {
            continue;
        };
        if !actions.split(',').any(|a| a == "pull" || a == "*") {
            continue;
        }
        if st.private.contains(name) && !creds_ok {
            return denied();
        }
        granted.insert(name.to_string());
    }
    st.issued += 1;
    let token = hex::encode(Sha256::digest(format!(
        "{}/token/{}",
        shared.secret, st.issued
    )))[..32]
        .to_string();
    st.tokens.insert(token.clone(), granted);
    let expires_in = st.faults.iter().find_map(|f| match f {
        Fault::TokenExpiresIn(raw) => Some(raw.clone()),
        _ => None,
    });
    let lifetime = match &expires_in {
        None => Some(300),
        Some(raw) => raw.as_deref().and_then(|r| r.parse::<u64>().ok()),
    };
    if let Some(until) = lifetime.and_then(|secs| Instant::now().checked_add(Duration::from_secs(secs))) {
        st.expiry.insert(token.clone(), until);
    }
    drop(st);
    let expires_in = match expires_in {
        None => ",\"expires_in\":300".to_owned(),
        Some(None) => String::new(),
        Some(Some(raw)) => format!(",\"expires_in\":{raw}"),
    };
    let body = format!(
        "{{\"token\":\"{token}\",\"access_token\":\"{token}\"{expires_in},\"issued_at\":\"{}\"}}",
        rfc3339_now()
    );
    json(200, body, head)
}

/// Whether any Accept line (comma-separated, parameters ignored) names `media_type`;
/// a request without Accept takes anything.
fn accepts(accept_lines: &[String], media_type: &str) -> bool {
    accept_lines.is_empty()
        || accept_lines
            .iter()
            .flat_map(|line| line.split(','))
            .any(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .eq_ignore_ascii_case(media_type)
            })
}

fn manifest(
    shared: &Shared,
    name: &str,
    reference: &str,
    accept: &[String],
    head: bool,
) -> Response<Body> {
    let by_tag = !reference.contains(':');
    let (found, faults) = {
        let st = lock(&shared.state);
        let Some(repo) = st.repos.get(name) else {
            return oci_error(
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                head,
            );
        };
        let digest = if by_tag {
            repo.tags.get(reference).cloned()
        } else {
            Some(reference.to_string())
        };
        let mut found = digest.and_then(|d| {
            repo.manifests
                .get(&d)
                .map(|(mt, bytes)| (d, mt.clone(), bytes.clone()))
        });
        let fallback = by_tag && st.faults.contains(&Fault::PlatformFallback);
        if let Some((_, mt, bytes)) = found.clone().filter(|(_, mt, _)| fallback && !accepts(accept, mt)) {
            let is_list = mt == super::images::DOCKER_LIST || mt == super::images::OCI_INDEX;
            let amd64 = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| {
                v["manifests"].as_array()?.iter().find_map(|m| {
                    let p = &m["platform"];
                    (p["os"] == "linux" && p["architecture"] == "amd64")
                        .then(|| m["digest"].as_str().map(String::from))
                        .flatten()
                })
            });
            if let Some(child) = amd64.filter(|_| is_list) {
                found = repo
                    .manifests
                    .get(&child)
                    .map(|(mt, bytes)| (child.clone(), mt.clone(), bytes.clone()));
            }
        }
        (found, st.faults.clone())
    };
    if head && faults.contains(&Fault::NoManifestHead) {
        return oci_error(405, "UNSUPPORTED", "HEAD is not supported here", head);
    }
    let Some((mut digest, mut media_type, mut bytes)) = found else {
        return oci_error(404, "MANIFEST_UNKNOWN", "manifest unknown", head);
    };
    let convert = by_tag
        && faults.contains(&Fault::Schema1OnTheFly)
        && media_type == super::images::DOCKER_MANIFEST
        && !accepts(accept, &media_type)
        && accepts(accept, super::schema1::SCHEMA1_SIGNED);
    if convert {
        let Some(payload) = super::schema1::converted_payload(name, reference, &bytes) else {
            return oci_error(500, "UNKNOWN", "cannot convert", head);
        };
        digest = super::schema1::digest(&payload);
        media_type = super::schema1::SCHEMA1_SIGNED.to_string();
        bytes = Bytes::from(super::schema1::sign(&payload));
    }
    if !accepts(accept, &media_type) {
        let message = format!("manifest of type {media_type} not in the Accept header");
        return oci_error(404, "MANIFEST_UNKNOWN", &message, head);
    }
    let content_type = faults
        .iter()
        .find_map(|f| match f {
            Fault::ManifestContentType(ct) => Some(ct.clone()),
            _ => None,
        })
        .unwrap_or(media_type);
    let (len, etag) = (bytes.len().to_string(), format!("\"{digest}\""));
    let headers = [
        ("content-type", content_type.as_str()),
        ("content-length", len.as_str()),
        ("docker-content-digest", digest.as_str()),
        ("etag", etag.as_str()),
    ];
    respond(200, &headers, if head { empty() } else { full(bytes) })
}

fn blob(shared: &Shared, digest: &str, head: bool) -> Response<Body> {
    let (size, other_host, base) = {
        let st = lock(&shared.state);
        let base = st.faults.iter().find_map(|f| match f {
            Fault::RedirectBlobsTo(base) => Some(base.clone()),
            _ => None,
        });
        (
            st.blobs.get(digest).map(Bytes::len),
            st.faults.contains(&Fault::RedirectToOtherHost),
            base,
        )
    };
    let Some(size) = size else {
        return oci_error(404, "BLOB_UNKNOWN", "blob unknown to registry", head);
    };
    if head {
        let len = size.to_string();
        let headers = [
            ("content-type", "application/octet-stream"),
            ("content-length", len.as_str()),
            ("docker-content-digest", digest),
        ];
        return respond(200, &headers, empty());
    }
    let host = if other_host { "localhost" } else { "127.0.0.1" };
    let base = base.unwrap_or_else(|| format!("http://{host}:{}", shared.cdn_addr.port()));
    let location = format!("{base}/blobs/{digest}?sig={}", sign(&shared.secret, digest));
    respond(
        307,
        &[
            ("location", location.as_str()),
            ("docker-content-digest", digest),
        ],
        empty(),
    )
}

fn tags(shared: &Shared, name: &str, query: &[(String, String)], head: bool) -> Response<Body> {
    let all: Vec<String> = match lock(&shared.state).repos.get(name) {
        Some(repo) => repo.tags.keys().cloned().collect(),
        None => {
            return oci_error(
                404,
                "NAME_UNKNOWN",
                "repository name not known to registry",
                head,
            )
        }
    };
    if lock(&shared.state).faults.contains(&Fault::TagsUnpaged) {
        let reversed: Vec<String> = all.into_iter().rev().collect();
        let body = serde_json::json!({"name": name, "tags": reversed}).to_string();
        return json(200, body, head);
    }
    let last = query_param(query, "last");
    let n = query_param(query, "n").and_then(|n| n.parse::<usize>().ok());
    let page_size = lock(&shared.state).faults.iter().find_map(|f| match f {
        Fault::TagsPageSize(size) => Some(*size),
        _ => None,
    });
    let n = match (n, page_size) {
        (Some(n), Some(size)) => Some(n.min(size)),
        (n, size) => n.or(size),
    };
    let mut page: Vec<String> = all
        .into_iter()
        .filter(|t| last.as_ref().is_none_or(|l| t > l))
        .collect();
    let mut link = None;
    if let Some(n) = n {
        let more = page.len() > n;
        page.truncate(n);
        if more {
            if let Some(l) = page.last() {
                link = Some(format!(
                    "</v2/{name}/tags/list?last={l}&n={n}>; rel=\"next\""
                ));
            }
        }
    }
    let resp = json(
        200,
        serde_json::json!({"name": name, "tags": page}).to_string(),
        head,
    );
    match link {
        Some(link) => with_header(resp, "link", &link),
        None => resp,
    }
}

// ---------------------------------------------------------------------------
// CDN

fn s3_error(status: u16, code: &str, head: bool) -> Response<Body> {
    let body =
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code></Error>");
    let len = body.len().to_string();
    let headers = [
        ("content-type", "application/xml"),
        ("content-length", len.as_str()),
    ];
    respond(status, &headers, if head { empty() } else { full(body) })
}

enum ByteRange {
    Whole,
    Part(usize, usize), // inclusive
    Unsatisfiable,
}

/// A single `bytes=a-b`, `bytes=a-` or `bytes=-n`; anything else serves the whole blob.
fn parse_range(value: Option<&str>, total: usize) -> ByteRange {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return ByteRange::Whole;
    };
    let Some((a, b)) = spec.split_once('-') else {
        return ByteRange::Whole;
    };
    if spec.contains(',') {
        return ByteRange::Whole;
    }
    let (start, end) = match (
        a.trim().parse::<usize>().ok(),
        b.trim().parse::<usize>().ok(),
    ) {
        (Some(a), Some(b)) => (a, b.min(total.saturating_sub(1))),
        (Some(a), None) if b.trim().is_empty() => (a, total.saturating_sub(1)),
        (None, Some(n)) if a.trim().is_empty() && n > 0 => {
            (total.saturating_sub(n), total.saturating_sub(1))
        }
        _ => return ByteRange::Whole,
    };
    if total == 0 || start >= total || start > end {
        ByteRange::Unsatisfiable
    } else {
        ByteRange::Part(start, end)
    }
}

fn cdn(shared: &Shared, req: &Request<Incoming>, cut: &Arc<CutSwitch>) -> Response<Body> {
    let head = req.method() == Method::HEAD;
    let digest = req
        .uri()
        .path()
        .strip_prefix("/blobs/")
        .unwrap_or("")
        .to_string();
    let (blob, faults) = {
        let mut st = lock(&shared.state);
        st.cdn_log.push(Seen::from_request(req));
        (st.blobs.get(&digest).cloned(), st.faults.clone())
    };
    shared.logged.notify_waiters();
    if req.headers().contains_key(AUTHORIZATION) {
        // Like S3 presigned URLs: a second auth mechanism is a bad request.
        return s3_error(400, "InvalidArgument", head);
    }
    if digest.is_empty() {
        return s3_error(404, "NoSuchKey", head);
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return s3_error(405, "MethodNotAllowed", head);
    }
    if query_param(&query_pairs(req), "sig").as_deref()
        != Some(sign(&shared.secret, &digest).as_str())
    {
        return s3_error(403, "SignatureDoesNotMatch", head);
    }
    let Some(mut data) = blob else {
        return s3_error(404, "NoSuchKey", head);
    };
    if faults.contains(&Fault::CorruptBlobs) {
        data = data.iter().map(|b| b ^ 0xA5).collect::<Vec<u8>>().into();
    }
    let total = data.len();
    let (status, data, content_range) = match parse_range(
        req.headers().get(RANGE).and_then(|v| v.to_str().ok()),
        total,
    ) {
        ByteRange::Whole => (200, data, None),
        ByteRange::Part(a, b) => (
            206,
            data.slice(a..=b),
            Some(format!("bytes {a}-{b}/{total}")),
        ),
        ByteRange::Unsatisfiable => {
            let resp = s3_error(416, "InvalidRange", head);
            return with_header(resp, "content-range", &format!("bytes */{total}"));
        }
    };
    let len = data.len().to_string();
    let etag = format!("\"{digest}\"");
    let mut headers = vec![
        ("content-type", "application/octet-stream"),
        ("content-length", len.as_str()),
        ("accept-ranges", "bytes"),
        ("etag", etag.as_str()),
    ];
    if let Some(range) = &content_range {
        headers.push(("content-range", range.as_str()));
    }
    if head {
        return respond(status, &headers, empty());
    }
    if faults.contains(&Fault::EndlessBlobs) {
        // Chunked: no Content-Length, and no end.
        let piece = if data.is_empty() { Bytes::from_static(b"\0") } else { data.slice(..data.len().min(64 * 1024)) };
        let stream = futures_util::stream::repeat_with(move || Ok::<_, io::Error>(Frame::data(piece.clone())));
        return respond(200, &[("content-type", "application/octet-stream")], BodyExt::boxed_unsync(StreamBody::new(stream)));
    }
    let path_and_query = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("");
    let hold_at = faults.iter().find_map(|f| match f {
        Fault::HoldBlobsAfter { bytes, path_contains } if path_and_query.contains(path_contains.as_str()) => {
            Some((*bytes, shared.release.subscribe()))
        }
        _ => None,
    });
    let slow = faults.iter().find_map(|f| match f {
        Fault::SlowBlobs { chunk, delay_ms } => {
            Some(((*chunk).max(1), Duration::from_millis(*delay_ms)))
        }
        _ => None,
    });
    let cut_after = faults.iter().find_map(|f| match f {
        Fault::CutBlobsAfter(n) if *n < data.len() => Some(*n),
        _ => None,
    });
    respond(
        status,
        &headers,
        blob_body(data, slow, cut_after.map(|n| (n, cut.clone())), hold_at),
    )
}

/// Streams `data` (in 64 KiB chunks, or as `slow` says), optionally stopping
/// after `cut.0` bytes and then having the connection dropped, or holding the rest
/// after `hold.0` bytes until `hold.1` opens.
fn blob_body(
    data: Bytes,
    slow: Option<(usize, Duration)>,
    cut: Option<(usize, Arc<CutSwitch>)>,
    hold: Option<(usize, tokio::sync::watch::Receiver<bool>)>,
) -> Body {
    struct St {
        data: Bytes,
        pos: usize,
        limit: usize,
        chunk: usize,
        delay: Option<Duration>,
        cut: Option<Arc<CutSwitch>>,
        hold: Option<(usize, tokio::sync::watch::Receiver<bool>)>,
    }
    let st = St {
        limit: cut.as_ref().map_or(data.len(), |(n, _)| *n),
        data,
        pos: 0,
        chunk: slow.map_or(64 * 1024, |(c, _)| c),
        delay: slow.map(|(_, d)| d),
        cut: cut.map(|(_, c)| c),
        hold,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.pos >= st.limit {
            if let Some(cut) = &st.cut {
                // hyper polls the body again only after buffering the previous
                // chunk, so everything up to the cut is in its write buffer;
                // the next socket flush fires the switch. Never end the body.
                cut.armed.store(true, Ordering::SeqCst);
                std::future::pending::<()>().await;
            }
            return None;
        }
        if let (Some(delay), true) = (st.delay, st.pos > 0) {
            tokio::time::sleep(delay).await;
        }
        let mut end = (st.pos + st.chunk).min(st.limit);
        if let Some((at, release)) = &mut st.hold {
            if st.pos >= *at {
                let _ = release.wait_for(|open| *open).await;
                st.hold = None;
            } else {
                end = end.min(*at);
            }
        }
        let frame = Frame::data(st.data.slice(st.pos..end));
        st.pos = end;
        Some((Ok::<_, io::Error>(frame), st))
    });
    BodyExt::boxed_unsync(StreamBody::new(stream))
}
