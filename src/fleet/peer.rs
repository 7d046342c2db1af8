//! The asker's side of the member-to-member API: `GET /_fleet/v1/blobs/<digest>` of a member,
//! from an offset, with the fleet's secret, the hop header and the client's request id; and
//! `GET /_fleet/v1/ping`, the probe of a member taken for down.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::auth::{HOP_HEADER, REPOSITORY_HEADER, SECRET_HEADER, UPSTREAM_HEADER};
use crate::logs::REQUEST_ID_HEADER;
use super::member::MemberId;
use super::settings::Secret;
use crate::oci::{Digest, RepositoryName};
use crate::upstream::{content_length, RateLimit};

/// How long connecting to a member may take: members are close, and a member that doesn't
/// answer within this is taken for down (a refused connection is down at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Where the body of a member's answer starts in the blob (the owner's `http::fleet` sets it).
pub const OFFSET_HEADER: &str = "x-regcache-offset";

/// Whether the owner had the blob stored (`stored`) or streams it from its fill (`fill`).
pub const SERVED_HEADER: &str = "x-regcache-served";

/// What a fill asks a member for.
#[derive(Clone, Debug)]
pub struct BlobAsk {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository, as the client named it.
    pub repo: RepositoryName,
    /// The blob.
    pub digest: Digest,
    /// The client's request id, passed on.
    pub request_id: Option<String>,
}

/// Why a member gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// It could not be reached, timed out, failed (5xx) or answered nonsense: take it for down
    /// and ask the next.
    #[error("{0}")]
    Down(String),
    /// It answered about the blob (a 4xx from its upstream, e.g. 404): the upstream's answer is
    /// what the fill needs, so it asks the upstream itself.
    #[error("member answered {0}")]
    Answered(StatusCode),
}

/// A member's answer: the blob's size when known, and the body from the asked offset.
pub struct PeerBlob {
    /// The whole blob's size, when the member knows it.
    pub total: Option<u64>,
    /// Whether the member had the blob stored (else it streams it from its fill).
    pub stored: bool,
    /// The rate-limit headers of the upstream response the member's fill got (none when it had
    /// the blob stored), passed on to this node's clients as if it had asked the upstream.
    pub rate_limit: RateLimit,
    /// The bytes from the offset asked.
    pub body: Incoming,
}

/// The HTTP client for members. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    secret: Secret,
}

impl PeerClient {
    /// A client that sends `secret`.
    pub fn new(secret: Secret) -> PeerClient {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(http);
        PeerClient { client, secret }
    }

    /// `ask` of `member`, from byte `offset`, its headers within `header_timeout`.
    pub async fn get(&self, member: &MemberId, ask: &BlobAsk, offset: u64, header_timeout: Duration) -> Result<PeerBlob, PeerError> {
        let request = self.request(member, ask, offset)?;
        let resp = match tokio::time::timeout(header_timeout, self.client.request(request)).await {
            Err(_) => return Err(PeerError::Down(format!("no answer within {header_timeout:?}"))),
            Ok(Err(e)) => return Err(PeerError::Down(e.to_string())),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 408 | 429) {
            return Err(PeerError::Answered(status));
        }
        if !matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT) {
            return Err(PeerError::Down(format!("answered {status}")));
        }
        let starts_at = resp.headers().get(OFFSET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if starts_at != Some(offset) {
            return Err(PeerError::Down(format!("answered from {starts_at:?}, not from {offset}")));
        }
        let length = content_length(resp.headers());
        let total = length.map(|l| l.saturating_add(offset));
        let stored = resp.headers().get(SERVED_HEADER).is_some_and(|v| v == "stored");
        let rate_limit = RateLimit::from_headers(resp.headers());
        Ok(PeerBlob { total, stored, rate_limit, body: resp.into_body() })
    }

    /// Probe `member` (`GET /_fleet/v1/ping` with the secret) within `timeout`: `Ok` when it
    /// answered 2xx, or 404 (a member of an older version, without the probe, that answers).
    pub async fn ping(&self, member: &MemberId, timeout: Duration) -> Result<(), PeerError> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(member.url("/_fleet/v1/ping"))
            .header(SECRET_HEADER, self.secret.as_str())
            .header(HOP_HEADER, "1")
            .body(Empty::new())
            .map_err(|e| PeerError::Down(e.to_string()))?;
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(PeerError::Down(format!("no answer within {timeout:?}"))),
            Ok(Err(e)) => Err(PeerError::Down(e.to_string())),
            Ok(Ok(resp)) if resp.status().is_success() || resp.status() == StatusCode::NOT_FOUND => Ok(()),
            Ok(Ok(resp)) => Err(PeerError::Down(format!("answered {}", resp.status()))),
        }
    }

    fn request(&self, member: &MemberId, ask: &BlobAsk, offset: u64) -> Result<Request<Empty<Bytes>>, PeerError> {
        let bad = |e: http::Error| PeerError::Down(e.to_string());
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(member.url(&format!("/_fleet/v1/blobs/{}", ask.digest)))
            .header(SECRET_HEADER, self.secret.as_str())
            .header(HOP_HEADER, "1")
            .header(UPSTREAM_HEADER, ask.upstream.as_str())
            .header(REPOSITORY_HEADER, ask.repo.as_str());
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        if let Some(id) = ask.request_id.as_deref().and_then(|id| HeaderValue::from_str(id).ok()) {
            req = req.header(REQUEST_ID_HEADER, id);
        }
        req.body(Empty::new()).map_err(bad)
    }
}
