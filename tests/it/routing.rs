//! Several upstreams behind one mirror: routing by `ns`, by path prefix, and refusing every other host.

use crate::it::mirror::{error_code, Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

async fn two_registries() -> (FakeRegistry, FakeRegistry, Mirror) {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let tail = format!("[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\nusername = \"ci\"\npassword = \"s3cret\"\n", ghcr.url());
    let m = Mirror::start_with(&hub, Options { credentials: true, tail, ..Default::default() }).await;
    (hub, ghcr, m)
}

#[tokio::test]
async fn ns_and_path_prefix_pick_the_upstream_and_content_never_mixes() {
    let (hub, ghcr, m) = two_registries().await;
    let on_hub = images::schema2_image(&hub, "org/app", "1", 1, 100);
    let on_ghcr = images::schema2_image(&ghcr, "org/app", "1", 2, 100);
    assert_ne!(on_hub.manifest.digest, on_ghcr.manifest.digest);

    let digest = |r: &reqwest::Response| r.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let plain = m.get_manifest("org/app", "1").await;
    assert_eq!(digest(&plain), on_hub.manifest.digest, "no ns, no prefix: the first upstream");
    let prefixed = m.get_manifest("ghcr.io/org/app", "1").await;
    assert_eq!(prefixed.status(), 200);
    assert_eq!(digest(&prefixed), on_ghcr.manifest.digest);
    let by_ns = m.get_manifest("org/app", "1?ns=ghcr.io").await;
    assert_eq!(digest(&by_ns), on_ghcr.manifest.digest);
    assert_eq!(by_ns.headers()["oci-namespace"], "ghcr.io");
    for alias in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
        let r = m.get_manifest("org/app", &format!("1?ns={alias}")).await;
        assert_eq!(digest(&r), on_hub.manifest.digest, "{alias} is Docker Hub");
    }
    // The tags stay apart after both were cached.
    assert_eq!(digest(&m.get_manifest("org/app", "1").await), on_hub.manifest.digest);
    assert_eq!(digest(&m.get_manifest("ghcr.io/org/app", "1").await), on_ghcr.manifest.digest);
    let (_, bytes) = m.blob("ghcr.io/org/app", &on_ghcr.layers[1].digest).await.unwrap();
    assert!(bytes == on_ghcr.layers[1].bytes);
    assert_eq!(ghcr.cdn_count(&on_ghcr.layers[1].digest), 1);
}

#[tokio::test]
async fn tag_pages_link_back_through_the_same_route() {
    let (_hub, ghcr, m) = two_registries().await;
    for t in ["a", "b", "c"] {
        images::schema2_image(&ghcr, "org/app", t, 1, 10);
    }
    let resp = m.get("/v2/ghcr.io/org/app/tags/list?n=2").await;
    assert_eq!(resp.headers()["link"], "</v2/ghcr.io/org/app/tags/list?last=b&n=2>; rel=\"next\"");
    let resp = m.get("/v2/org/app/tags/list?n=2&ns=ghcr.io").await;
    assert_eq!(resp.headers()["link"], "</v2/org/app/tags/list?last=b&n=2&ns=ghcr.io>; rel=\"next\"");
    let v: serde_json::Value = m.get("/v2/ghcr.io/org/app/tags/list?last=b&n=2").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["c"]));
}

#[tokio::test]
async fn other_hosts_are_404_and_cause_no_connection() {
    let (hub, ghcr, m) = two_registries().await;
    let d = format!("sha256:{}", "a".repeat(64));
    for path in [
        "/v2/library/alpine/manifests/3?ns=169.254.169.254".to_owned(),
        "/v2/library/alpine/manifests/3?ns=evil.example".to_owned(),
        "/v2/evil.example/library/alpine/manifests/3".to_owned(),
        format!("/v2/169.254.169.254/x/blobs/{d}"),
        "/v2/localhost/x/tags/list".to_owned(),
        "/v2/quay.io/org/app/manifests/1".to_owned(),
    ] {
        let (status, code) = error_code(m.get(&path).await).await;
        assert_eq!((status.as_u16(), code.as_str()), (404, "NAME_UNKNOWN"), "{path}");
    }
    assert!(hub.requests().is_empty() && ghcr.requests().is_empty());
    let (status, code) = error_code(m.get("/v2/ghcr.io/manifests/1").await).await;
    assert_eq!((status.as_u16(), code.as_str()), (400, "NAME_INVALID"), "a prefix with no name after it");
}

#[tokio::test]
async fn referrers_fall_back_to_the_tag_schema() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let m = Mirror::start(&reg).await;
    let path = format!("/v2/alpine/referrers/{}", image.manifest.digest);
    let resp = m.get(&path).await;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"], serde_json::json!([]), "no referrers: an empty index");

    let sig = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "1".repeat(64)), "size": 10, "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", "2".repeat(64)), "size": 10, "artifactType": "application/spdx+json"}
        ]
    });
    let tag = image.manifest.digest.replace(':', "-");
    reg.put_manifest("library/alpine", Some(&tag), "application/vnd.oci.image.index.v1+json", serde_json::to_vec(&sig).unwrap());
    let resp = m.get(&path).await;
    assert_eq!(resp.headers()["content-type"], "application/vnd.oci.image.index.v1+json");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "a signature added later is seen");
    let resp = m.get(&format!("{path}?artifactType=application%2Fspdx%2Bjson")).await;
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(v["manifests"][0]["artifactType"], "application/spdx+json");

    reg.stop().await;
    let v: serde_json::Value = m.get(&path).await.json().await.unwrap();
    assert_eq!(v["manifests"].as_array().unwrap().len(), 2, "served from the cache while upstream is down");
}

#[tokio::test]
async fn referrers_come_from_the_upstreams_referrers_api_and_filter_by_artifact_type() {
    const SIG: &str = "application/vnd.dev.cosign.artifact.sig.v1+json";
    const SBOM: &str = "application/spdx+json";
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let (sig, sbom) = (format!("sha256:{}", "1".repeat(64)), format!("sha256:{}", "2".repeat(64)));
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": images::OCI_INDEX,
        "manifests": [
            {"mediaType": images::OCI_MANIFEST, "digest": sig, "size": 10, "artifactType": SIG},
            {"mediaType": images::OCI_MANIFEST, "digest": sbom, "size": 10, "artifactType": SBOM,
             "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}}
        ]
    });
    reg.put_referrers("library/alpine", &image.manifest.digest, serde_json::to_vec(&list).unwrap());
    let m = Mirror::start(&reg).await;
    let path = format!("/v2/alpine/referrers/{}", image.manifest.digest);

    let resp = m.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], images::OCI_INDEX);
    assert!(resp.headers().get("oci-filters-applied").is_none(), "nothing filtered");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v, list, "the upstream's list as it sent it");
    let asked = reg.requests().into_iter().filter(|s| s.path_and_query.contains("/referrers/") && s.authorization.is_some());
    assert_eq!(asked.count(), 1, "asked upstream's referrers API once (after its 401 without a token)");
    assert_eq!(reg.count("GET", "/manifests/sha256-"), 0, "no fallback to the tag schema: {:?}", reg.requests());

    let resp = m.get(&format!("{path}?artifactType=application%2Fspdx%2Bjson")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["manifests"], serde_json::json!([list["manifests"][1]]), "only the SBOM, annotations kept");

    reg.stop().await;
    let v: serde_json::Value = m.get(&path).await.json().await.unwrap();
    assert_eq!(v, list, "the last answer is served while upstream is down");
}
