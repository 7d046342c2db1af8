//! Request routing as a pure function: method, path and query in; a typed route (validated name,
//! reference or digest) or the error the client gets out.
//!
//! Names may contain any number of `/`, so the path is split from the right at the last
//! `/manifests/`, `/blobs/` or `/tags/list`.

use http::Method;

use crate::oci::{Blame, Digest, ErrorCode, NameError, Reference, RepositoryName, Tag};
use crate::metrics::RouteLabel;

/// A request regcache serves.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /v2/`.
    Base,
    /// `/v2/<name>/…`: something of a repository.
    Repo(RepositoryName, RepoRoute),
    /// `GET /metrics`: Prometheus text format.
    Metrics,
    /// `GET /healthz`: liveness.
    Healthz,
    /// `GET|HEAD /_fleet/v1/blobs/<digest>`: a blob for another member of the fleet (never under
    /// `/v2/`, where clients are served).
    FleetBlob(Digest),
    /// `GET|HEAD /_fleet/v1/tags/<tag>`: what a tag names now, for another member of the fleet.
    FleetTag(Tag),
    /// `GET /status`: the status page (HTML).
    Status,
    /// `GET /status.json`: the status page's snapshot.
    StatusJson,
}

/// What of a repository a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum RepoRoute {
    /// `GET|HEAD /v2/<name>/manifests/<reference>`.
    Manifest(Reference),
    /// `GET|HEAD /v2/<name>/blobs/<digest>`.
    Blob(Digest),
    /// `GET /v2/<name>/tags/list`.
    Tags,
    /// `GET /v2/<name>/referrers/<digest>` (OCI 1.1).
    Referrers(Digest),
}

impl Route {
    /// The route's label in metrics.
    pub fn label(&self) -> RouteLabel {
        match self {
            Route::Base => RouteLabel::Base,
            Route::Repo(_, RepoRoute::Manifest(_)) => RouteLabel::Manifest,
            Route::Repo(_, RepoRoute::Blob(_)) => RouteLabel::Blob,
            Route::Repo(_, RepoRoute::Tags) => RouteLabel::Tags,
            Route::Repo(_, RepoRoute::Referrers(_)) => RouteLabel::Referrers,
            Route::Metrics => RouteLabel::Metrics,
            Route::Healthz => RouteLabel::Healthz,
            Route::FleetBlob(_) | Route::FleetTag(_) => RouteLabel::Fleet,
            Route::Status | Route::StatusJson => RouteLabel::Status,
        }
    }
}

/// The query parameters regcache reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// containerd's `ns=<registry host>`.
    pub ns: Option<String>,
    /// Tag list page size.
    pub n: Option<u32>,
    /// Tag list cursor.
    pub last: Option<String>,
    /// Referrers filter.
    pub artifact_type: Option<String>,
}

/// Why a request can't be routed: what is wrong with it, and its OCI code. Always the client's
/// doing; `http::error` decides the status.
#[derive(Debug, PartialEq, Eq)]
pub struct RouteError {
    /// What is wrong with the request.
    pub kind: RouteErrorKind,
    /// OCI code.
    pub code: ErrorCode,
    /// Message.
    pub message: String,
}

/// What is wrong with a request that can't be routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteErrorKind {
    /// A malformed name, tag, digest or query parameter.
    Malformed,
    /// Nothing is served under that path (or on that address, or for that registry).
    NotFound,
    /// A write: regcache is a read-only mirror.
    ReadOnly,
}

impl RouteError {
    /// A routing error of `kind` with `code`.
    pub fn new(kind: RouteErrorKind, code: ErrorCode, message: impl Into<String>) -> RouteError {
        RouteError { kind, code, message: message.into() }
    }

    /// Who is to blame: always the client, who asked for something regcache doesn't serve.
    pub fn blame(&self) -> Blame {
        Blame::Client
    }
}

impl From<NameError> for RouteError {
    fn from(e: NameError) -> Self {
        let code = match e {
            NameError::Name(_) => ErrorCode::NameInvalid,
            NameError::Tag(_) => ErrorCode::TagInvalid,
            NameError::Digest(_) => ErrorCode::DigestInvalid,
        };
        RouteError::new(RouteErrorKind::Malformed, code, e.to_string())
    }
}

/// Route a request.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    let not_found = || RouteError::new(RouteErrorKind::NotFound, ErrorCode::NameUnknown, format!("no route for {path}"));
    let read = *method == Method::GET || *method == Method::HEAD;
    match path {
        "/metrics" if read => return Ok(Route::Metrics),
        "/healthz" if read => return Ok(Route::Healthz),
        "/status" if read => return Ok(Route::Status),
        "/status.json" if read => return Ok(Route::StatusJson),
        _ => {}
    }
    if let Some(digest) = path.strip_prefix("/_fleet/v1/blobs/").filter(|_| read) {
        return Ok(Route::FleetBlob(digest.parse().map_err(NameError::from)?));
    }
    if let Some(tag) = path.strip_prefix("/_fleet/v1/tags/").filter(|_| read) {
        return Ok(Route::FleetTag(tag.parse()?));
    }
    let Some(rest) = path.strip_prefix("/v2") else { return Err(not_found()) };
    if !read {
        return Err(RouteError::new(
            RouteErrorKind::ReadOnly,
            ErrorCode::Unsupported,
            format!("{method} is not supported: regcache is a read-only mirror"),
        ));
    }
    if rest.is_empty() || rest == "/" {
        return Ok(Route::Base);
    }
    let rest = rest.strip_prefix('/').ok_or_else(not_found)?;
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return Ok(Route::Repo(name.parse()?, RepoRoute::Tags));
    }
    let split = ["/manifests/", "/blobs/", "/referrers/"]
        .iter()
        .filter_map(|sep| rest.rfind(sep).map(|i| (i, *sep)))
        .max_by_key(|(i, _)| *i);
    let Some((i, sep)) = split else { return Err(not_found()) };
    let name: RepositoryName = rest[..i].parse()?;
    let last = &rest[i + sep.len()..];
    match sep {
        "/manifests/" => Ok(Route::Repo(name, RepoRoute::Manifest(manifest_reference(last)?))),
        "/referrers/" => Ok(Route::Repo(name, RepoRoute::Referrers(last.parse().map_err(NameError::from)?))),
        _ if last.starts_with("uploads") => Err(RouteError::new(
            RouteErrorKind::ReadOnly,
            ErrorCode::Unsupported,
            "uploads are not supported: regcache is a read-only mirror",
        )),
        _ => Ok(Route::Repo(name, RepoRoute::Blob(last.parse().map_err(NameError::from)?))),
    }
}

/// A manifest reference. A malformed digest is the client's mistake (400 `DIGEST_INVALID`); a
/// reference that is not a valid tag names no manifest there can be (404 `MANIFEST_UNKNOWN`, as the
/// conformance suite expects), so nothing is asked upstream.
fn manifest_reference(s: &str) -> Result<Reference, RouteError> {
    s.parse().map_err(|e| match e {
        NameError::Tag(_) => RouteError::new(RouteErrorKind::NotFound, ErrorCode::ManifestUnknown, format!("manifest unknown: {e}")),
        e => e.into(),
    })
}

/// Parse the query string; unknown parameters are ignored, malformed known ones are a 400.
pub fn query(q: Option<&str>) -> Result<Query, RouteError> {
    let mut out = Query::default();
    for (k, v) in url::form_urlencoded::parse(q.unwrap_or("").as_bytes()) {
        match &*k {
            "ns" => out.ns = Some(v.into_owned()),
            "n" => {
                let n = v.parse().map_err(|_| {
                    RouteError::new(RouteErrorKind::Malformed, ErrorCode::Unsupported, format!("n={v:?} is not a count"))
                })?;
                out.n = Some(n);
            }
            "last" => out.last = Some(v.into_owned()),
            "artifactType" => out.artifact_type = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

    use super::*;
    use crate::http::error::route_answer;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes() {
        let get = Method::GET;
        assert_eq!(route(&get, "/v2/"), Ok(Route::Base));
        assert_eq!(route(&get, "/v2"), Ok(Route::Base));
        let repo = |n: &str, r| Ok(Route::Repo(n.parse().unwrap(), r));
        assert_eq!(route(&get, "/v2/org/team/app/manifests/1.0"), repo("org/team/app", RepoRoute::Manifest("1.0".parse().unwrap())));
        assert_eq!(route(&Method::HEAD, &format!("/v2/alpine/blobs/{D}")), repo("alpine", RepoRoute::Blob(D.parse().unwrap())));
        // A repository may itself be called "manifests" or "blobs".
        assert_eq!(
            route(&get, "/v2/a/manifests/b/manifests/latest"),
            repo("a/manifests/b", RepoRoute::Manifest("latest".parse().unwrap()))
        );
        assert_eq!(route(&get, "/v2/a/b/tags/list"), repo("a/b", RepoRoute::Tags));
        assert_eq!(route(&get, &format!("/v2/ghcr.io/a/referrers/{D}")), repo("ghcr.io/a", RepoRoute::Referrers(D.parse().unwrap())));
        assert_eq!(route(&get, "/metrics"), Ok(Route::Metrics));
        assert_eq!(route(&Method::HEAD, "/healthz"), Ok(Route::Healthz));
        assert_eq!(route(&get, &format!("/_fleet/v1/blobs/{D}")), Ok(Route::FleetBlob(D.parse().unwrap())));
        assert_eq!(route(&Method::HEAD, &format!("/_fleet/v1/blobs/{D}")), Ok(Route::FleetBlob(D.parse().unwrap())));
        assert_eq!(route(&get, "/_fleet/v1/tags/v1.0"), Ok(Route::FleetTag("v1.0".parse().unwrap())));
        assert_eq!(route(&Method::HEAD, "/_fleet/v1/tags/latest"), Ok(Route::FleetTag("latest".parse().unwrap())));
        assert_eq!(route(&get, "/status"), Ok(Route::Status));
        assert_eq!(route(&get, "/status.json"), Ok(Route::StatusJson));
        assert!(route(&Method::POST, "/status").is_err());
    }

    #[test]
    fn errors() {
        let get = Method::GET;
        let cases: &[(&Method, &str, StatusCode, ErrorCode)] = &[
            (&get, "/v2/Alpine/manifests/3", StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            (&get, "/v2/../etc/manifests/3", StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            (&get, "/v2/a%2fb/manifests/3", StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
            (&get, "/v2/alpine/manifests/bad%20tag", StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            (&get, "/v2/alpine/manifests/", StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            (&get, "/v2/alpine/manifests/.INVALID_MANIFEST_NAME", StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            (&Method::HEAD, "/v2/alpine/manifests/-x", StatusCode::NOT_FOUND, ErrorCode::ManifestUnknown),
            (&get, "/v2/alpine/manifests/sha256:totallywrong", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            (&get, "/v2/alpine/manifests/sha256:abc", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            (&get, "/v2/alpine/blobs/latest", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            (&get, "/v2/alpine/blobs/sha256:../../x", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            (&get, "/v2/alpine", StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&get, "/v2alpine", StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&get, "/", StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&Method::PUT, "/v2/alpine/manifests/3", StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            (&Method::POST, "/v2/alpine/blobs/uploads/", StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            (&Method::DELETE, "/v2/alpine/blobs/x", StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            (&Method::PATCH, "/v2/", StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            (&get, "/v2/alpine/blobs/uploads/1234", StatusCode::METHOD_NOT_ALLOWED, ErrorCode::Unsupported),
            (&get, "/v2/alpine/referrers/latest", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            // The member-to-member API is not under /v2/, and /v2/ never reaches it.
            (&get, "/_fleet/v1/blobs/latest", StatusCode::BAD_REQUEST, ErrorCode::DigestInvalid),
            (&Method::POST, &format!("/_fleet/v1/blobs/{D}"), StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&Method::PUT, "/_fleet/v1/tags/latest", StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&get, "/_fleet/v1/tags/bad%20tag", StatusCode::BAD_REQUEST, ErrorCode::TagInvalid),
            (&get, "/_fleet/v1/tags/a/b", StatusCode::BAD_REQUEST, ErrorCode::TagInvalid),
            (&get, "/_fleet/v1/other", StatusCode::NOT_FOUND, ErrorCode::NameUnknown),
            (&get, &format!("/v2/_fleet/v1/blobs/{D}"), StatusCode::BAD_REQUEST, ErrorCode::NameInvalid),
        ];
        for (m, p, status, code) in cases {
            let e = route(m, p).unwrap_err();
            assert_eq!(e.blame(), Blame::Client, "{m} {p}");
            assert_eq!(route_answer(&e), (*status, *code), "{m} {p}");
        }
        let too_long = format!("/v2/alpine/manifests/{}", "t".repeat(129));
        assert_eq!(route(&get, &too_long).unwrap_err().code, ErrorCode::ManifestUnknown);
    }

    #[test]
    fn queries() {
        assert_eq!(query(None).unwrap(), Query::default());
        let q = query(Some("ns=docker.io&n=10&last=v1%2B2&x=y&artifactType=application%2Fx")).unwrap();
        assert_eq!(q.artifact_type.as_deref(), Some("application/x"));
        assert_eq!(q.ns.as_deref(), Some("docker.io"));
        assert_eq!(q.n, Some(10));
        assert_eq!(q.last.as_deref(), Some("v1+2"));
        let e = query(Some("n=lots")).unwrap_err();
        assert_eq!(route_answer(&e), (StatusCode::BAD_REQUEST, ErrorCode::Unsupported));
    }
}
