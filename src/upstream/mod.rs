//! The upstream registry client: a pooled hyper client over rustls, token auth, redirects (kept out
//! of the operator's network by [`guard`]), timeouts, and upstream failures as typed
//! [`UpstreamError`]s whose messages are fit for clients (addresses and OS errors go to the log).
//! The registry protocol on top of it (manifest, tag, referrers and blob requests as typed
//! results) is in `registry.rs`.

mod auth;
mod challenge;
pub mod guard;
mod ratelimit;
mod registry;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

use crate::config::UpstreamConfig;
use crate::metrics::Metrics;
use crate::oci::{first_error, Blame, ErrorCode, RegistryHost, RepositoryName, UpstreamRepo};
use crate::singleflight::CallDied;
pub use auth::{parse_token_response, Auth, Token};
pub use challenge::{parse_challenges, Challenge};
use guard::GuardedConnector;
pub use ratelimit::{Quota, RateLimit};
pub use registry::{BlobHead, FetchedManifest, ManifestHead, TagsPage, MAX_MANIFEST};

/// How many redirects regcache follows for one request.
const MAX_REDIRECTS: usize = 5;
/// The most of an upstream error body regcache reads.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// The most of an upstream's own error message regcache passes on.
const MAX_ERROR_MESSAGE: usize = 1024;

/// Why an upstream request failed. Cloneable so one failure can be shared by every waiter.
#[derive(Clone, Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with an error status.
    #[error("upstream answered {status}: {message}")]
    Status {
        /// The upstream's status.
        status: StatusCode,
        /// The OCI code in its body, if any.
        code: Option<ErrorCode>,
        /// Its `Retry-After`, passed on with 429.
        retry_after: Option<HeaderValue>,
        /// Its rate-limit headers, passed on with 429.
        rate_limit: RateLimit,
        /// Its message, or a description.
        message: String,
    },
    /// A connect, response or body timeout.
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// The upstream could not be reached.
    #[error("upstream unreachable: {0}")]
    Connect(String),
    /// The upstream answered something regcache can't use.
    #[error("upstream misbehaved: {0}")]
    Protocol(String),
    /// A body larger than regcache accepts for it.
    #[error("upstream sent a body larger than {0} bytes")]
    TooLarge(usize),
    /// regcache's own work on the request died (a shared call panicked or was cancelled): no
    /// answer, and not the upstream's fault.
    #[error("{0}")]
    Interrupted(#[from] CallDied),
}

impl UpstreamError {
    /// Whether this is an outage rather than an answer: unreachable, timed out, 5xx, 429 or garbage.
    /// Cached content may be served stale when the upstream is unavailable.
    pub fn is_unavailable(&self) -> bool {
        match self {
            UpstreamError::Status { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            UpstreamError::Timeout(_)
            | UpstreamError::Connect(_)
            | UpstreamError::Protocol(_)
            | UpstreamError::TooLarge(_)
            // Not an answer: content regcache has may be served, as in an outage.
            | UpstreamError::Interrupted(_) => true,
        }
    }

    /// Whether the upstream said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, UpstreamError::Status { status, .. } if *status == StatusCode::NOT_FOUND)
    }

    /// Who is to blame: the client when the upstream says the thing does not exist (nothing failed:
    /// there is none of it), regcache when its own work on the request died, else the upstream.
    pub fn blame(&self) -> Blame {
        match self {
            UpstreamError::Status { .. } if self.is_not_found() => Blame::Client,
            UpstreamError::Status { .. }
            | UpstreamError::Timeout(_)
            | UpstreamError::Connect(_)
            | UpstreamError::Protocol(_)
            | UpstreamError::TooLarge(_) => Blame::Upstream,
            UpstreamError::Interrupted(_) => Blame::Internal,
        }
    }
}

type HttpsClient = Client<HttpsConnector<GuardedConnector>, Empty<Bytes>>;

/// The pooled HTTP client of one upstream, with its timeouts. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    name: Arc<str>,
    /// The configured upstream's host, to say in messages whether it or another host failed.
    host: Arc<str>,
    metrics: Arc<Metrics>,
    client: HttpsClient,
    response_timeout: Duration,
    idle_timeout: Duration,
}

/// Why an upstream client can't be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The upstream's `ca_file` isn't readable PEM.
    #[error("upstream {upstream}: ca_file: {error}")]
    CaPem {
        /// The upstream.
        upstream: RegistryHost,
        /// Why.
        error: std::io::Error,
    },
    /// A certificate in the upstream's `ca_file` can't be trusted as a root.
    #[error("upstream {upstream}: ca_file: {error}")]
    CaCert {
        /// The upstream.
        upstream: RegistryHost,
        /// Why.
        error: rustls::Error,
    },
    /// rustls refused its own setup.
    #[error("TLS setup: {0}")]
    Setup(rustls::Error),
}

impl Transport {
    /// A client trusting webpki roots plus the upstream's `ca_file`; HTTP/1.1 and HTTP/2 by ALPN;
    /// connecting only where [`guard`] allows.
    pub fn new(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Transport, ClientError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &cfg.ca_pem {
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|error| ClientError::CaPem { upstream: cfg.name.clone(), error })?;
                roots.add(cert).map_err(|error| ClientError::CaCert { upstream: cfg.name.clone(), error })?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(ClientError::Setup)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = GuardedConnector::new(cfg, |http| {
            http.enforce_http(false);
            http.set_nodelay(true);
            http.set_connect_timeout(Some(cfg.connect_timeout));
        });
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(90)).build(https);
        Ok(Transport {
            name: cfg.name.as_str().into(),
            host: cfg.url.host_str().unwrap_or_default().into(),
            metrics,
            client,
            response_timeout: cfg.response_timeout,
            idle_timeout: cfg.idle_timeout,
        })
    }

    /// Send one request (no redirects followed) and wait for the response headers. A failure is
    /// logged with its address and cause; the error says in words what failed.
    pub async fn send(&self, method: Method, url: &Url, headers: HeaderMap) -> Result<Response<Incoming>, UpstreamError> {
        let what = if url.host_str() == Some(&*self.host) { "the upstream" } else { "the host the upstream sent regcache to" };
        let mut req = Request::builder().method(method).uri(url.as_str()).body(Empty::new()).map_err(|e| {
            tracing::warn!(upstream = %self.name, url = %redact(url), error = %e, "cannot build an upstream request");
            UpstreamError::Protocol(format!("cannot build a request for {what}"))
        })?;
        *req.headers_mut() = headers;
        req.headers_mut().insert(header::USER_AGENT, HeaderValue::from_static(concat!("regcache/", env!("CARGO_PKG_VERSION"))));
        let start = std::time::Instant::now();
        let result = tokio::time::timeout(self.response_timeout, self.client.request(req)).await;
        let status = match &result {
            Ok(Ok(resp)) => resp.status().as_str().to_owned(),
            Ok(Err(_)) => "error".to_owned(),
            Err(_) => "timeout".to_owned(),
        };
        self.metrics.upstream_request(&self.name, &status, start.elapsed());
        if let Ok(Ok(resp)) = &result {
            self.metrics.upstream_quota(&self.name, Quota::from_headers(resp.headers()));
        }
        let e = match result {
            Ok(Ok(resp)) => return Ok(resp),
            Err(_) => {
                tracing::warn!(upstream = %self.name, url = %redact(url), timeout = ?self.response_timeout, "no upstream response in time");
                return Err(UpstreamError::Timeout(format!("no response from {what} within {:?}", self.response_timeout)));
            }
            Ok(Err(e)) => e,
        };
        let cause = error_chain(&e);
        if let Some(blocked) = guard::blocked(&e) {
            tracing::warn!(
                upstream = %self.name, url = %redact(url), reason = %blocked,
                "refused to connect: add the host to the upstream's redirect_hosts if it is meant to be reached"
            );
            return Err(UpstreamError::Connect(
                "the upstream sent regcache to an address in a private network, which it does not connect to".into(),
            ));
        }
        tracing::warn!(upstream = %self.name, url = %redact(url), error = %cause, "upstream request failed");
        Err(if cause.contains("timed out") {
            UpstreamError::Timeout(format!("connecting to {what} timed out"))
        } else if e.is_connect() {
            UpstreamError::Connect(format!("could not connect to {what}"))
        } else {
            UpstreamError::Protocol(format!("the connection to {what} failed"))
        })
    }

    /// Count a token fetch for this upstream.
    pub fn count_token_fetch(&self) {
        self.metrics.token_fetch(&self.name);
    }

    /// The next chunk of `body`, failing if none arrives within the idle timeout.
    pub async fn next_chunk(&self, body: &mut Incoming) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            let frame = tokio::time::timeout(self.idle_timeout, body.frame())
                .await
                .map_err(|_| UpstreamError::Timeout(format!("body idle for {:?}", self.idle_timeout)))?;
            match frame {
                None => return Ok(None),
                Some(Err(e)) => {
                    tracing::warn!(upstream = %self.name, error = %error_chain(&e), "upstream body failed");
                    return Err(UpstreamError::Protocol("the upstream's response body broke off".into()));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            self.metrics.board().from_upstream(data.len() as u64);
                            return Ok(Some(data));
                        }
                    }
                }
            }
        }
    }

    /// The whole body of `resp`, refused (before reading, when it says its length) if it is larger
    /// than `limit` bytes.
    pub async fn read_body(&self, resp: Response<Incoming>, limit: usize) -> Result<Bytes, UpstreamError> {
        if content_length(resp.headers()).is_some_and(|n| n > limit as u64) {
            return Err(UpstreamError::TooLarge(limit));
        }
        let mut body = resp.into_body();
        let mut buf = BytesMut::new();
        while let Some(chunk) = self.next_chunk(&mut body).await? {
            if buf.len() + chunk.len() > limit {
                return Err(UpstreamError::TooLarge(limit));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    }
}

/// The `Content-Length` of a message, if valid.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// A URL for logs: no query (signed CDN URLs carry credentials there), no userinfo.
pub fn redact(url: &Url) -> String {
    format!("{}{}", &url[..url::Position::BeforeUsername], &url[url::Position::BeforeHost..url::Position::AfterPath])
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// One configured upstream registry.
pub struct Upstream {
    config: UpstreamConfig,
    transport: Transport,
    auth: Auth,
    /// Cleared once the upstream answers a manifest `HEAD` with 405 or 501: GET from then on.
    manifest_head: AtomicBool,
}

impl Upstream {
    /// The client for `config`.
    pub fn new(config: UpstreamConfig, metrics: Arc<Metrics>) -> Result<Upstream, ClientError> {
        let transport = Transport::new(&config, metrics)?;
        Ok(Upstream { auth: Auth::new(config.clone()), config, transport, manifest_head: AtomicBool::new(true) })
    }

    /// Its configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Whether to revalidate tags with a manifest `HEAD` (true until the upstream refused one).
    fn answers_manifest_head(&self) -> bool {
        self.manifest_head.load(Ordering::Relaxed)
    }

    /// Remember that this upstream answers no manifest `HEAD` (405 or 501).
    fn note_no_manifest_head(&self) {
        self.manifest_head.store(false, Ordering::Relaxed);
    }

    /// Its transport, for reading bodies.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The name regcache asks the upstream for (see [`RegistryHost::upstream_name`]).
    pub fn upstream_name(&self, repo: &RepositoryName) -> RepositoryName {
        self.config.name.upstream_name(repo)
    }

    /// `repo` on this upstream, as it names it: what the store keys the repository's tags, tag list
    /// and referrers by.
    pub fn repo(&self, repo: &RepositoryName) -> UpstreamRepo {
        UpstreamRepo::on(&self.config.name, repo)
    }

    /// `method /v2/<repo>/<rest>` with auth and redirects; `Ok` only for a 2xx answer.
    pub async fn request(
        &self,
        method: Method,
        repo: &RepositoryName,
        rest: &str,
        headers: HeaderMap,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let repo = self.upstream_name(repo);
        let url = self
            .config
            .url
            .join(&format!("/v2/{repo}/{rest}"))
            .map_err(|e| UpstreamError::Protocol(format!("bad upstream path: {e}")))?;
        let scope = Auth::pull_scope(repo.as_str());
        let mut auth = self.auth.current(&self.transport, &scope).await?;
        let mut retried = false;
        loop {
            let (resp, from_origin) = self.follow(&method, url.clone(), &headers, &auth).await?;
            if resp.status() == StatusCode::UNAUTHORIZED && from_origin && !retried {
                let values = resp.headers().get_all(header::WWW_AUTHENTICATE);
                let challenge = parse_challenges(values.iter().filter_map(|v| v.to_str().ok()));
                if let Some(challenge) = challenge {
                    if let Some(next) = self.auth.answer(&self.transport, challenge, &scope).await? {
                        auth = next;
                        retried = true;
                        continue;
                    }
                }
            }
            return self.check(resp).await;
        }
    }

    /// Send and follow up to five redirects; `Authorization` goes only to the upstream's own origin.
    /// Returns the final response and whether it came from the upstream's origin.
    async fn follow(
        &self,
        method: &Method,
        mut url: Url,
        headers: &HeaderMap,
        auth: &auth::Authorization,
    ) -> Result<(Response<Incoming>, bool), UpstreamError> {
        let mut method = method.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = url.origin() == self.config.url.origin();
            let mut h = headers.clone();
            if same_origin {
                if let Some(v) = self.auth.header(auth) {
                    h.insert(header::AUTHORIZATION, v);
                }
            }
            let resp = self.transport.send(method.clone(), &url, h).await?;
            let status = resp.status();
            let location = resp.headers().get(header::LOCATION).and_then(|l| l.to_str().ok()).map(str::to_owned);
            let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            match (redirect, location) {
                (true, Some(loc)) => {
                    let next = url.join(&loc).map_err(|e| {
                        tracing::warn!(upstream = %self.config.name, from = %redact(&url), error = %e, "unusable redirect");
                        UpstreamError::Protocol("the upstream sent an unusable redirect".into())
                    })?;
                    if !matches!(next.scheme(), "http" | "https") {
                        tracing::warn!(upstream = %self.config.name, to = %redact(&next), "redirect to a non-HTTP URL");
                        return Err(UpstreamError::Protocol("the upstream redirected to a non-HTTP URL".into()));
                    }
                    tracing::debug!(from = %redact(&url), to = %redact(&next), %status, "following redirect");
                    if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                        method = Method::GET;
                    }
                    url = next;
                }
                _ => return Ok((resp, same_origin)),
            }
        }
        Err(UpstreamError::Protocol(format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// `Ok` for a 2xx answer; anything else becomes an [`UpstreamError::Status`].
    async fn check(&self, resp: Response<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp.headers().get(header::RETRY_AFTER).cloned();
        let rate_limit = RateLimit::from_headers(resp.headers());
        let body = self.transport.read_body(resp, MAX_ERROR_BODY).await.unwrap_or_default();
        let (code, upstream_message) = first_error(&body).unwrap_or((None, None));
        let message = match (code, upstream_message) {
            // The upstream's own words say which limit was hit and how to lift it.
            (_, Some(m)) if status == StatusCode::TOO_MANY_REQUESTS => {
                m.chars().filter(|c| !c.is_control()).take(MAX_ERROR_MESSAGE).collect()
            }
            (Some(c), _) => format!("{} ({})", status, c.as_str()),
            (None, _) => status.to_string(),
        };
        Err(UpstreamError::Status { status, code, retry_after, rate_limit, message })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_that_holds_no_usable_certificate_is_a_typed_error_naming_the_upstream() {
        let dir = tempfile::tempdir().unwrap();
        // PEM framing around bytes that are no certificate ("hello").
        std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n").unwrap();
        let text = "[[upstream]]\nname = \"Corp.Example\"\nurl = \"https://corp.example\"\nca_file = \"ca.pem\"\n";
        let config = crate::config::Config::from_toml(text, &Default::default(), dir.path()).unwrap();
        let err = Upstream::new(config.upstreams[0].clone(), Arc::new(Metrics::new())).err().expect("refused");
        assert!(matches!(&err, ClientError::CaCert { upstream, .. } if upstream == "corp.example"), "{err:?}");
        assert!(err.to_string().starts_with("upstream corp.example: ca_file: "), "{err}");
    }
}
