//! `GET /_fleet/v1/tags/<tag>` of a member: what a tag names now, as the member (its owner) knows
//! it or revalidates it, with the manifest's bytes unless it still names the digest the asker has
//! (`If-None-Match`: then `304` and no bytes). The answer is unverified here: the cache verifies
//! it as it would an upstream's.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::{PeerClient, PeerError};
use crate::fleet::member::MemberId;
use crate::oci::{AcceptList, Digest, RepositoryName, Tag};
use crate::upstream::MAX_MANIFEST;

/// What a node asks a member about a tag.
#[derive(Clone, Debug)]
pub struct TagAsk {
    /// The upstream's configured name.
    pub upstream: String,
    /// The repository, as the client named it.
    pub repo: RepositoryName,
    /// The tag.
    pub tag: Tag,
    /// The client's `Accept` list, passed on as it is (the member's answer is for the same kind
    /// of client).
    pub accept: AcceptList,
    /// The digest whose manifest the asker has for the tag, if any: no bytes if it is still that.
    pub known: Option<Digest>,
    /// The client's request id, passed on.
    pub request_id: Option<String>,
}

/// A member's answer about a tag, as it claims it (unverified).
#[derive(Clone, Debug)]
pub struct PeerTag {
    /// The digest it says the tag names (`Docker-Content-Digest`).
    pub digest: Digest,
    /// The `Content-Type` it sent.
    pub content_type: Option<String>,
    /// The manifest's bytes (at most `MAX_MANIFEST`); `None` for "still the digest you know" (304).
    pub bytes: Option<Bytes>,
}

impl PeerClient {
    /// `ask` of `member`: its headers within `header_timeout`, its body (a manifest) within
    /// `body_timeout`.
    pub async fn get_tag(&self, member: &MemberId, ask: &TagAsk, header_timeout: Duration, body_timeout: Duration) -> Result<PeerTag, PeerError> {
        let path = format!("/_fleet/v1/tags/{}", ask.tag);
        let mut req = self.request(Method::GET, member, &path, &ask.upstream, &ask.repo, ask.request_id.as_deref());
        let types = ask.accept.types().join(", ");
        if !types.is_empty() {
            req = req.header(header::ACCEPT, types);
        }
        if let Some(known) = &ask.known {
            req = req.header(header::IF_NONE_MATCH, format!("\"{known}\""));
        }
        let resp = self.send(req, header_timeout).await?;
        let text = |name| resp.headers().get(name).and_then(|v: &HeaderValue| v.to_str().ok()).map(str::to_owned);
        let digest = text(header::HeaderName::from_static("docker-content-digest")).and_then(|d| d.parse::<Digest>().ok());
        let Some(digest) = digest else { return Err(PeerError::Down("answered without a digest".into())) };
        let content_type = text(header::CONTENT_TYPE);
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok(PeerTag { digest, content_type, bytes: None });
        }
        if resp.status() != StatusCode::OK {
            return Err(PeerError::Down(format!("answered {}", resp.status())));
        }
        let body = Limited::new(resp.into_body(), MAX_MANIFEST);
        let bytes = match tokio::time::timeout(body_timeout, body.collect()).await {
            Err(_) => return Err(PeerError::Down(format!("the manifest took longer than {body_timeout:?}"))),
            Ok(Err(e)) => return Err(PeerError::Down(e.to_string())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        Ok(PeerTag { digest, content_type, bytes: Some(bytes) })
    }
}
