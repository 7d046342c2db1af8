//! A tag's answer depends on the client's Accept: remembered per kind of answer (index, image,
//! schema1), revalidated when this client would get another kind; upstreams without manifest
//! HEAD, and upstreams that convert on the fly.

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
