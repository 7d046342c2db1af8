//! The member-to-member API on the main listener (`/_fleet/`): the secret is checked first, and
//! nothing else is looked at without it.

use http::{header, HeaderValue, Request};
use hyper::body::Incoming;

use super::error::{fleet_refused, rescue, route_error, Resource};
use super::route::{RouteError, RouteErrorKind};
use super::{blob_response, full, parse_range, App, Resp};
use crate::cache::RangeRequest;
use crate::fleet::auth::{self, REPOSITORY_HEADER, UPSTREAM_HEADER};
use crate::cache::Answered;
use crate::fleet::peer::{OFFSET_HEADER, SERVED_HEADER};
use crate::oci::{Digest, ErrorCode, RepositoryName};

impl App {
    /// `GET /_fleet/v1/ping` from a member probing this one: an empty 200 with the secret.
    pub(super) fn fleet_ping(&self, req: &Request<Incoming>) -> Resp {
        let Some(fleet) = &self.fleet else {
            return route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, "this node is not a member of a fleet"));
        };
        match auth::check(fleet.secret(), req.headers()) {
            Ok(()) => Resp::new(full(bytes::Bytes::new())),
            Err(refusal) => fleet_refused(refusal),
        }
    }

    /// `GET /_fleet/v1/blobs/<digest>` from a member: the blob from the requested offset
    /// (`Range: bytes=N-`), from the upstream and repository the member names.
    pub(super) async fn fleet_blob(&self, req: &Request<Incoming>, digest: &Digest) -> Resp {
        let not_found = |what: &str| route_error(&RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, what));
        let Some(fleet) = &self.fleet else { return not_found("this node is not a member of a fleet") };
        if let Err(refusal) = auth::check(fleet.secret(), req.headers()) {
            return fleet_refused(refusal);
        }
        let headers = req.headers();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let Some(up) = text(UPSTREAM_HEADER).and_then(|u| self.cache.upstream_for(Some(u))) else {
            return not_found("no such upstream here: the members' upstreams differ");
        };
        let repo: RepositoryName = match text(REPOSITORY_HEADER).unwrap_or("").parse() {
            Ok(r) => r,
            Err(e) => return route_error(&RouteError::from(e)),
        };
        let offset = match text(header::RANGE.as_str()).map(parse_range) {
            None => 0,
            Some(Some(RangeRequest::From(start, None))) => start,
            Some(_) => {
                let e = RouteError::new(RouteErrorKind::Malformed, ErrorCode::RangeInvalid, "members ask for bytes=N- only");
                return route_error(&e);
            }
        };
        let mut resp = match crate::fleet::owner::serve_blob(&self.cache, up, &repo, digest, offset).await {
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
}
