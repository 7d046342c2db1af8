//! Freshness policy: `tag_ttl`, stale-if-error within and beyond `stale_max`, tag lists when upstream is down.

use crate::it::mirror::{error_code, Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

fn with(extra: &str) -> Options {
    Options { credentials: true, extra: extra.into(), ..Default::default() }
}

#[tokio::test]
async fn within_tag_ttl_upstream_is_not_asked() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start_with(&reg, with("tag_ttl = \"1h\"")).await;
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    reg.clear_log();
    let resp = m.get_manifest("library/alpine", "3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert!(reg.requests().is_empty(), "{:?}", reg.requests());
}

#[tokio::test]
async fn default_ttl_revalidates_every_time() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    for _ in 0..3 {
        assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    }
    assert_eq!(reg.count("HEAD", "/manifests/3"), 3 + 1, "one HEAD per request (plus the first 401)");
}

#[tokio::test]
async fn stale_within_stale_max_carries_a_warning() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    reg.stop().await;
    let resp = m.get_manifest("alpine", "3").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert!(resp.headers()["warning"].to_str().unwrap().starts_with("110"));
}

#[tokio::test]
async fn beyond_stale_max_the_upstream_error_is_returned() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start_with(&reg, with("stale_max = \"0s\"")).await;
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    reg.stop().await;
    let (status, _) = error_code(m.get_manifest("alpine", "3").await).await;
    assert_eq!(status.as_u16(), 502);
}

#[tokio::test]
async fn tag_list_falls_back_to_known_tags() {
    let reg = FakeRegistry::start().await;
    for t in ["1", "2", "3"] {
        images::schema2_image(&reg, "library/alpine", t, 1, 10);
    }
    let m = Mirror::start(&reg).await;
    for t in ["1", "3"] {
        assert_eq!(m.get_manifest("alpine", t).await.status(), 200);
    }
    reg.stop().await;
    let resp = m.get("/v2/alpine/tags/list").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("warning"));
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["1", "3"]));
    let v: serde_json::Value = m.get("/v2/alpine/tags/list?n=1&last=1").await.json().await.unwrap();
    assert_eq!(v["tags"], serde_json::json!(["3"]));
    let (status, _) = error_code(m.get("/v2/never/tags/list").await).await;
    assert_eq!(status.as_u16(), 502);
}
