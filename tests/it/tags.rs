//! A tag's answer depends on the client's Accept: remembered per kind of answer (index, image,
//! schema1), revalidated when this client would get another kind; upstreams without manifest
//! HEAD, and upstreams that convert on the fly. Tag lists: what the upstream listed is listed the
//! same while it is down.

use crate::it::mirror::{Mirror, Options};
use crate::support::fake_registry::{FakeRegistry, Fault};
use crate::support::images::{self, DOCKER_MANIFEST};
use crate::support::schema1::{self, SCHEMA1_SIGNED};

/// The digest a GET of `name:tag` answers with, for a Docker client or one accepting only `accept`.
async fn digest_for(m: &Mirror, name: &str, tag: &str, accept: Option<&str>) -> (u16, String, Option<String>) {
    let resp = match accept {
        None => m.get_manifest(name, tag).await,
        Some(a) => Mirror::client()
            .get(format!("{}/v2/{name}/manifests/{tag}", m.url))
            .header("accept", a)
            .send()
            .await
            .unwrap(),
    };
    let digest = resp.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let warning = resp.headers().get("warning").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), digest, warning)
}

#[tokio::test]
async fn within_tag_ttl_each_kind_of_client_gets_its_own_answer() {
    let reg = FakeRegistry::start().await;
    reg.set_fault(Fault::PlatformFallback);
    let list = images::manifest_list(&reg, "library/multi", "1");
    let amd64 = list.children[0].manifest.digest.clone();
    assert_eq!(list.children[0].platform, "linux/amd64");
    let m = Mirror::start_with(&reg, Options { credentials: true, extra: "tag_ttl = \"1h\"".into(), ..Default::default() }).await;

    // An old client (schema2 only) first: upstream gives it the amd64 image.
    assert_eq!(digest_for(&m, "multi", "1", Some(DOCKER_MANIFEST)).await, (200, amd64.clone(), None));
    // A client accepting lists must get the list, not the image the old client caused.
    assert_eq!(digest_for(&m, "multi", "1", None).await, (200, list.manifest.digest.clone(), None));
    // Both kinds are now remembered: within tag_ttl neither asks upstream.
    reg.clear_log();
    assert_eq!(digest_for(&m, "multi", "1", Some(DOCKER_MANIFEST)).await, (200, amd64, None));
    assert_eq!(digest_for(&m, "multi", "1", None).await, (200, list.manifest.digest.clone(), None));
    assert!(reg.requests().is_empty(), "{:?}", reg.requests());
}

#[tokio::test]
async fn stale_answers_keep_to_the_kind_each_client_asked_for() {
    let reg = FakeRegistry::start().await;
    reg.set_fault(Fault::PlatformFallback);
    let list = images::manifest_list(&reg, "library/multi", "1");
    let amd64 = list.children[0].manifest.digest.clone();
    let m = Mirror::start(&reg).await;
    assert_eq!(digest_for(&m, "multi", "1", None).await.1, list.manifest.digest);
    assert_eq!(digest_for(&m, "multi", "1", Some(DOCKER_MANIFEST)).await.1, amd64);
    reg.stop().await;
    let (status, digest, warning) = digest_for(&m, "multi", "1", None).await;
    assert_eq!((status, digest), (200, list.manifest.digest.clone()), "a multi-arch client still gets the list");
    assert!(warning.is_some_and(|w| w.starts_with("110")));
    let (status, digest, _) = digest_for(&m, "multi", "1", Some(DOCKER_MANIFEST)).await;
    assert_eq!((status, digest), (200, amd64));
}

#[tokio::test]
async fn an_upstream_without_manifest_head_is_asked_with_get() {
    let reg = FakeRegistry::start().await;
    reg.set_fault(Fault::NoManifestHead);
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    let head = m.manifest_request(reqwest::Method::HEAD, "alpine", "3").send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(head.headers()["content-length"], image.manifest.bytes.len().to_string().as_str());
    for _ in 0..2 {
        assert_eq!(digest_for(&m, "alpine", "3", None).await, (200, image.manifest.digest.clone(), None));
    }
    let head = m.manifest_request(reqwest::Method::HEAD, "alpine", "3").send().await.unwrap();
    assert_eq!(head.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(reg.count("HEAD", "/manifests/"), 1 + 1, "one refused HEAD (plus the first 401): the refusal is remembered");
    assert_eq!(reg.count("GET", "/manifests/3"), 4, "each request revalidates with a GET");
}

#[tokio::test]
async fn a_tag_converted_on_the_fly_is_fetched_by_tag_and_checked_against_the_head() {
    let reg = FakeRegistry::start().await;
    reg.set_fault(Fault::Schema1OnTheFly);
    let image = images::schema2_image(&reg, "library/app", "1", 2, 100);
    let m = Mirror::start(&reg).await;
    let payload = schema1::converted_payload("library/app", "1", &image.manifest.bytes).unwrap();
    let want = schema1::digest(&payload);
    let resp = Mirror::client().get(format!("{}/v2/app/manifests/1", m.url)).header("accept", SCHEMA1_SIGNED).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], want.as_str());
    assert_eq!(resp.headers()["content-type"], SCHEMA1_SIGNED);
    let body = resp.bytes().await.unwrap();
    assert_eq!(schema1::open(&body), (payload, true));
    assert_eq!(reg.count("GET", &format!("/manifests/{want}")), 0, "the conversion is not asked for by digest");
    // By digest it is now a hit; upstream could not have answered it.
    reg.clear_log();
    let resp = Mirror::client().get(format!("{}/v2/app/manifests/{want}", m.url)).header("accept", SCHEMA1_SIGNED).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), body);
    assert!(reg.requests().is_empty());
    // Docker's client still gets the schema2 image for the same tag.
    assert_eq!(digest_for(&m, "app", "1", None).await.1, image.manifest.digest);
}

/// How a client lists `alpine`'s tags: whole, page by page, from a tag (one that isn't, too).
pub const LISTINGS: [&str; 12] =
    ["", "?n=2", "?n=2&last=b", "?n=2&last=d", "?n=3", "?n=3&last=c", "?n=3&last=a", "?last=c", "?last=bb", "?last=e", "?n=10", "?n=0"];

/// One answer to `GET /v2/alpine/tags/list<query>`.
#[derive(Debug, PartialEq)]
pub struct Listing {
    pub query: String,
    pub status: u16,
    pub body: serde_json::Value,
    pub link: Option<String>,
}

/// The answer to `query`, and whether it came with a `Warning` (stale).
pub async fn listing(m: &Mirror, query: &str) -> (Listing, bool) {
    let resp = m.get(&format!("/v2/alpine/tags/list{query}")).await;
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (status, link, stale) = (resp.status().as_u16(), header("link"), header("warning").is_some());
    let body = resp.json().await.unwrap();
    (Listing { query: query.to_owned(), status, body, link }, stale)
}

/// The answers to every one of [`LISTINGS`], each asserted stale (or not).
pub async fn listings(m: &Mirror, stale: bool) -> Vec<Listing> {
    let mut out = Vec::new();
    for query in LISTINGS {
        let (l, was_stale) = listing(m, query).await;
        assert_eq!(was_stale, stale, "{l:?}");
        out.push(l);
    }
    out
}

/// An upstream whose `library/alpine` has the tags a to e.
pub async fn alpine_tagged_a_to_e(fault: Option<Fault>) -> FakeRegistry {
    let reg = FakeRegistry::start().await;
    for t in ["c", "a", "e", "b", "d"] {
        reg.put_manifest("library/alpine", Some(t), DOCKER_MANIFEST, format!("{{\"t\":\"{t}\"}}").into_bytes());
    }
    if let Some(f) = fault {
        reg.set_fault(f);
    }
    reg
}

#[tokio::test]
async fn tags_listed_online_are_listed_the_same_while_the_upstream_is_down() {
    let reg = alpine_tagged_a_to_e(None).await;
    let m = Mirror::start(&reg).await;
    let online = listings(&m, false).await;
    assert_eq!(online[0].body, serde_json::json!({"name": "alpine", "tags": ["a", "b", "c", "d", "e"]}));
    assert_eq!(online[1].link.as_deref(), Some("</v2/alpine/tags/list?last=b&n=2>; rel=\"next\""));
    reg.stop().await;
    assert_eq!(listings(&m, true).await, online, "offline, every answer as it was online");

    // However a client listed them online: whole or page by page, from an upstream that pages
    // as asked or one with pages of 2 of its own (followed by regcache for the page asked).
    let cases: [(&str, Option<Fault>, &[&str]); 4] = [
        ("whole", None, &[""]),
        ("page by page", None, &["?n=2", "?n=2&last=b", "?n=2&last=d"]),
        ("whole, upstream pages of 2", Some(Fault::TagsPageSize(2)), &[""]),
        ("pages of 3, upstream pages of 2", Some(Fault::TagsPageSize(2)), &["?n=3", "?n=3&last=c"]),
    ];
    for (how, fault, read) in cases {
        let reg = alpine_tagged_a_to_e(fault).await;
        let m = Mirror::start(&reg).await;
        for query in read {
            let (got, _) = listing(&m, query).await;
            let want = online.iter().find(|l| l.query == *query).unwrap();
            assert_eq!(&got, want, "{how}: online");
        }
        if how == "whole, upstream pages of 2" {
            assert_eq!((reg.count("GET", "tags/list?last=b"), reg.count("GET", "tags/list?last=d")), (1, 1), "{how}: {:?}", reg.requests());
        }
        reg.stop().await;
        assert_eq!(listings(&m, true).await, online, "{how}: offline");
    }
}

#[tokio::test]
async fn offline_a_tag_list_adds_the_tags_resolved_since() {
    let reg = FakeRegistry::start().await;
    for t in ["1", "2", "3"] {
        images::schema2_image(&reg, "library/alpine", t, 1, 10);
    }
    let m = Mirror::start(&reg).await;
    let v: serde_json::Value = m.get("/v2/alpine/tags/list").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1", "2", "3"]));
    // A tag pushed since, and pulled through the mirror.
    images::schema2_image(&reg, "library/alpine", "4", 1, 10);
    assert_eq!(m.get_manifest("alpine", "4").await.status(), 200);
    reg.stop().await;
    let resp = m.get("/v2/alpine/tags/list").await;
    assert!(resp.headers()["warning"].to_str().unwrap().starts_with("110"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1", "2", "3", "4"]));
    let resp = m.get("/v2/alpine/tags/list?n=2&last=1").await;
    assert_eq!(resp.headers()["link"], "</v2/alpine/tags/list?last=3&n=2>; rel=\"next\"");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["2", "3"]));
}
