//! The asker's side of the member-to-member API: `GET /_fleet/v1/blobs/<digest>` of a member,
//! from an offset, or its `HEAD`; and `GET /_fleet/v1/tags/<tag>` ([`tag`]); each with the fleet's
//! secret, the hop header, the upstream and repository, and the client's request id.

mod tag;

use std::time::Duration;

use bytes::Bytes;
use http::request::Builder;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::auth::{HOP_HEADER, REPOSITORY_HEADER, SECRET_HEADER, UPSTREAM_HEADER};
use super::member::MemberId;
use super::settings::Secret;
use crate::logs::REQUEST_ID_HEADER;
use crate::oci::{Digest, RepositoryName};
use crate::upstream::content_length;

/// How long connecting to a member may take: members are close, and a member that doesn't
/// answer within this is taken for down (a refused connection is down at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Where the body of a member's answer starts in the blob (the owner's `http::fleet` sets it).
pub const OFFSET_HEADER: &str = "x-regcache-offset";

/// Whether the owner had the blob stored (`stored`) or streams it from its fill (`fill`); on an
/// error answered about a tag (`error`), that the error is the member's answer, not its failure.
pub const SERVED_HEADER: &str = "x-regcache-served";

pub use tag::{PeerTag, TagAsk};

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
        let mut req = self.blob_request(Method::GET, member, ask);
        if offset > 0 {
            req = req.header(header::RANGE, format!("bytes={offset}-"));
        }
        let resp = self.send(req, header_timeout).await?;
        if !matches!(resp.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT) {
            return Err(PeerError::Down(format!("answered {}", resp.status())));
        }
        let starts_at = resp.headers().get(OFFSET_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        if starts_at != Some(offset) {
            return Err(PeerError::Down(format!("answered from {starts_at:?}, not from {offset}")));
        }
        let length = content_length(resp.headers());
        let total = length.map(|l| l.saturating_add(offset));
        let stored = resp.headers().get(SERVED_HEADER).is_some_and(|v| v == "stored");
        Ok(PeerBlob { total, stored, body: resp.into_body() })
    }

    /// The size of `ask`'s blob as `member` knows it (stored, from its fill, or from its
    /// upstream's `HEAD`), its headers within `header_timeout`. A member that doesn't know the size
    /// said nothing the upstream wouldn't say better: `Answered`.
    pub async fn head(&self, member: &MemberId, ask: &BlobAsk, header_timeout: Duration) -> Result<u64, PeerError> {
        let resp = self.send(self.blob_request(Method::HEAD, member, ask), header_timeout).await?;
        content_length(resp.headers()).ok_or(PeerError::Answered(resp.status()))
    }

    /// The request for `ask`'s blob.
    fn blob_request(&self, method: Method, member: &MemberId, ask: &BlobAsk) -> Builder {
        let path = format!("/_fleet/v1/blobs/{}", ask.digest);
        self.request(method, member, &path, &ask.upstream, &ask.repo, ask.request_id.as_deref())
    }

    /// Send `req`: its answer once its headers are in, within `header_timeout`, if a success (2xx,
    /// 304). Unreachable, too slow, a 5xx or a refusal of the secret (401, 403; or 408, 429): the
    /// member is `Down`; another 4xx, or an error marked `x-regcache-served: error`, is its answer
    /// about what was asked.
    async fn send(&self, req: Builder, header_timeout: Duration) -> Result<Response<Incoming>, PeerError> {
        let req = req.body(Empty::new()).map_err(|e| PeerError::Down(e.to_string()))?;
        let resp = match tokio::time::timeout(header_timeout, self.client.request(req)).await {
            Err(_) => return Err(PeerError::Down(format!("no answer within {header_timeout:?}"))),
            Ok(Err(e)) => return Err(PeerError::Down(e.to_string())),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        // An error the member marks as its answer (its upstream's, e.g. unavailable) says it is up.
        let its_answer = resp.headers().get(SERVED_HEADER).is_some_and(|v| v == "error");
        if its_answer || (status.is_client_error() && !matches!(status.as_u16(), 401 | 403 | 408 | 429)) {
            return Err(PeerError::Answered(status));
        }
        if !(status.is_success() || status == StatusCode::NOT_MODIFIED) {
            return Err(PeerError::Down(format!("answered {status}")));
        }
        Ok(resp)
    }

    /// A request of `method` for `path` on `member`, with the member API's headers.
    fn request(&self, method: Method, member: &MemberId, path: &str, upstream: &str, repo: &RepositoryName, request_id: Option<&str>) -> Builder {
        let mut req = Request::builder()
            .method(method)
            .uri(member.url(path))
            .header(SECRET_HEADER, self.secret.as_str())
            .header(HOP_HEADER, "1")
            .header(UPSTREAM_HEADER, upstream)
            .header(REPOSITORY_HEADER, repo.as_str());
        if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
            req = req.header(REQUEST_ID_HEADER, id);
        }
        req
    }
}
