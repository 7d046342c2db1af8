//! Manifests are verified by regcache, never taken on an upstream's word: digests are computed
//! here (schema1 by its JWS payload), the served type comes from the manifest, and one upstream
//! can't replace what another one's clients get.

use regcache::store::Store;

use crate::it::mirror::{error_code, Mirror, Options, DOCKER_ACCEPT};
use crate::support::fake_registry::{FakeRegistry, Fault};
use crate::support::images::{self, DOCKER_LIST};
use crate::support::schema1::{self, SCHEMA1_SIGNED};

/// GET `reference` of `name` accepting Docker's types plus signed schema1, with an optional `?ns=`.
async fn get(m: &Mirror, name: &str, reference: &str, ns: Option<&str>) -> reqwest::Response {
    let query = ns.map(|n| format!("?ns={n}")).unwrap_or_default();
    let mut req = Mirror::client().get(format!("{}/v2/{name}/manifests/{reference}{query}", m.url));
    for a in DOCKER_ACCEPT.iter().chain([&SCHEMA1_SIGNED]) {
        req = req.header("accept", *a);
    }
    req.send().await.expect("request")
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()[name].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_hostile_upstream_cannot_poison_another_upstreams_digest() {
    let a = FakeRegistry::start().await;
    let b = FakeRegistry::start().await;
    let tail = format!("[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\nusername = \"ci\"\npassword = \"s3cret\"\n", b.url());
    let mut m = Mirror::start_with(&a, Options { credentials: true, tail, ..Default::default() }).await;
    let list = images::manifest_list(&a, "org/app", "1");
    let target = list.manifest.digest.clone();

    // B answers A's digest (and its own tag pointing there) with its own bytes, calling them
    // signed schema1, whose digest regcache used to take on the upstream's word.
    let evil = br#"{"schemaVersion":1,"name":"org/app","tag":"1","fsLayers":[],"history":[]}"#.to_vec();
    b.put_manifest_as("org/app", Some("1"), SCHEMA1_SIGNED, evil, &target);
    for reference in [target.as_str(), "1"] {
        let (status, code) = error_code(get(&m, "org/app", reference, Some("ghcr.io")).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"), "schema1 Content-Type, {reference}");
    }
    // B answers with A's exact bytes but a Content-Type of its choosing.
    b.put_manifest_as("org/app", Some("1"), DOCKER_LIST, list.manifest.bytes.clone(), &target);
    b.set_fault(Fault::ManifestContentType("text/html".into()));
    for reference in [target.as_str(), "1"] {
        let (status, code) = error_code(get(&m, "org/app", reference, Some("ghcr.io")).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"), "wrong Content-Type, {reference}");
    }

    // A's clients get A's bytes and type, by digest and by tag, warm and with A stopped.
    for round in ["cold", "warm", "upstream stopped"] {
        if round == "upstream stopped" {
            a.stop().await;
        }
        for reference in [target.as_str(), "1"] {
            let resp = get(&m, "org/app", reference, None).await;
            assert_eq!(resp.status(), 200, "{round} {reference}");
            assert_eq!(header(&resp, "docker-content-digest"), target, "{round} {reference}");
            assert_eq!(header(&resp, "content-type"), DOCKER_LIST, "{round} {reference}");
            assert_eq!(resp.bytes().await.unwrap().as_ref(), list.manifest.bytes.as_slice(), "{round} {reference}");
        }
    }
    m.shutdown().await;
    let store = Store::open(&m.data_dir).unwrap();
    let v = store.verify(|_, _| {}).unwrap();
    assert!(v.corrupt.is_empty(), "{:?}", v.corrupt);
}

#[tokio::test]
async fn manifest_bytes_that_do_not_match_the_digest_asked_for_are_refused_and_nothing_stored() {
    let reg = FakeRegistry::start().await;
    let wanted = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let other = images::schema2_image(&reg, "library/alpine", "other", 1, 10);
    let digest = wanted.manifest.digest.clone();
    // The upstream answers the digest (and the tag pointing at it) with another manifest's bytes:
    // well-formed, of the right type, but not what the digest names.
    reg.put_manifest_as("library/alpine", Some("3"), images::DOCKER_MANIFEST, other.manifest.bytes.clone(), &digest);
    let mut m = Mirror::start(&reg).await;
    for reference in [digest.as_str(), "3"] {
        let (status, code) = error_code(m.get_manifest("alpine", reference).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"), "{reference}");
    }
    assert!(reg.count("GET", &format!("/manifests/{digest}")) >= 1, "the bytes were fetched and looked at");
    reg.stop().await;
    let resp = m.get_manifest("alpine", &digest).await;
    assert_ne!(resp.status(), 200, "nothing was stored to serve while upstream is down");
    m.shutdown().await;
    let store = Store::open(&m.data_dir).unwrap();
    for d in [&digest, &other.manifest.digest] {
        assert!(store.index().manifest(&d.parse().unwrap()).unwrap().is_none(), "{d} not in the index");
    }
}

#[tokio::test]
async fn a_content_type_that_contradicts_the_manifest_is_refused_and_nothing_stored() {
    let reg = FakeRegistry::start().await;
    let index = images::oci_index_with_attestations(&reg, "library/app", "1");
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::ManifestContentType("text/html".into()));
    let (status, code) = error_code(m.get_manifest("app", "1").await).await;
    assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"));
    let (status, code) = error_code(m.get_manifest("app", &index.manifest.digest).await).await;
    assert_eq!((status.as_u16(), code.as_str()), (502, "MANIFEST_INVALID"));
    reg.stop().await;
    let resp = m.get_manifest("app", &index.manifest.digest).await;
    assert_ne!(resp.status(), 200, "nothing was stored");
}

#[tokio::test]
async fn a_signed_schema1_manifest_is_served_by_tag_and_by_payload_digest() {
    let reg = FakeRegistry::start().await;
    let image = images::schema1_image(&reg, "library/old", "1");
    let (payload, signed_ok) = schema1::open(&image.manifest.bytes);
    assert!(signed_ok, "the fixture carries a valid ES256 signature");
    assert_eq!(payload, image.payload);
    assert_ne!(image.manifest.digest, crate::support::fake_registry::sha256_digest(&image.manifest.bytes));
    let m = Mirror::start(&reg).await;
    let schema1_client = |reference: &str| {
        Mirror::client()
            .get(format!("{}/v2/old/manifests/{reference}", m.url))
            .header("accept", SCHEMA1_SIGNED)
            .send()
    };
    for round in ["cold", "warm", "upstream stopped"] {
        if round == "upstream stopped" {
            reg.stop().await;
        }
        for reference in ["1", image.manifest.digest.as_str()] {
            let resp = schema1_client(reference).await.unwrap();
            assert_eq!(resp.status(), 200, "{round} {reference}");
            assert_eq!(header(&resp, "docker-content-digest"), image.manifest.digest, "{round} {reference}");
            assert_eq!(header(&resp, "content-type"), SCHEMA1_SIGNED, "{round} {reference}");
            assert_eq!(resp.bytes().await.unwrap().as_ref(), image.manifest.bytes.as_slice(), "{round} {reference}");
        }
    }
    assert_eq!(reg.count("GET", "/manifests/"), 1, "one GET, by tag; the digest is then a hit");
}
