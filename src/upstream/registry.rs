//! The pull side of the registry protocol, spoken to one upstream: the paths and queries of
//! manifest, tag, referrers and blob requests, their `Accept` lines, and the headers they answer
//! with, as typed results. What to do with the answers (store, serve stale, verify) is the cache's.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use hyper::body::Incoming;

use super::{content_length, RateLimit, Upstream, UpstreamError};
use crate::oci::{AcceptList, Digest, Reference, RepositoryName};

/// The largest manifest (or referrers list) regcache reads from an upstream.
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// The largest tag list regcache reads from an upstream.
const MAX_TAG_LIST: usize = 16 * 1024 * 1024;

/// What an upstream `HEAD` of a manifest said.
#[derive(Clone, Debug)]
pub struct ManifestHead {
    /// Its `Docker-Content-Digest`.
    pub digest: Digest,
    /// Its `Content-Type`, without parameters, lowercased.
    pub media_type: Option<String>,
    /// Its `Content-Length`.
    pub size: Option<u64>,
    /// Its rate-limit headers.
    pub rate_limit: RateLimit,
}

/// A manifest as an upstream `GET` returned it: bytes and what the headers claimed, unverified.
#[derive(Clone, Debug)]
pub struct FetchedManifest {
    /// The body, at most [`MAX_MANIFEST`] bytes.
    pub bytes: Bytes,
    /// Its `Docker-Content-Digest`, if a valid one.
    pub digest: Option<Digest>,
    /// Its `Content-Type` as sent.
    pub content_type: Option<String>,
    /// Its rate-limit headers.
    pub rate_limit: RateLimit,
}

/// What an upstream's `tags/list` answered.
#[derive(Clone, Debug)]
pub struct TagsPage {
    /// The tags, as upstream listed them.
    pub tags: Vec<String>,
    /// Whether upstream said (with a `Link` header) that more follow.
    pub more: bool,
    /// Its rate-limit headers.
    pub rate_limit: RateLimit,
}

/// What an upstream `HEAD` of a blob said.
#[derive(Clone, Debug)]
pub struct BlobHead {
    /// Its `Content-Length`.
    pub size: Option<u64>,
    /// Its rate-limit headers.
    pub rate_limit: RateLimit,
}

impl Upstream {
    /// A `HEAD` of a manifest; `None` when it gave no digest, or when this upstream doesn't answer
    /// manifest `HEAD`s (405 or 501, remembered per upstream): the caller then GETs.
    pub async fn head_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<Option<ManifestHead>, UpstreamError> {
        if !self.answers_manifest_head() {
            return Ok(None);
        }
        let resp = match self.request(Method::HEAD, repo, &format!("manifests/{reference}"), accept_headers(accept)).await {
            Ok(resp) => resp,
            Err(UpstreamError::Status { status, .. })
                if status == StatusCode::METHOD_NOT_ALLOWED || status == StatusCode::NOT_IMPLEMENTED =>
            {
                tracing::info!(upstream = %self.config().name, %status, "upstream answers no manifest HEAD; using GET from now on");
                self.note_no_manifest_head();
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        let h = resp.headers();
        Ok(docker_digest(h).map(|digest| ManifestHead {
            digest,
            media_type: media_type_of(h),
            size: content_length(h),
            rate_limit: RateLimit::from_headers(h),
        }))
    }

    /// A `GET` of a manifest, its body refused past [`MAX_MANIFEST`] ([`UpstreamError::TooLarge`]).
    /// Nothing is verified here: see [`crate::oci::verify_manifest`].
    pub async fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        accept: &AcceptList,
    ) -> Result<FetchedManifest, UpstreamError> {
        let resp = self.request(Method::GET, repo, &format!("manifests/{reference}"), accept_headers(accept)).await?;
        let digest = docker_digest(resp.headers());
        let content_type = resp.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let rate_limit = RateLimit::from_headers(resp.headers());
        let bytes = self.transport().read_body(resp, MAX_MANIFEST).await?;
        Ok(FetchedManifest { bytes, digest, content_type, rate_limit })
    }

    /// One `tags/list` page: `n` tags after `last`, as far as upstream honours them (it is asked
    /// for at least one tag, so it still says whether the repository exists).
    pub async fn tags(&self, repo: &RepositoryName, n: Option<u32>, last: Option<&str>) -> Result<TagsPage, UpstreamError> {
        let resp = self.request(Method::GET, repo, &tags_path(n, last), HeaderMap::new()).await?;
        let more = resp.headers().contains_key(header::LINK);
        let rate_limit = RateLimit::from_headers(resp.headers());
        let body = self.transport().read_body(resp, MAX_TAG_LIST).await?;
        Ok(TagsPage { tags: parse_tag_list(&body)?, more, rate_limit })
    }

    /// The body of the referrers API's answer for `digest` (an OCI image index, at most
    /// [`MAX_MANIFEST`] bytes).
    pub async fn referrers(&self, repo: &RepositoryName, digest: &Digest) -> Result<Bytes, UpstreamError> {
        let accept = AcceptList::only(crate::oci::OCI_INDEX);
        let resp = self.request(Method::GET, repo, &format!("referrers/{digest}"), accept_headers(&accept)).await?;
        self.transport().read_body(resp, MAX_MANIFEST).await
    }

    /// A `GET` of a blob: what its headers said, and the body to stream (verified by the caller).
    pub async fn get_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<(BlobHead, Incoming), UpstreamError> {
        let resp = self.request(Method::GET, repo, &format!("blobs/{digest}"), HeaderMap::new()).await?;
        let head = BlobHead { size: content_length(resp.headers()), rate_limit: RateLimit::from_headers(resp.headers()) };
        Ok((head, resp.into_body()))
    }

    /// A `GET` of a blob from byte `offset` on (`Range: bytes=<offset>-`): what its headers said
    /// (the size of the whole blob), where its body starts (0 when the upstream ignored the range)
    /// and the body. For a fill whose source broke off after `offset` bytes.
    pub async fn get_blob_from(&self, repo: &RepositoryName, digest: &Digest, offset: u64) -> Result<(BlobHead, u64, Incoming), UpstreamError> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| UpstreamError::Protocol(e.to_string()))?);
        let resp = self.request(Method::GET, repo, &format!("blobs/{digest}"), headers).await?;
        let rate_limit = RateLimit::from_headers(resp.headers());
        let (start, size) = match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp.headers().get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                content_range(range).ok_or_else(|| UpstreamError::Protocol("a partial answer without a usable Content-Range".into()))?
            }
            _ => (0, content_length(resp.headers())),
        };
        Ok((BlobHead { size, rate_limit }, start, resp.into_body()))
    }

    /// A `HEAD` of a blob.
    pub async fn head_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<BlobHead, UpstreamError> {
        let resp = self.request(Method::HEAD, repo, &format!("blobs/{digest}"), HeaderMap::new()).await?;
        Ok(BlobHead { size: content_length(resp.headers()), rate_limit: RateLimit::from_headers(resp.headers()) })
    }
}

/// The start and whole size of `Content-Range: bytes <start>-<end>/<size>` (`*` for an unknown
/// size).
fn content_range(value: Option<&str>) -> Option<(u64, Option<u64>)> {
    let (range, size) = value?.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    let size = match size {
        "*" => None,
        s => Some(s.parse().ok()?),
    };
    Some((start.parse().ok()?, size))
}

/// `tags/list` with its `n` (at least 1) and `last` query.
fn tags_path(n: Option<u32>, last: Option<&str>) -> String {
    let mut params = url::form_urlencoded::Serializer::new(String::new());
    if let Some(n) = n {
        params.append_pair("n", &n.max(1).to_string());
    }
    if let Some(last) = last {
        params.append_pair("last", last);
    }
    let query = params.finish();
    if query.is_empty() {
        "tags/list".to_owned()
    } else {
        format!("tags/list?{query}")
    }
}

/// The tags of an upstream's `tags/list` body.
fn parse_tag_list(body: &[u8]) -> Result<Vec<String>, UpstreamError> {
    #[derive(serde::Deserialize)]
    struct List {
        tags: Option<Vec<String>>,
    }
    let list: List = serde_json::from_slice(body).map_err(|e| UpstreamError::Protocol(format!("unreadable tag list: {e}")))?;
    Ok(list.tags.unwrap_or_default())
}

fn accept_headers(accept: &AcceptList) -> HeaderMap {
    let mut h = HeaderMap::new();
    // One line per type, as Docker sends them: some registries read only part of a joined list.
    for t in accept.for_upstream() {
        if let Ok(v) = HeaderValue::from_str(&t) {
            h.append(header::ACCEPT, v);
        }
    }
    h
}

fn media_type_of(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let m = ct.split(';').next()?.trim();
    (!m.is_empty()).then(|| m.to_ascii_lowercase())
}

fn docker_digest(headers: &HeaderMap) -> Option<Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        type Case = (Option<&'static str>, Option<(u64, Option<u64>)>);
        let cases: [Case; 6] = [
            (Some("bytes 100-199/200"), Some((100, Some(200)))),
            (Some("bytes 0-0/*"), Some((0, None))),
            (Some("bytes */200"), None),
            (Some("items 1-2/3"), None),
            (Some("bytes 1-2/x"), None),
            (None, None),
        ];
        for (value, want) in cases {
            assert_eq!(content_range(value), want, "{value:?}");
        }
    }

    #[test]
    fn tag_list_bodies() {
        assert_eq!(parse_tag_list(br#"{"name":"a","tags":["x","y"]}"#).unwrap(), ["x", "y"]);
        assert!(parse_tag_list(br#"{"name":"a","tags":null}"#).unwrap().is_empty());
        assert!(parse_tag_list(br#"{"name":"a"}"#).unwrap().is_empty());
        assert!(parse_tag_list(b"<html>").is_err());
        assert!(parse_tag_list(br#"{"tags":[1]}"#).is_err());
    }

    #[test]
    fn tags_paths() {
        let cases = [
            (None, None, "tags/list"),
            (Some(5), None, "tags/list?n=5"),
            (Some(0), None, "tags/list?n=1"),
            (None, Some("v1"), "tags/list?last=v1"),
            (Some(2), Some("a b&c"), "tags/list?n=2&last=a+b%26c"),
        ];
        for (n, last, want) in cases {
            assert_eq!(tags_path(n, last), want, "{n:?} {last:?}");
        }
    }

    #[test]
    fn media_types_from_content_type() {
        let cases = [
            (Some("application/vnd.oci.image.manifest.v1+json"), Some("application/vnd.oci.image.manifest.v1+json")),
            (Some("Application/JSON; charset=utf-8"), Some("application/json")),
            (Some(" ; x=y"), None),
            (None, None),
        ];
        for (ct, want) in cases {
            let mut h = HeaderMap::new();
            if let Some(ct) = ct {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            }
            assert_eq!(media_type_of(&h).as_deref(), want, "{ct:?}");
        }
    }
}
