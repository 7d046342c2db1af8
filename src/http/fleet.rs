//! The member-to-member API on the main listener (`/_fleet/`): the secret is checked first, and
//! nothing else is looked at without it.

use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::error::{fleet_refused, rescue, route_error, Resource};
use super::route::{RouteError, RouteErrorKind};
use super::{blob_response, digest_headers, full, manifest_response, parse_range, App, Resp};
use crate::cache::{Answered, ManifestAnswer, RangeRequest};
use crate::fleet::auth::{self, REPOSITORY_HEADER, UPSTREAM_HEADER};
use crate::fleet::peer::{OFFSET_HEADER, SERVED_HEADER};
use crate::oci::{AcceptList, Digest, ErrorCode, RepositoryName, Tag};
use crate::upstream::Upstream;

impl App {
    /// `GET /_fleet/v1/ping` from a member probing this one: an empty 200 with the secret.
    pub(super) fn fleet_ping(&self, req: &Request<Incoming>) -> Resp {
        let Some(fleet) = &self.fleet else {
            return route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, "this node is not a member of a fleet"));
        };
        match auth::check(fleet.secret(), req.headers()) {
            Ok(()) => Resp::new(full(bytes::Bytes::new())),
            Err(refused) => fleet_refused(refused),
        }
    }

    /// `GET /_fleet/v1/blobs/<digest>` from a member: the blob from the requested offset
    /// (`Range: bytes=N-`), from the upstream and repository the member names. `HEAD`: its size,
    /// from this node's store, fill or upstream `HEAD` (no fill is started for it).
    pub(super) async fn fleet_blob(&self, req: &Request<Incoming>, digest: &Digest) -> Resp {
        let (up, repo) = match self.member_ask(req) {
            Ok(ask) => ask,
            Err(resp) => return *resp,
        };
        let headers = req.headers();
        let offset = match headers.get(header::RANGE).map(|v| v.to_str().ok().and_then(parse_range)) {
            None => 0,
            Some(Some(RangeRequest::From(start, None))) => start,
            Some(_) => {
                let e = RouteError::new(RouteErrorKind::Malformed, ErrorCode::RangeInvalid, "members ask for bytes=N- only");
                return route_error(&e);
            }
        };
        // Members ask a `HEAD` for the whole blob's size only.
        let offset = if req.method() == Method::HEAD { 0 } else { offset };
        let answer = if req.method() == Method::HEAD {
            self.cache.blob_head_for_member(&up, &repo, digest).await
        } else {
            crate::fleet::owner::serve_blob(&self.cache, &up, &repo, digest, offset).await
        };
        let mut resp = match answer {
            Ok(answer) => {
                let served = if answer.outcome == Answered::Hit { "stored" } else { "fill" };
                let mut resp = blob_response(answer, digest);
                resp.headers_mut().insert(SERVED_HEADER, HeaderValue::from_static(served));
                resp
            }
            Err(e) => rescue(&e, Resource::Blob),
        };
        resp.headers_mut().insert(OFFSET_HEADER, HeaderValue::from(offset));
        resp
    }

    /// `GET /_fleet/v1/tags/<tag>` from a member: what the tag names now for a client with the
    /// `Accept` list passed on, from the upstream and repository the member names, as this node
    /// remembers it fresh or revalidates it itself (`Cache::tag_for_member`: never stale, never
    /// asking another member); `304` without the manifest when it names the digest in
    /// `If-None-Match`. An error is this node's answer about the tag (`x-regcache-served: error`),
    /// which the member takes to the upstream itself.
    pub(super) async fn fleet_tag(&self, req: &Request<Incoming>, tag: &Tag) -> Resp {
        let (up, repo) = match self.member_ask(req) {
            Ok(ask) => ask,
            Err(resp) => return *resp,
        };
        let accept = AcceptList::from_headers(req.headers());
        let known = req.headers().get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim_matches('"').parse::<Digest>().ok());
        let head = req.method() == Method::HEAD;
        match self.cache.tag_for_member(&up, &repo, tag, &accept, head).await {
            Ok(answer) if known.as_ref() == Some(&answer.digest) => not_modified(&answer),
            Ok(answer) => manifest_response(answer),
            Err(e) => {
                let mut resp = rescue(&e, Resource::Manifest);
                resp.headers_mut().insert(SERVED_HEADER, HeaderValue::from_static("error"));
                resp
            }
        }
    }

    /// The upstream and repository a member's request names, once its secret is checked; the
    /// error response otherwise (boxed: a response is large).
    fn member_ask(&self, req: &Request<Incoming>) -> Result<(Arc<Upstream>, RepositoryName), Box<Resp>> {
        let not_found = |what: &str| Box::new(route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, what)));
        let Some(fleet) = &self.fleet else { return Err(not_found("this node is not a member of a fleet")) };
        auth::check(fleet.secret(), req.headers()).map_err(|r| Box::new(fleet_refused(r)))?;
        let headers = req.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(up) = text(UPSTREAM_HEADER).and_then(|u| self.cache.upstream_for(Some(u))) else {
            return Err(not_found("no such upstream here: the members' upstreams differ"));
        };
        let repo = text(REPOSITORY_HEADER).unwrap_or("").parse().map_err(|e| Box::new(route_error(&RouteError::from(e))))?;
        Ok((up.clone(), repo))
    }
}

/// `304 Not Modified`: the tag still names the digest the member has the manifest of.
fn not_modified(answer: &ManifestAnswer) -> Resp {
    let mut resp = Response::new(full(bytes::Bytes::new()));
    *resp.status_mut() = StatusCode::NOT_MODIFIED;
    digest_headers(resp.headers_mut(), &answer.digest);
    if let Ok(v) = HeaderValue::from_str(&answer.media_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    super::with_outcome(resp, answer.outcome)
}
