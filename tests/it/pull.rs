//! Cold and warm pulls of every manifest format, and what reached the upstream and the CDN.

use crate::it::mirror::{error_code, Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images::{self, Image};

/// Pull an image the way Docker does: manifest by tag, then every blob. Returns the manifest digest.
async fn pull(m: &Mirror, name: &str, tag: &str, image: &Image) -> String {
    let resp = m.get_manifest(name, tag).await;
    assert_eq!(resp.status(), 200, "manifest {name}:{tag}");
    let h = resp.headers().clone();
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.as_ref(), image.manifest.bytes.as_slice(), "manifest bytes are kept exactly");
    assert_eq!(h["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(h["content-type"], image.manifest.media_type.as_str());
    assert_eq!(h["content-length"], image.manifest.bytes.len().to_string().as_str());
    assert_eq!(h["etag"], format!("\"{}\"", image.manifest.digest).as_str());
    for blob in image.blobs() {
        let (status, bytes) = m.blob(name, &blob.digest).await.expect("blob body");
        assert_eq!(status, 200);
        assert!(bytes == blob.bytes, "blob {} bytes", blob.digest);
    }
    image.manifest.digest.clone()
}

#[tokio::test]
async fn base_endpoint() {
    let reg = FakeRegistry::start().await;
    let m = Mirror::start(&reg).await;
    let resp = m.get("/v2/").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-distribution-api-version"], "registry/2.0");
    assert_eq!(resp.text().await.unwrap(), "{}");
    assert!(reg.requests().is_empty(), "/v2/ is answered locally");
}

#[tokio::test]
async fn cold_pull_fetches_each_blob_once_and_warm_pull_none() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 3, 100_000);
    let m = Mirror::start(&reg).await;

    pull(&m, "alpine", "3", &image).await;
    for blob in image.blobs() {
        assert_eq!(reg.cdn_count(&blob.digest), 1, "cold pull fetches {} once", blob.digest);
    }
    assert!(reg.cdn_requests().iter().all(|r| r.authorization.is_none()), "the CDN never sees Authorization");

    reg.clear_log();
    pull(&m, "alpine", "3", &image).await;
    assert!(reg.cdn_requests().is_empty(), "warm pull downloads nothing: {:?}", reg.cdn_requests());
    let seen: Vec<String> = reg.requests().iter().map(|r| format!("{} {}", r.method, r.path_and_query)).collect();
    assert_eq!(
        seen,
        vec!["HEAD /v2/library/alpine/manifests/3".to_owned()],
        "a warm pull by tag costs one HEAD and no token request"
    );
    // By digest: nothing reaches upstream at all.
    reg.clear_log();
    let resp = m.get_manifest("alpine", &image.manifest.digest).await;
    assert_eq!(resp.status(), 200);
    assert!(reg.requests().is_empty());
}

#[tokio::test]
async fn docker_hub_names_get_library_prefix_and_explicit_library_works() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/busybox", "1", 1, 1000);
    let m = Mirror::start(&reg).await;
    pull(&m, "library/busybox", "1", &image).await;
    pull(&m, "busybox", "1", &image).await;
    assert_eq!(reg.cdn_count(&image.layers[0].digest), 1);
}

#[tokio::test]
async fn every_accept_line_goes_upstream() {
    let reg = FakeRegistry::start().await;
    let index = images::oci_index_with_attestations(&reg, "library/app", "1");
    let m = Mirror::start(&reg).await;
    // The OCI index type is only on the second line: forwarding just the first would get a 404.
    let resp = Mirror::client()
        .get(format!("{}/v2/app/manifests/1", m.url))
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .header("accept", "application/vnd.oci.image.index.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), index.manifest.bytes.as_slice());
    let get = reg.requests().into_iter().find(|r| r.method == "GET" && r.path_and_query.contains("/manifests/")).unwrap();
    assert!(get.accept.iter().any(|a| a.contains("oci.image.index")), "{:?}", get.accept);
}

#[tokio::test]
async fn no_accept_means_every_manifest_type() {
    let reg = FakeRegistry::start().await;
    images::manifest_list(&reg, "library/multi", "1");
    let m = Mirror::start(&reg).await;
    let resp = m.get("/v2/multi/manifests/1").await;
    assert_eq!(resp.status(), 200);
    let head = reg.requests().into_iter().find(|r| r.path_and_query.contains("/manifests/")).unwrap();
    assert_eq!(head.accept.len(), 6, "{:?}", head.accept);
}

#[tokio::test]
async fn manifest_list_and_oci_index_with_attestations() {
    let reg = FakeRegistry::start().await;
    let list = images::manifest_list(&reg, "library/multi", "1");
    let index = images::oci_index_with_attestations(&reg, "library/oci", "1");
    let m = Mirror::start(&reg).await;
    for (name, idx) in [("multi", &list), ("oci", &index)] {
        let resp = m.get_manifest(name, &idx.tag).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], idx.manifest.media_type.as_str());
        assert_eq!(resp.bytes().await.unwrap().as_ref(), idx.manifest.bytes.as_slice());
        for child in &idx.children {
            let d = pull(&m, name, &child.manifest.digest, child).await;
            assert_eq!(d, child.manifest.digest);
        }
    }
    assert!(index.children.iter().any(|c| c.platform == "unknown/unknown"), "the index carries an attestation");
}

#[tokio::test]
async fn head_manifest_answers_headers_only() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    // Cold HEAD by tag: answered from upstream's HEAD, no GET (Docker Hub counts GETs as pulls).
    let resp = m.manifest_request(reqwest::Method::HEAD, "alpine", "3").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(resp.headers()["content-length"], image.manifest.bytes.len().to_string().as_str());
    assert_eq!(reg.count("GET", "/manifests/"), 0);
    // Warm HEAD: same headers.
    pull(&m, "alpine", "3", &image).await;
    let resp = m.head("/v2/alpine/manifests/3").await;
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert_eq!(resp.headers()["content-length"], image.manifest.bytes.len().to_string().as_str());
}

#[tokio::test]
async fn moved_tag_is_followed() {
    let reg = FakeRegistry::start().await;
    let v1 = images::schema2_image(&reg, "library/app", "latest", 1, 10);
    let m = Mirror::start(&reg).await;
    pull(&m, "app", "latest", &v1).await;
    let v2 = images::schema2_image(&reg, "library/app", "latest", 2, 10);
    assert_ne!(v1.manifest.digest, v2.manifest.digest);
    pull(&m, "app", "latest", &v2).await;
}

#[tokio::test]
async fn private_repository_uses_regcache_credentials() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "private/app", "1", 2, 1000);
    reg.make_private("private/app");
    let m = Mirror::start(&reg).await;
    // The client sends its own (wrong) credentials: they are ignored, never forwarded.
    let resp = m
        .manifest_request(reqwest::Method::GET, "private/app", "1")
        .header("authorization", "Basic Y2xpZW50OmNsaWVudHB3")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    pull(&m, "private/app", "1", &image).await;
    let tokens = reg.token_requests();
    assert!(!tokens.is_empty());
    assert!(tokens.iter().all(|t| t.authorization.as_deref().is_some_and(|a| a.starts_with("Basic ") && !a.contains("Y2xpZW50OmNsaWVudHB3"))));
    assert!(reg.requests().iter().all(|r| r.authorization.as_deref() != Some("Basic Y2xpZW50OmNsaWVudHB3")));
    assert!(reg.cdn_requests().iter().all(|r| r.authorization.is_none()));

    // Without credentials regcache can't get it, and says so with a 403.
    let anon = Mirror::start_with(&reg, Options::default()).await;
    let (status, code) = error_code(anon.get_manifest("private/app", "1").await).await;
    assert_eq!((status.as_u16(), code.as_str()), (403, "DENIED"));
}

#[tokio::test]
async fn cached_content_survives_restart() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 5000);
    let dir = tempfile::tempdir().unwrap();
    let opts = Options { credentials: true, data_dir: Some(dir.path().to_owned()), ..Default::default() };
    let mut m = Mirror::start_with(&reg, opts.clone()).await;
    pull(&m, "alpine", "3", &image).await;
    m.shutdown().await;
    drop(m);
    reg.stop().await;
    let m = Mirror::start_with(&reg, opts).await;
    pull(&m, "alpine", "3", &image).await;
    pull(&m, "alpine", &image.manifest.digest, &image).await;
}

