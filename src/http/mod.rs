//! The HTTP side: the accept loop with graceful shutdown, TLS, routing, short handlers, and the
//! one error mapping. It only serves: what it serves with is built by `crate::app`.

mod error;
mod fleet;
mod range;
mod route;
mod server;
mod status;
mod tls;
mod watch;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::access::Gate;
use crate::cache::{Answered, BlobAnswer, BodyFrom, Cache, ManifestAnswer, ReferrerList, ServedFrom, TagList};
use crate::config::Connections;
use crate::logs::{RequestId, REQUEST_ID_HEADER};
use crate::metrics::{Metrics, RouteLabel};
use crate::oci::{is_registry_host, AcceptList, ErrorCode, RepositoryName, UpstreamRepo};
use crate::upstream::{content_length, Upstream};
use error::{rejected, rescue, route_error, Resource};
pub use range::parse_range;
pub use route::{query, route, Query, RepoRoute, Route, RouteError, RouteErrorKind};
pub use server::{bind_local, serve, serve_admin, serve_local};
pub use tls::{load_certified_key, Tls, TlsError};

/// The response body type.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;
/// A response.
pub type Resp = Response<Body>;

/// How a request was answered, as recorded for the request log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogOutcome {
    /// A cache outcome.
    Cache(crate::cache::Answered),
    /// No cache involved (`/v2/`).
    Local,
    /// An error response.
    Error,
}

/// The upstream a request went to (its configured name), for the request log.
#[derive(Clone, Debug)]
struct LogUpstream(String);

/// A whole body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The answer to a `HEAD`: the headers `GET` would send, with the `Content-Length` of the body it
/// would send, and no body. hyper leaves out the body of a `HEAD` answer over HTTP/1.1 but not over
/// HTTP/2, where DATA frames on a `HEAD` are a protocol error that loses the whole answer.
fn headers_only(resp: Resp) -> Resp {
    let (mut parts, body) = resp.into_parts();
    if !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
            parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    Response::from_parts(parts, full(Bytes::new()))
}

/// The server's application: [`App::handle`] answers one request with the parts the composition
/// root (`crate::app`) built.
pub struct App {
    cache: Cache,
    metrics: Arc<Metrics>,
    gate: Gate,
    tls: Option<Tls>,
    /// Whether `/metrics` lives on a separate admin listener.
    admin_separate: bool,
    connections: Connections,
    local_socket: std::path::PathBuf,
    /// The fleet this node is a member of, if any.
    fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// What [`App`] serves with, each built once by `crate::app`.
pub struct AppParts {
    /// The cache, on the store and the upstream clients.
    pub cache: Cache,
    /// The metrics everything counts into.
    pub metrics: Arc<Metrics>,
    /// Who may use the mirror.
    pub gate: Gate,
    /// HTTPS for the client listener, if configured.
    pub tls: Option<Tls>,
    /// Whether `/metrics` is served on `admin_listen` instead of the client listener.
    pub admin_separate: bool,
    /// The limits on client connections.
    pub connections: Connections,
    /// The path of the local socket (see [`Surface::Local`]).
    pub local_socket: std::path::PathBuf,
    /// The fleet this node is a member of, if any.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// The repository a request was for, as its upstream names it: counted for the status page's top
/// repositories once its body is done (a response extension from `respond_to` to `handle`).
#[derive(Clone, Debug)]
struct CountedRepo(UpstreamRepo);

/// Which listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Surface {
    /// The registry API for clients (access control applies).
    Main,
    /// `admin_listen`: `/metrics`, the status page and `/healthz` only.
    Admin,
    /// The local socket in the data directory: everything, without access control (who may
    /// connect is decided by the file's permissions).
    Local,
}

impl App {
    /// The application serving with `parts`.
    pub fn new(parts: AppParts) -> Arc<App> {
        let AppParts { cache, metrics, gate, tls, admin_separate, connections, local_socket, fleet } = parts;
        Arc::new(App { cache, metrics, gate, tls, admin_separate, connections, local_socket, fleet })
    }

    /// TLS for the client listener, if configured.
    pub fn tls(&self) -> Option<&Tls> {
        self.tls.as_ref()
    }

    /// The limits on client connections.
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// The path of the local socket (see [`Surface::Local`]).
    pub fn local_socket(&self) -> &std::path::Path {
        &self.local_socket
    }

    /// Who may use the mirror.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Answer one request, and log it once its body is done: one access line with the request's id
    /// (also returned in `X-Request-Id`), the cache's outcome and the upstream involved. Only the
    /// path is logged of the request: never a header (`Authorization`) or the query.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, peer: SocketAddr, surface: Surface) -> Result<Resp, Infallible> {
        let start = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let request_id = RequestId::from_headers(req.headers());
        // A fill this request starts passes the id on to the fleet member it asks, whose log
        // lines then carry it.
        let id = Some(request_id.as_str().to_owned());
        let mut resp = crate::fleet::auth::REQUEST_ID.scope(id, self.respond(req, peer, surface)).await;
        if method == Method::HEAD {
            resp = headers_only(resp);
        }
        resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
        resp.headers_mut().insert(REQUEST_ID_HEADER, request_id.header_value());
        let outcome = resp.extensions().get::<LogOutcome>().copied().unwrap_or(LogOutcome::Local);
        let route = resp.extensions().get::<RouteLabel>().copied().unwrap_or(RouteLabel::Other);
        let upstream = resp.extensions_mut().remove::<LogUpstream>().map(|u| u.0);
        let status = resp.status();
        let metrics = self.metrics.clone();
        let expected = if method == Method::HEAD { Some(0) } else { content_length(resp.headers()) };
        let counted = resp.extensions_mut().remove::<CountedRepo>();
        let from = resp.extensions_mut().remove::<BodyFrom>();
        Ok(resp.map(|body| {
            logged(body, expected, move |bytes, complete| {
                let cache = match outcome {
                    LogOutcome::Cache(o) => Some(o),
                    _ => None,
                };
                metrics.request(route, status.as_u16(), cache, bytes, from.as_ref());
                if let Some(c) = counted {
                    metrics.board().repository(c.0, bytes);
                }
                tracing::info!(
                    request_id = %request_id,
                    %method,
                    %path,
                    status = status.as_u16(),
                    bytes,
                    duration_ms = start.elapsed().as_millis() as u64,
                    cache = cache.map(Answered::as_str),
                    upstream = upstream.as_deref(),
                    client = %peer,
                    complete,
                    "request"
                );
            })
        }))
    }

    async fn respond(&self, req: Request<Incoming>, peer: SocketAddr, surface: Surface) -> Resp {
        let route = match route(req.method(), req.uri().path()) {
            Ok(r) => r,
            Err(e) => return route_error(&e),
        };
        let label = route.label();
        let mut resp = match (surface, &route) {
            // Members authenticate with the fleet's secret, not as clients.
            (Surface::Main, Route::FleetBlob(digest)) => self.fleet_blob(&req, digest).await,
            (Surface::Main, Route::FleetTag(tag)) => self.fleet_tag(&req, tag).await,
            (Surface::Main, Route::FleetPing) => self.fleet_ping(&req),
            (Surface::Admin | Surface::Local, Route::FleetBlob(_) | Route::FleetTag(_) | Route::FleetPing) => {
                route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, "not served on this address"))
            }
            (Surface::Admin | Surface::Local, Route::Metrics | Route::Status | Route::StatusJson | Route::Healthz)
            | (Surface::Main, Route::Healthz) => self.local(&route),
            (Surface::Local, _) => self.respond_to(req, route).await,
            (Surface::Main, Route::Metrics) if !self.admin_separate => self.local(&route),
            // The status page is served where /metrics is; on the client listener it names
            // repositories and digests, so it asks for what the registry API asks for.
            (Surface::Main, Route::Status | Route::StatusJson) if !self.admin_separate => {
                match self.gate.authenticates(peer.ip(), req.headers().get(header::AUTHORIZATION)).await {
                    Ok(()) => self.local(&route),
                    Err(why) => rejected(why),
                }
            }
            (Surface::Admin, _) | (Surface::Main, Route::Metrics | Route::Status | Route::StatusJson) => {
                route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, "not served on this address"))
            }
            (Surface::Main, _) => match self.gate.authenticates(peer.ip(), req.headers().get(header::AUTHORIZATION)).await {
                Ok(()) => self.respond_to(req, route).await,
                Err(why) => rejected(why),
            },
        };
        resp.extensions_mut().insert(label);
        resp
    }

    /// `/healthz`, `/metrics` and the status page.
    fn local(&self, route: &Route) -> Resp {
        match route {
            Route::StatusJson => text(status::json(&self.status()), "application/json"),
            Route::Status => {
                let mut r = text(status::html(&self.status()), "text/html; charset=utf-8");
                r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                r
            }
            Route::Metrics => {
                let store = self.cache.store();
                let readers = self.cache.fills().readers();
                let now = crate::metrics::Now {
                    fill_readers: readers.total,
                    fill_coalesced: readers.coalesced,
                    max_size: store.max_size(),
                    // tmp/ is in the data directory, on its file system.
                    data_dir: crate::metrics::FsSpace::of(store.tmp_dir()),
                };
                let body = self.metrics.render(&now);
                text(body, "text/plain; version=0.0.4; charset=utf-8")
            }
            _ => text("ok\n", "text/plain"),
        }
    }

    /// The upstream a repository request goes to, and the name to ask it for: containerd's `?ns=`,
    /// else a registry host as the first path component (`/v2/ghcr.io/org/app/…`), else the first
    /// upstream. A registry that isn't configured is a 404 and causes no connection.
    fn select(&self, ns: Option<&str>, name: RepositoryName) -> Result<(Arc<Upstream>, RepositoryName), RouteError> {
        let unknown = |host: &str| {
            RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, format!("registry {host:?} is not mirrored here"))
        };
        if let Some(ns) = ns {
            return self.cache.upstream_for(Some(ns)).map(|u| (u.clone(), name)).ok_or_else(|| unknown(ns));
        }
        let (first, rest) = name.as_str().split_once('/').unwrap_or((name.as_str(), ""));
        if is_registry_host(first) {
            let up = self.cache.upstream_for(Some(first)).ok_or_else(|| unknown(first))?;
            return Ok((up.clone(), rest.parse()?));
        }
        let up = self.cache.upstream_for(None).ok_or_else(|| unknown("(none configured)"))?;
        Ok((up.clone(), name))
    }

    async fn respond_to(&self, req: Request<Incoming>, route: Route) -> Resp {
        let head = req.method() == Method::HEAD;
        let q = match query(req.uri().query()) {
            Ok(q) => q,
            Err(e) => return route_error(&e),
        };
        let (name, what) = match route {
            Route::Repo(name, what) => (name, what),
            _ => return base(),
        };
        let (up, name) = match self.select(q.ns.as_deref(), name) {
            Ok(x) => x,
            Err(e) => return route_error(&e),
        };
        let counted = CountedRepo(up.repo(&name));
        let mut resp = match what {
            RepoRoute::Manifest(reference) => {
                let accept = AcceptList::from_headers(req.headers());
                match self.cache.manifest(&up, &name, &reference, &accept, head).await {
                    Ok(a) => manifest_response(a),
                    Err(e) => rescue(&e, Resource::Manifest),
                }
            }
            RepoRoute::Blob(digest) => {
                let range = req.headers().get(header::RANGE).and_then(|v| v.to_str().ok()).and_then(parse_range);
                match self.cache.blob(&up, &name, &digest, range, head).await {
                    Ok(a) => blob_response(a, &digest),
                    Err(e) => rescue(&e, Resource::Blob),
                }
            }
            RepoRoute::Tags => match self.cache.tags(&up, &name, q.n, q.last.as_deref()).await {
                Ok(t) => tags_response(t, req.uri().path(), q.n, q.ns.as_deref()),
                Err(e) => rescue(&e, Resource::Repository),
            },
            RepoRoute::Referrers(digest) => {
                match self.cache.referrers(&up, &name, &digest, q.artifact_type.as_deref()).await {
                    Ok(list) => referrers_response(list),
                    Err(e) => rescue(&e, Resource::Manifest),
                }
            }
        };
        resp.extensions_mut().insert(counted);
        if q.ns.is_some() {
            if let Ok(v) = HeaderValue::from_str(up.config().name.as_str()) {
                resp.headers_mut().insert("oci-namespace", v);
            }
        }
        resp.extensions_mut().insert(LogUpstream(up.config().name.to_string()));
        resp
    }
}

/// A page of tags, with a `Link` to the next page (on the path the client asked, `n` and `ns` kept).
fn tags_response(t: TagList, client_path: &str, n: Option<u32>, ns: Option<&str>) -> Resp {
    let mut r = json_response(t.body, t.outcome, "application/json");
    if let Some(link) = t.next.as_deref().and_then(|last| next_page_link(client_path, n, last, ns)) {
        r.headers_mut().insert(header::LINK, link);
    }
    t.rate_limit.apply(r.headers_mut());
    r
}

/// A referrers list, saying when the `artifactType` filter was applied.
fn referrers_response(list: ReferrerList) -> Resp {
    let mut r = json_response(list.body, list.outcome, crate::oci::OCI_INDEX);
    if list.filtered {
        r.headers_mut().insert("oci-filters-applied", HeaderValue::from_static("artifactType"));
    }
    r
}

/// `Link: <…/tags/list?last=…&n=…>; rel="next"` for the page after `last`, on the path the client
/// asked (which may carry a registry prefix or `ns`).
fn next_page_link(client_path: &str, n: Option<u32>, last: &str, ns: Option<&str>) -> Option<HeaderValue> {
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    params.append_pair("last", last);
    if let Some(n) = n {
        params.append_pair("n", &n.to_string());
    }
    if let Some(ns) = ns {
        params.append_pair("ns", ns);
    }
    HeaderValue::from_str(&format!("<{client_path}?{}>; rel=\"next\"", params.finish())).ok()
}

/// A generated JSON answer (tag list, referrers).
fn json_response(body: Bytes, outcome: crate::cache::Answered, content_type: &'static str) -> Resp {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.extensions_mut().insert(BodyFrom::One(ServedFrom::of(outcome)));
    with_outcome(r, outcome)
}

/// Record how a response was answered; a stale answer also tells the client with `Warning`.
fn with_outcome(mut r: Resp, outcome: crate::cache::Answered) -> Resp {
    if outcome == crate::cache::Answered::Stale {
        r.headers_mut().insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    }
    r.extensions_mut().insert(LogOutcome::Cache(outcome));
    r
}

/// `Docker-Content-Digest` and the `ETag` made from it.
fn digest_headers(h: &mut http::HeaderMap, digest: &crate::oci::Digest) {
    let digest = digest.to_string();
    if let Ok(v) = HeaderValue::from_str(&digest) {
        h.insert("docker-content-digest", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{digest}\"")) {
        h.insert(header::ETAG, v);
    }
}

fn base() -> Resp {
    text("{}", "application/json")
}

fn text(body: impl Into<Bytes>, content_type: &'static str) -> Resp {
    let mut r = Response::new(full(body));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.extensions_mut().insert(LogOutcome::Local);
    r
}

/// A manifest answer (`handle` empties the body of a `HEAD`, keeping its headers).
fn manifest_response(a: ManifestAnswer) -> Resp {
    let body = full(a.bytes.unwrap_or_default());
    let mut r = Response::new(body);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.media_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    digest_headers(h, &a.digest);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(a.size));
    a.rate_limit.apply(h);
    r.extensions_mut().insert(BodyFrom::One(a.from));
    with_outcome(r, a.outcome)
}

/// A blob answer; what its body sends is counted by where it came from (`a.from`).
fn blob_response(a: BlobAnswer, digest: &crate::oci::Digest) -> Resp {
    let body = match a.body {
        Some(reader) => BodyExt::boxed_unsync(StreamBody::new(futures_util::stream::unfold(reader, |mut r| async move {
            r.next_chunk().await.map(|chunk| (chunk.map(Frame::data), r))
        }))),
        None => full(Bytes::new()),
    };
    let mut r = Response::new(body);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    digest_headers(h, digest);
    a.rate_limit.apply(h);
    match (a.range, a.size) {
        // `RangeRequest::resolve` made it: start < end <= size.
        (Some((start, end)), Some(size)) => {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let h = r.headers_mut();
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
                h.insert(header::CONTENT_RANGE, v);
            }
        }
        (_, Some(size)) => {
            r.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(size));
        }
        _ => {}
    }
    r.extensions_mut().insert(a.from);
    with_outcome(r, a.outcome)
}

/// A body that counts what it sends and calls `done(bytes, complete)` once, when it ends or is
/// dropped (a client that went away). Complete means every byte announced was sent (hyper stops
/// polling a body once its `Content-Length` is reached) or the body said it ended.
struct Logged<F: FnOnce(u64, bool)> {
    inner: Body,
    bytes: u64,
    expected: Option<u64>,
    complete: bool,
    done: Option<F>,
}

fn logged<F: FnOnce(u64, bool) + Send + Sync + Unpin + 'static>(inner: Body, expected: Option<u64>, done: F) -> Body {
    Logged { inner, bytes: 0, expected, complete: false, done: Some(done) }.boxed_unsync()
}

impl<F: FnOnce(u64, bool)> Drop for Logged<F> {
    fn drop(&mut self) {
        if let Some(done) = self.done.take() {
            let complete = self.complete || self.expected == Some(self.bytes);
            done(self.bytes, complete);
        }
    }
}

impl<F: FnOnce(u64, bool) + Unpin> hyper::body::Body for Logged<F> {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    self.bytes += d.len() as u64;
                }
                // hyper stops polling a body that says it has ended, so record completion here too.
                if self.inner.is_end_stream() {
                    self.complete = true;
                }
            }
            std::task::Poll::Ready(None) => self.complete = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
