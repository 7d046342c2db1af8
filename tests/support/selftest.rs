//! Self-tests of the fake upstream: it must behave as documented, or regcache's
//! integration tests prove nothing.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{HeaderMap, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::fake_registry::{sha256_digest, FakeRegistry, Fault};
use super::images::{self, pseudo_random_bytes};

/// Bound for anything that should happen promptly.
const PROMPTLY: Duration = Duration::from_secs(10);

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Result<Vec<u8>, String>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn bytes(&self) -> &[u8] {
        self.body.as_deref().expect("complete body")
    }
    fn json(&self) -> Value {
        serde_json::from_slice(self.bytes()).expect("JSON body")
    }
    fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// One request on a fresh connection; redirects are not followed.
async fn try_send(method: &str, url: &str, headers: &[(&str, &str)]) -> Result<Resp, String> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .map_err(|e| e.to_string());
    Ok(Resp {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}

async fn send(method: &str, url: &str, headers: &[(&str, &str)]) -> Resp {
    tokio::time::timeout(PROMPTLY, try_send(method, url, headers))
        .await
        .expect("fake registry answers promptly")
        .expect("request to fake registry")
}

async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    send("GET", url, headers).await
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

async fn token_request(reg: &FakeRegistry, repo: &str, auth: Option<&str>) -> Resp {
    let url = format!(
        "{}/token?service=fake-registry&scope=repository:{repo}:pull",
        reg.url()
    );
    match auth {
        Some(a) => get(&url, &[("authorization", a)]).await,
        None => get(&url, &[]).await,
    }
}

/// `Bearer <token>` for pulling `repo`, anonymously or with Basic `auth`.
async fn bearer(reg: &FakeRegistry, repo: &str, auth: Option<&str>) -> String {
    let resp = token_request(reg, repo, auth).await;
    assert_eq!(resp.status, 200, "token for {repo}");
    let body = resp.json();
    assert_eq!(body["token"], body["access_token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(
        body["issued_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "issued_at: {body}"
    );
    format!("Bearer {}", body["token"].as_str().expect("token string"))
}

/// Raw HTTP/1.1 GET with `Connection: close`: returns the response head and
/// every body byte that arrived before the server closed the connection.
async fn raw_get(url: &str, extra: &str) -> (String, Vec<u8>) {
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_at(rest.find('/').expect("URL has a path"));
    let mut stream = TcpStream::connect(host).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut buf = Vec::new();
    tokio::time::timeout(PROMPTLY, stream.read_to_end(&mut buf))
        .await
        .expect("server closes the connection")
        .expect("read response");
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head")
        + 4;
    (
        String::from_utf8_lossy(&buf[..split]).to_lowercase(),
        buf[split..].to_vec(),
    )
}

/// A fake with one blob of `len` pseudo-random bytes (seeded by `seed`) in `library/x`: the
/// registry, the bytes, their digest, a bearer authorization for `library/x`, and the CDN location
/// the registry redirects to.
async fn blob_on_cdn(seed: &str, len: usize) -> (FakeRegistry, Vec<u8>, String, String, String) {
    let reg = FakeRegistry::start().await;
    let bytes = pseudo_random_bytes(seed, len);
    let digest = reg.add_blob(bytes.clone());
    let auth = bearer(&reg, "library/x", None).await;
    let location = blob_location(&reg, "library/x", &digest, &auth).await;
    (reg, bytes, digest, auth, location)
}

/// Follows the registry's blob redirect; returns the CDN URL.
async fn blob_location(reg: &FakeRegistry, repo: &str, digest: &str, auth: &str) -> String {
    let resp = get(
        &format!("{}/v2/{repo}/blobs/{digest}", reg.url()),
        &[("authorization", auth)],
    )
    .await;
    assert_eq!(resp.status, 307);
    resp.header("location")
        .expect("Location header")
        .to_string()
}

#[tokio::test]
async fn token_flow_like_docker_hub() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "latest", 1, 100);
    let manifest_url = format!("{}/v2/library/alpine/manifests/latest", reg.url());

    let ping = get(&format!("{}/v2/", reg.url()), &[]).await;
    assert_eq!(ping.status, 401);
    let realm = format!(
        "Bearer realm=\"{}/token\",service=\"fake-registry\"",
        reg.url()
    );
    assert_eq!(ping.header("www-authenticate"), Some(realm.as_str()));
    assert_eq!(
        ping.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    let denied = get(&manifest_url, &[]).await;
    assert_eq!(denied.status, 401);
    assert_eq!(denied.error_code(), "UNAUTHORIZED");
    let scoped = format!("{realm},scope=\"repository:library/alpine:pull\"");
    assert_eq!(denied.header("www-authenticate"), Some(scoped.as_str()));

    reg.set_fault(Fault::RealmFromHost);
    let port = reg.url().rsplit(':').next().expect("port").to_string();
    let by_name = get(&format!("http://localhost:{port}/v2/"), &[]).await;
    let want = format!("Bearer realm=\"http://localhost:{port}/token\",service=\"fake-registry\"");
    assert_eq!(by_name.header("www-authenticate"), Some(want.as_str()));
    reg.clear_faults();

    let auth = bearer(&reg, "library/alpine", None).await;
    let ping = get(&format!("{}/v2/", reg.url()), &[("authorization", &auth)]).await;
    assert_eq!((ping.status, ping.bytes()), (200, &b"{}"[..]));

    let ok = get(&manifest_url, &[("authorization", &auth)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.bytes(), image.manifest.bytes.as_slice());
    assert_eq!(ok.header("content-type"), Some(images::DOCKER_MANIFEST));
    assert_eq!(
        ok.header("docker-content-digest"),
        Some(image.manifest.digest.as_str())
    );
    assert_eq!(
        ok.header("content-length"),
        Some(image.manifest.size().to_string().as_str())
    );
    assert_eq!(
        ok.header("etag"),
        Some(format!("\"{}\"", image.manifest.digest).as_str())
    );

    let tokens = reg.token_requests();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0]
        .path_and_query
        .contains("scope=repository:library/alpine:pull"));
    assert_eq!(tokens[0].authorization, None);
    assert_eq!(
        reg.count("GET", "/token"),
        1,
        "token requests are registry requests too"
    );

    // A token is scoped to its repository, and revoked tokens stop working.
    let other = bearer(&reg, "library/busybox", None).await;
    assert_eq!(
        get(&manifest_url, &[("authorization", &other)])
            .await
            .status,
        401
    );
    reg.revoke_tokens();
    assert_eq!(
        get(&manifest_url, &[("authorization", &auth)]).await.status,
        401
    );
}

#[tokio::test]
async fn private_repo_needs_basic_credentials() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "org/team/app", "v1", 1, 10);
    images::schema2_image(&reg, "library/alpine", "latest", 1, 10);
    reg.make_private("org/team/app");

    assert_eq!(token_request(&reg, "org/team/app", None).await.status, 401);
    assert_eq!(
        token_request(&reg, "org/team/app", Some(&basic("ci", "wrong")))
            .await
            .status,
        401
    );
    assert_eq!(
        token_request(&reg, "library/alpine", Some(&basic("ci", "wrong")))
            .await
            .status,
        401
    );
    let auth = bearer(&reg, "org/team/app", Some(&basic("ci", "s3cret"))).await;
    let url = format!("{}/v2/org/team/app/manifests/v1", reg.url());
    assert_eq!(get(&url, &[("authorization", &auth)]).await.status, 200);
    let last = reg.token_requests().pop().expect("token request logged");
    assert_eq!(last.authorization, Some(basic("ci", "s3cret")));

    reg.set_credentials("bob", "hunter2");
    assert_eq!(
        token_request(&reg, "org/team/app", Some(&basic("ci", "s3cret")))
            .await
            .status,
        401
    );
    bearer(&reg, "org/team/app", Some(&basic("bob", "hunter2"))).await;
}

#[tokio::test]
async fn manifests_negotiate_accept_and_resolve_names() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "a/manifests/b", "v1", 1, 10);
    let auth = bearer(&reg, "a/manifests/b", None).await;
    let base = format!("{}/v2/a/manifests/b/manifests", reg.url());
    let tag_url = format!("{base}/v1");

    // The stored type only appears on the second Accept line, after another value.
    let two_lines = [
        ("authorization", auth.as_str()),
        ("accept", images::OCI_MANIFEST),
        ("accept", "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9"),
    ];
    assert_eq!(get(&tag_url, &two_lines).await.status, 200);
    assert_eq!(reg.requests().last().expect("logged").accept.len(), 2);
    let oci_only = get(
        &tag_url,
        &[("authorization", &auth), ("accept", images::OCI_MANIFEST)],
    )
    .await;
    assert_eq!(
        (oci_only.status, oci_only.error_code()),
        (404, "MANIFEST_UNKNOWN".into())
    );
    assert_eq!(
        get(&tag_url, &[("authorization", &auth)]).await.status,
        200,
        "no Accept: anything goes"
    );

    let head = send("HEAD", &tag_url, &[("authorization", &auth)]).await;
    assert_eq!(head.status, 200);
    assert!(head.bytes().is_empty());
    assert_eq!(
        head.header("content-length"),
        Some(image.manifest.size().to_string().as_str())
    );
    assert_eq!(
        head.header("docker-content-digest"),
        Some(image.manifest.digest.as_str())
    );

    let by_digest = format!("{base}/{}", image.manifest.digest);
    assert_eq!(
        get(&by_digest, &[("authorization", &auth)]).await.bytes(),
        image.manifest.bytes.as_slice()
    );
    let missing = get(&format!("{base}/nope"), &[("authorization", &auth)]).await;
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "MANIFEST_UNKNOWN".into())
    );

    reg.delete_tag("a/manifests/b", "v1");
    assert_eq!(get(&tag_url, &[("authorization", &auth)]).await.status, 404);
    assert_eq!(
        get(&by_digest, &[("authorization", &auth)]).await.status,
        200
    );

    let ghost_auth = bearer(&reg, "no/such", None).await;
    let ghost = get(
        &format!("{}/v2/no/such/manifests/latest", reg.url()),
        &[("authorization", &ghost_auth)],
    )
    .await;
    assert_eq!(
        (ghost.status, ghost.error_code()),
        (404, "NAME_UNKNOWN".into())
    );
    let other = get(&format!("{}/v3/whatever", reg.url()), &[]).await;
    assert_eq!(
        (other.status, other.error_code()),
        (404, "NOT_FOUND".into())
    );
}

#[tokio::test]
async fn blobs_redirect_to_a_cdn_that_rejects_authorization() {
    let reg = FakeRegistry::start().await;
    let bytes = pseudo_random_bytes("blob", 10_000);
    let digest = reg.add_blob(bytes.clone());
    assert_eq!(digest, sha256_digest(&bytes));
    let auth = bearer(&reg, "library/x", None).await;
    let blob_url = format!("{}/v2/library/x/blobs/{digest}", reg.url());

    let head = send("HEAD", &blob_url, &[("authorization", &auth)]).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("10000"));
    assert_eq!(head.header("docker-content-digest"), Some(digest.as_str()));
    assert_eq!(head.header("location"), None);

    let location = blob_location(&reg, "library/x", &digest, &auth).await;
    assert!(
        location.starts_with(&format!("{}/blobs/{digest}?sig=", reg.cdn_url())),
        "{location}"
    );
    assert_eq!(
        get(&location, &[("authorization", &auth)]).await.status,
        400
    );
    let ok = get(&location, &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.bytes(), bytes.as_slice());
    assert_eq!(ok.header("content-type"), Some("application/octet-stream"));
    let part = get(&location, &[("range", "bytes=100-199")]).await;
    assert_eq!(part.status, 206);
    assert_eq!(part.bytes(), &bytes[100..200]);
    assert_eq!(part.header("content-range"), Some("bytes 100-199/10000"));
    let forged = location.replace("?sig=", "?sig=0");
    assert_eq!(get(&forged, &[]).await.status, 403);

    let cdn = reg.cdn_requests();
    assert_eq!(cdn.len(), 4);
    assert_eq!(cdn[0].authorization, Some(auth.clone()));
    assert_eq!(cdn[2].range.as_deref(), Some("bytes=100-199"));
    assert_eq!(reg.cdn_count(&digest), 4);
    assert_eq!(reg.count("GET", "/blobs/"), 1);
    assert_eq!(reg.count("HEAD", "/blobs/"), 1);

    let unknown = format!(
        "{}/v2/library/x/blobs/{}",
        reg.url(),
        sha256_digest(b"nope")
    );
    let unknown = get(&unknown, &[("authorization", &auth)]).await;
    assert_eq!(
        (unknown.status, unknown.error_code()),
        (404, "BLOB_UNKNOWN".into())
    );

    reg.set_fault(Fault::RedirectToOtherHost);
    let port = reg.cdn_url().rsplit(':').next().expect("port").to_string();
    let location = blob_location(&reg, "library/x", &digest, &auth).await;
    assert!(
        location.starts_with(&format!("http://localhost:{port}/blobs/{digest}?sig=")),
        "{location}"
    );
    assert_eq!(get(&location, &[]).await.bytes(), bytes.as_slice());
    reg.clear_faults();
    reg.set_fault(Fault::RedirectBlobsTo("http://169.254.169.254".into()));
    let location = blob_location(&reg, "library/x", &digest, &auth).await;
    assert!(location.starts_with(&format!("http://169.254.169.254/blobs/{digest}?sig=")), "{location}");

    reg.clear_log();
    assert_eq!(
        (
            reg.requests().len(),
            reg.cdn_requests().len(),
            reg.token_requests().len()
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn tags_list_paginates_with_link_headers() {
    let reg = FakeRegistry::start().await;
    for tag in ["c", "a", "e", "b", "d"] {
        reg.put_manifest(
            "org/app",
            Some(tag),
            images::DOCKER_MANIFEST,
            format!("{{\"t\":\"{tag}\"}}").into_bytes(),
        );
    }
    let auth = bearer(&reg, "org/app", None).await;
    let all = get(
        &format!("{}/v2/org/app/tags/list", reg.url()),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(
        all.json(),
        serde_json::json!({"name": "org/app", "tags": ["a", "b", "c", "d", "e"]})
    );
    assert_eq!(all.header("link"), None);

    let mut next = Some("/v2/org/app/tags/list?n=2".to_string());
    let mut pages = Vec::new();
    while let Some(path) = next {
        let page = get(&format!("{}{path}", reg.url()), &[("authorization", &auth)]).await;
        pages.push(page.json()["tags"].clone());
        next = page
            .header("link")
            .map(|l| l[1..l.find('>').expect("<url>")].to_string());
    }
    assert_eq!(
        pages,
        vec![
            serde_json::json!(["a", "b"]),
            serde_json::json!(["c", "d"]),
            serde_json::json!(["e"])
        ]
    );
    assert_eq!(reg.count("GET", "tags/list?last=b&n=2"), 1);
}

#[tokio::test]
async fn tags_unpaged_ignores_n_and_last() {
    let reg = FakeRegistry::start().await;
    for tag in ["c", "a", "b"] {
        reg.put_manifest("org/app", Some(tag), images::DOCKER_MANIFEST, format!("{{\"t\":\"{tag}\"}}").into_bytes());
    }
    reg.set_fault(Fault::TagsUnpaged);
    let auth = bearer(&reg, "org/app", None).await;
    let page = get(&format!("{}/v2/org/app/tags/list?n=1&last=a", reg.url()), &[("authorization", &auth)]).await;
    assert_eq!(page.json(), serde_json::json!({"name": "org/app", "tags": ["c", "b", "a"]}));
    assert_eq!(page.header("link"), None);
}

#[tokio::test]
async fn tags_page_size_cuts_every_page() {
    let reg = FakeRegistry::start().await;
    for tag in ["c", "a", "b"] {
        reg.put_manifest("org/app", Some(tag), images::DOCKER_MANIFEST, format!("{{\"t\":\"{tag}\"}}").into_bytes());
    }
    reg.set_fault(Fault::TagsPageSize(2));
    let auth = bearer(&reg, "org/app", None).await;
    for (query, tags, link) in [
        ("", serde_json::json!(["a", "b"]), Some("</v2/org/app/tags/list?last=b&n=2>; rel=\"next\"")),
        ("?n=5", serde_json::json!(["a", "b"]), Some("</v2/org/app/tags/list?last=b&n=2>; rel=\"next\"")),
        ("?n=1", serde_json::json!(["a"]), Some("</v2/org/app/tags/list?last=a&n=1>; rel=\"next\"")),
        ("?last=b", serde_json::json!(["c"]), None),
    ] {
        let page = get(&format!("{}/v2/org/app/tags/list{query}", reg.url()), &[("authorization", &auth)]).await;
        assert_eq!(page.json(), serde_json::json!({"name": "org/app", "tags": tags}), "{query}");
        assert_eq!(page.header("link"), link, "{query}");
    }
}

#[tokio::test]
async fn rate_limit_headers_on_registry_and_cdn_responses() {
    let reg = FakeRegistry::start().await;
    let digest = reg.add_blob(b"rate limited".to_vec());
    let auth = bearer(&reg, "library/x", None).await;
    let blob_url = format!("{}/v2/library/x/blobs/{digest}", reg.url());
    assert_eq!(send("HEAD", &blob_url, &[("authorization", &auth)]).await.header("ratelimit-remaining"), None);
    reg.set_fault(Fault::RateLimitHeaders { remaining: 9 });
    let head = send("HEAD", &blob_url, &[("authorization", &auth)]).await;
    assert_eq!(head.header("ratelimit-limit"), Some("100;w=21600"));
    assert_eq!(head.header("ratelimit-remaining"), Some("9;w=21600"));
    assert_eq!(head.header("docker-ratelimit-source"), Some("192.0.2.7"));
    let cdn = get(&blob_location(&reg, "library/x", &digest, &auth).await, &[]).await;
    assert_eq!((cdn.status, cdn.header("ratelimit-remaining")), (200, Some("9;w=21600")));
    reg.set_fault(Fault::Status { code: 429, retry_after: None, path_contains: "/blobs/".into() });
    let limited = get(&blob_url, &[("authorization", &auth)]).await;
    assert_eq!((limited.status, limited.header("ratelimit-remaining")), (429, Some("9;w=21600")));
    assert_eq!(limited.json()["errors"][0]["message"], super::fake_registry::RATE_LIMIT_MESSAGE);
}

#[tokio::test]
async fn cdn_faults_corrupt_cut_and_slow() {
    let (reg, bytes, digest, auth, location) = blob_on_cdn("faults", 10_000).await;

    reg.set_fault(Fault::CorruptBlobs);
    let corrupt = get(&location, &[]).await;
    assert_eq!(corrupt.bytes().len(), bytes.len());
    assert_ne!(sha256_digest(corrupt.bytes()), digest);
    reg.clear_faults();

    reg.set_fault(Fault::CutBlobsAfter(1000));
    assert!(
        get(&location, &[]).await.body.is_err(),
        "a cut body must not look complete"
    );
    let (head, body) = raw_get(&location, "").await;
    assert!(head.contains("content-length: 10000\r\n"), "{head}");
    assert_eq!(body, &bytes[..1000]);
    let (head, body) = raw_get(&location, "Range: bytes=5000-\r\n").await;
    assert!(
        head.starts_with("http/1.1 206") && head.contains("content-length: 5000\r\n"),
        "{head}"
    );
    assert_eq!(body, &bytes[5000..6000]);
    reg.clear_faults();

    // Cutting a large body must still deliver exactly the promised prefix.
    let big = pseudo_random_bytes("big", 4 << 20);
    let big_digest = reg.add_blob(big.clone());
    let big_location = blob_location(&reg, "library/x", &big_digest, &auth).await;
    reg.set_fault(Fault::CutBlobsAfter(3 << 20));
    let (_, body) = raw_get(&big_location, "").await;
    assert_eq!(body.len(), 3 << 20);
    assert!(body == big[..3 << 20]);
    reg.clear_faults();

    // Waiting for the CDN works while a response is still trickling.
    reg.set_fault(Fault::SlowBlobs {
        chunk: 100,
        delay_ms: 10_000,
    });
    reg.clear_log();
    let url = location.clone();
    let trickling = tokio::spawn(async move { try_send("GET", &url, &[]).await.map(|r| r.status) });
    tokio::time::timeout(PROMPTLY, reg.wait_for_cdn_requests(&digest, 1))
        .await
        .expect("CDN saw the trickling request");
    assert!(!trickling.is_finished(), "a 10 s gap between chunks");
    trickling.abort();
    reg.clear_faults();

    reg.set_fault(Fault::SlowBlobs {
        chunk: 2500,
        delay_ms: 50,
    });
    let started = Instant::now();
    let slow = get(&location, &[]).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "4 chunks, 3 gaps of 50 ms"
    );
    assert_eq!(slow.bytes(), bytes.as_slice());
    reg.clear_faults();
    assert_eq!(get(&location, &[]).await.bytes(), bytes.as_slice());
}

#[tokio::test]
async fn cdn_faults_endless_and_held() {
    let (reg, bytes, digest, _auth, location) = blob_on_cdn("endless", 1000).await;

    reg.set_fault(Fault::EndlessBlobs);
    let mut resp = reqwest::get(&location).await.expect("endless response");
    assert!(resp.headers().get("content-length").is_none(), "no length: chunked");
    let mut got = Vec::new();
    while got.len() < 10_000 {
        let chunk = tokio::time::timeout(PROMPTLY, resp.chunk()).await.expect("bytes keep coming");
        got.extend_from_slice(&chunk.expect("a chunk").expect("the body never ends"));
    }
    assert!(got[..3000] == bytes.repeat(3)[..], "the blob's bytes, over and over");
    drop(resp);
    reg.clear_faults();

    reg.set_fault(Fault::HoldBlobsAfter { bytes: 400, path_contains: digest.clone() });
    let mut resp = reqwest::get(&location).await.expect("held response");
    let mut got = Vec::new();
    while got.len() < 400 {
        let chunk = tokio::time::timeout(PROMPTLY, resp.chunk()).await.expect("the first bytes come");
        got.extend_from_slice(&chunk.expect("a chunk").expect("not the end yet"));
    }
    assert!(got == bytes[..400], "exactly the bytes before the hold");
    reg.release_held();
    let rest = tokio::time::timeout(PROMPTLY, resp.bytes()).await.expect("released").expect("the rest");
    assert!(rest == bytes[400..]);
}

#[tokio::test]
async fn cdn_faults_wrong_bytes_held() {
    let (reg, bytes, digest, _auth, location) = blob_on_cdn("wrong-held", 1000).await;
    reg.set_fault(Fault::CorruptBlobs);
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 400, path_contains: digest.clone() });
    let mut resp = reqwest::get(&location).await.expect("held response");
    assert_eq!(resp.headers()["content-length"], "1000", "the right length");
    let mut got = Vec::new();
    while got.len() < 400 {
        let chunk = tokio::time::timeout(PROMPTLY, resp.chunk()).await.expect("the first bytes come");
        got.extend_from_slice(&chunk.expect("a chunk").expect("not the end yet"));
    }
    let wrong: Vec<u8> = bytes.iter().map(|b| b ^ 0xA5).collect();
    assert!(got == wrong[..400], "exactly the wrong bytes before the hold");
    reg.release_held();
    let rest = tokio::time::timeout(PROMPTLY, resp.bytes()).await.expect("released").expect("the rest");
    assert!(rest == wrong[400..], "wrong to the end");
    assert_ne!(sha256_digest(&[got, rest.to_vec()].concat()), digest);
}

#[tokio::test]
async fn registry_faults_status_and_hang() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "latest", 1, 10);
    let auth = bearer(&reg, "library/alpine", None).await;
    let manifest_url = format!("{}/v2/library/alpine/manifests/latest", reg.url());

    reg.set_fault(Fault::Status {
        code: 429,
        retry_after: Some(7),
        path_contains: "/manifests/".into(),
    });
    let limited = get(&manifest_url, &[("authorization", &auth)]).await;
    assert_eq!(
        (limited.status, limited.error_code()),
        (429, "TOOMANYREQUESTS".into())
    );
    assert_eq!(limited.header("retry-after"), Some("7"));
    assert_eq!(
        get(&format!("{}/v2/", reg.url()), &[("authorization", &auth)])
            .await
            .status,
        200
    );
    reg.clear_faults();

    reg.set_fault(Fault::Status {
        code: 503,
        retry_after: None,
        path_contains: "/token".into(),
    });
    let unavailable = token_request(&reg, "library/alpine", None).await;
    assert_eq!(
        (unavailable.status, unavailable.error_code()),
        (503, "UNAVAILABLE".into())
    );
    assert_eq!(unavailable.header("retry-after"), None);
    reg.clear_faults();
    assert_eq!(
        get(&manifest_url, &[("authorization", &auth)]).await.status,
        200
    );

    reg.set_fault(Fault::HangHeaders {
        path_contains: "/manifests/".into(),
    });
    let hung = tokio::time::timeout(
        Duration::from_millis(300),
        try_send("GET", &manifest_url, &[("authorization", &auth)]),
    )
    .await;
    assert!(hung.is_err(), "a hung request must not be answered");
    tokio::time::timeout(
        PROMPTLY,
        reg.wait_for_requests("GET", "/manifests/latest", 3),
    )
    .await
    .expect("hung requests are still logged");
    assert_eq!(
        get(&format!("{}/v2/", reg.url()), &[("authorization", &auth)])
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn pass_held_lets_only_the_requests_held_so_far_go_on() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "latest", 1, 10);
    let auth = bearer(&reg, "library/alpine", None).await;
    let manifest_url = format!("{}/v2/library/alpine/manifests/latest", reg.url());
    reg.set_fault(Fault::Hold {
        path_contains: "/manifests/".into(),
    });
    let spawn = || {
        let (url, auth) = (manifest_url.clone(), auth.clone());
        tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await })
    };
    let first = spawn();
    tokio::time::timeout(PROMPTLY, reg.wait_held(1))
        .await
        .expect("the first request is held");
    reg.pass_held();
    assert_eq!(first.await.unwrap().status, 200, "passed");
    let second = spawn();
    tokio::time::timeout(PROMPTLY, reg.wait_held(1))
        .await
        .expect("the next request is held again, counted from zero");
    assert!(!second.is_finished(), "held until the gate opens again");
    assert_eq!(reg.count("GET", "/manifests/"), 1, "only the first was answered");
    reg.release_held();
    assert_eq!(second.await.unwrap().status, 200);
}

#[tokio::test]
async fn hold_keeps_requests_until_released_and_token_lifetimes_are_as_set() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "latest", 1, 10);
    let auth = bearer(&reg, "library/alpine", None).await;
    let manifest_url = format!("{}/v2/library/alpine/manifests/latest", reg.url());
    reg.set_fault(Fault::Hold {
        path_contains: "/manifests/".into(),
    });
    let held = {
        let (url, auth) = (manifest_url.clone(), auth.clone());
        tokio::spawn(async move { get(&url, &[("authorization", &auth)]).await })
    };
    tokio::time::timeout(PROMPTLY, reg.wait_held(1))
        .await
        .expect("the request is counted on arrival");
    assert!(!held.is_finished(), "a held request is not answered");
    assert_eq!(reg.count("GET", "/manifests/"), 0, "nor logged yet");
    assert_eq!(
        get(&format!("{}/v2/", reg.url()), &[("authorization", &auth)])
            .await
            .status,
        200,
        "other paths are not held"
    );
    reg.release_held();
    assert_eq!(held.await.unwrap().status, 200);
    reg.clear_faults();

    for (raw, want) in [
        (Some("18446744073709551615"), Some("18446744073709551615")),
        (Some("-1"), Some("-1")),
        (None, None),
    ] {
        reg.set_fault(Fault::TokenExpiresIn(raw.map(str::to_owned)));
        let resp = token_request(&reg, "library/alpine", None).await;
        let text = String::from_utf8_lossy(resp.bytes()).into_owned();
        match want {
            Some(w) => assert!(text.contains(&format!("\"expires_in\":{w}")), "{text}"),
            None => assert!(!text.contains("expires_in"), "{text}"),
        }
        assert!(resp.json()["token"].is_string(), "{text}");
        reg.clear_faults();
    }
}

#[tokio::test]
async fn stop_refuses_connections_and_restart_reuses_ports() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "latest", 1, 10);
    let auth = bearer(&reg, "library/alpine", None).await;
    let manifest_url = format!("{}/v2/library/alpine/manifests/latest", reg.url());
    let location = blob_location(&reg, "library/alpine", &image.layers[0].digest, &auth).await;

    reg.set_fault(Fault::HangHeaders {
        path_contains: "/manifests/".into(),
    });
    let hung = tokio::spawn({
        let (url, auth) = (manifest_url.clone(), auth.clone());
        async move {
            try_send("GET", &url, &[("authorization", &auth)])
                .await
                .map(|r| r.status)
        }
    });
    tokio::time::timeout(PROMPTLY, reg.wait_for_requests("GET", "/manifests/", 1))
        .await
        .expect("hung request reached the registry");
    reg.stop().await;
    let hung = tokio::time::timeout(PROMPTLY, hung)
        .await
        .expect("open connections are dropped");
    assert!(
        hung.expect("client task").is_err(),
        "the hung request fails once stopped"
    );
    for url in [reg.url(), reg.cdn_url()] {
        let addr = url.trim_start_matches("http://").to_string();
        let err = TcpStream::connect(&addr)
            .await
            .expect_err("stopped server refuses connections");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    reg.clear_faults();
    reg.restart().await;
    let ok = get(&manifest_url, &[("authorization", &auth)]).await;
    assert_eq!(
        ok.bytes(),
        image.manifest.bytes.as_slice(),
        "state and tokens survive a restart"
    );
    assert_eq!(
        get(&location, &[]).await.bytes(),
        image.layers[0].bytes.as_slice()
    );
}

#[tokio::test]
async fn image_builders_push_consistent_content() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3.19", 3, 5000);
    let manifest: Value = serde_json::from_slice(&image.manifest.bytes).expect("manifest JSON");
    assert_eq!(manifest["mediaType"], images::DOCKER_MANIFEST);
    assert_eq!(manifest["config"], image.config.descriptor());
    assert_eq!(manifest["config"]["mediaType"], images::DOCKER_CONFIG);
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 3);
    for (descriptor, layer) in layers.iter().zip(&image.layers) {
        assert_eq!(descriptor["size"], 5000);
        assert_eq!(
            descriptor["digest"].as_str(),
            Some(sha256_digest(&layer.bytes).as_str())
        );
    }
    assert_ne!(image.layers[0].bytes, image.layers[1].bytes);
    let auth = bearer(&reg, "library/alpine", None).await;
    for blob in image.blobs() {
        let location = blob_location(&reg, "library/alpine", &blob.digest, &auth).await;
        assert_eq!(get(&location, &[]).await.bytes(), blob.bytes.as_slice());
    }
    let again = images::schema2_image(
        &FakeRegistry::start().await,
        "library/alpine",
        "3.19",
        3,
        5000,
    );
    assert_eq!(
        again.manifest.digest, image.manifest.digest,
        "content is deterministic"
    );
    let other_tag = images::schema2_image(&reg, "library/alpine", "3.20", 3, 5000);
    assert_ne!(other_tag.manifest.digest, image.manifest.digest);

    let list = images::manifest_list(&reg, "library/alpine", "multi");
    let list_json: Value = serde_json::from_slice(&list.manifest.bytes).expect("list JSON");
    assert_eq!(list_json["mediaType"], images::DOCKER_LIST);
    let entries = list_json["manifests"].as_array().expect("manifests");
    let platforms: Vec<&str> = entries
        .iter()
        .map(|e| e["platform"]["architecture"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    assert_eq!(entries[1]["platform"]["variant"], "v8");
    for (entry, child) in entries.iter().zip(&list.children) {
        assert_eq!(
            entry["digest"].as_str(),
            Some(child.manifest.digest.as_str())
        );
        let url = format!(
            "{}/v2/library/alpine/manifests/{}",
            reg.url(),
            child.manifest.digest
        );
        assert_eq!(
            get(&url, &[("authorization", &auth)]).await.bytes(),
            child.manifest.bytes.as_slice()
        );
    }
    let list_url = format!("{}/v2/library/alpine/manifests/multi", reg.url());
    let served = get(
        &list_url,
        &[("authorization", &auth), ("accept", images::DOCKER_LIST)],
    )
    .await;
    assert_eq!(served.header("content-type"), Some(images::DOCKER_LIST));

    let index = images::oci_index_with_attestations(&reg, "library/alpine", "oci");
    let index_json: Value = serde_json::from_slice(&index.manifest.bytes).expect("index JSON");
    assert_eq!(index_json["mediaType"], images::OCI_INDEX);
    let entries = index_json["manifests"].as_array().expect("manifests");
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["mediaType"], images::OCI_MANIFEST);
    assert_eq!(
        entries[1]["platform"],
        serde_json::json!({"os": "unknown", "architecture": "unknown"})
    );
    assert_eq!(
        entries[1]["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        entries[1]["annotations"]["vnd.docker.reference.digest"],
        entries[0]["digest"]
    );
    assert_eq!(index.children[1].layers[0].media_type, images::IN_TOTO);
    let index_url = format!("{}/v2/library/alpine/manifests/oci", reg.url());
    let docker_only = [
        ("authorization", auth.as_str()),
        ("accept", images::DOCKER_LIST),
        ("accept", images::DOCKER_MANIFEST),
    ];
    assert_eq!(
        get(&index_url, &docker_only).await.status,
        404,
        "OCI index needs an OCI Accept"
    );
    let oci = get(
        &index_url,
        &[("authorization", &auth), ("accept", images::OCI_INDEX)],
    )
    .await;
    assert_eq!(oci.bytes(), index.manifest.bytes.as_slice());
}

#[tokio::test]
async fn manifest_faults_fallback_conversion_head_and_content_type() {
    use super::schema1;
    let reg = FakeRegistry::start().await;
    let list = images::manifest_list(&reg, "library/multi", "1");
    let image = images::schema2_image(&reg, "library/app", "1", 1, 10);
    let multi = bearer(&reg, "library/multi", None).await;
    let app = bearer(&reg, "library/app", None).await;
    let list_url = format!("{}/v2/library/multi/manifests/1", reg.url());
    let app_url = format!("{}/v2/library/app/manifests/1", reg.url());
    let v2_only = ("accept", images::DOCKER_MANIFEST);
    let s1_only = ("accept", schema1::SCHEMA1_SIGNED);

    // Without switches: a list isn't served to a schema2-only client, nor schema1 to a schema1 one.
    assert_eq!(get(&list_url, &[("authorization", &multi), v2_only]).await.status, 404);
    assert_eq!(get(&app_url, &[("authorization", &app), s1_only]).await.status, 404);

    reg.set_fault(Fault::PlatformFallback);
    let r = get(&list_url, &[("authorization", &multi), v2_only]).await;
    assert_eq!(r.header("docker-content-digest"), Some(list.children[0].manifest.digest.as_str()), "the linux/amd64 image");
    let by_digest = format!("{}/v2/library/multi/manifests/{}", reg.url(), list.manifest.digest);
    assert_eq!(get(&by_digest, &[("authorization", &multi), v2_only]).await.status, 404, "only tags fall back");

    reg.set_fault(Fault::Schema1OnTheFly);
    let payload = schema1::converted_payload("library/app", "1", &image.manifest.bytes).expect("schema2");
    let (a, b) = (get(&app_url, &[("authorization", &app), s1_only]).await, get(&app_url, &[("authorization", &app), s1_only]).await);
    for r in [&a, &b] {
        assert_eq!(r.header("content-type"), Some(schema1::SCHEMA1_SIGNED));
        assert_eq!(r.header("docker-content-digest"), Some(schema1::digest(&payload).as_str()));
        assert_eq!(schema1::open(r.bytes()), (payload.clone(), true), "a valid signature over the payload");
    }
    assert_ne!(a.bytes(), b.bytes(), "signed afresh each time");
    let converted = format!("{}/v2/library/app/manifests/{}", reg.url(), schema1::digest(&payload));
    assert_eq!(get(&converted, &[("authorization", &app), s1_only]).await.status, 404, "not by its digest");

    reg.set_fault(Fault::NoManifestHead);
    assert_eq!(send("HEAD", &app_url, &[("authorization", &app)]).await.status, 405);
    reg.set_fault(Fault::ManifestContentType("text/html".into()));
    let r = get(&app_url, &[("authorization", &app), v2_only]).await;
    assert_eq!((r.status, r.header("content-type")), (200, Some("text/html")));
    assert_eq!(r.bytes(), image.manifest.bytes.as_slice());
}
