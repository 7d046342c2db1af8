//! The status page: `/status.json`'s fields as requests are made, a fill shown while it runs (the
//! fake CDN holds the blob half-way), served where `/metrics` is under the same rule, and no
//! credential in it.

use std::time::Duration;

use serde_json::Value;

use crate::it::mirror::{eventually, htpasswd_access, spawn_get, Mirror, Options, PROMPTLY};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

async fn status_json(m: &Mirror) -> Value {
    let resp = m.get("/status.json").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    resp.json().await.expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_counts_requests_hits_bytes_and_repositories() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 50_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;

    let s = status_json(&m).await;
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].is_u64(), "{s}");
    let c = &s["cache"];
    for (field, want) in [("size_bytes", 0), ("blobs", 0), ("manifests", 0), ("requests", 0), ("hits", 0), ("bytes_served", 0), ("bytes_from_upstream", 0)] {
        assert_eq!(c[field], want, "{field}: {s}");
    }
    assert_eq!(c["max_size_bytes"], Value::Null, "uncapped");
    assert_eq!(c["hit_ratio"], 0.0);
    assert_eq!(s["fills"], serde_json::json!([]));
    assert_eq!(s["top_repositories"], serde_json::json!([]));
    assert_eq!((&s["bucket"], &s["fleet"]), (&Value::Null, &Value::Null));
    let up = &s["upstreams"][0];
    assert_eq!((&up["name"], &up["state"], &up["last_error"], &up["ratelimit_remaining"]), (&"docker.io".into(), &"up".into(), &Value::Null, &Value::Null));
    assert_eq!(up["url"], format!("{}/", reg.url()));

    // A cold pull of the layer (a miss), then the same again (a hit).
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    assert!(spawn_get(&url).await.unwrap() == layer.bytes);
    m.wait_stored(&layer.digest).await;
    assert!(spawn_get(&url).await.unwrap() == layer.bytes);
    let s = status_json(&m).await;
    let c = &s["cache"];
    assert_eq!((&c["requests"], &c["hits"], &c["hit_ratio"]), (&2.into(), &1.into(), &0.5.into()), "{s}");
    assert_eq!(c["bytes_served"], 100_000, "{s}");
    assert!(c["bytes_from_upstream"].as_u64().unwrap() >= 50_000, "{s}");
    assert_eq!((&c["blobs"], &c["size_bytes"]), (&1.into(), &50_000.into()), "{s}");
    let top = &s["top_repositories"][0];
    assert_eq!((&top["upstream"], &top["repository"], &top["requests"], &top["bytes_served"]), (&"docker.io".into(), &"library/alpine".into(), &2.into(), &100_000.into()), "{s}");
    assert_eq!(s["top_repositories"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_fill_is_listed_with_its_progress_and_clients() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    // The CDN stops after 500 kB until released: the fill is under way and can't end early.
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 500_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    let first = spawn_get(&url);
    let second = spawn_get(&url);
    eventually("both follow the fill", || m.fill_waiters("docker.io", &layer.digest) == 2).await;
    eventually("the fill is under way", || m.tmp_bytes() >= 500_000).await;
    let fill = tokio::time::timeout(PROMPTLY, async {
        loop {
            let s = status_json(&m).await;
            if s["fills"][0]["bytes_done"].as_u64().is_some_and(|n| n >= 500_000) {
                return s["fills"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the fill's progress shows");
    assert_eq!((&fill["upstream"], &fill["repository"], &fill["digest"]), (&"docker.io".into(), &"library/alpine".into(), &layer.digest.clone().into()));
    assert_eq!((&fill["bytes_total"], &fill["clients"]), (&2_000_000.into(), &2.into()), "{fill}");
    let page = m.get("/status").await;
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let page = page.text().await.unwrap();
    assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"), "{page}");
    assert!(page.contains("<progress value=\"") && page.contains("max=\"2000000\"></progress>"), "{page}");
    assert!(page.contains(&layer.digest) && page.contains("library/alpine"), "{page}");

    reg.release_held();
    assert!(first.await.unwrap() == layer.bytes);
    assert!(second.await.unwrap() == layer.bytes);
    m.wait_stored(&layer.digest).await;
    eventually("the fill is done", || m.fills.is_empty()).await;
    assert_eq!(status_json(&m).await["fills"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_in_trouble_shows_its_state_and_last_error() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::RateLimitHeaders { remaining: 42 });
    assert_eq!(m.get_manifest("alpine", "3").await.status(), 200);
    let up = status_json(&m).await["upstreams"][0].clone();
    assert_eq!((&up["state"], &up["ratelimit_remaining"], &up["last_error"]), (&"up".into(), &42.into(), &Value::Null), "{up}");

    reg.clear_faults();
    reg.set_fault(Fault::Status { code: 429, retry_after: Some(60), path_contains: "/manifests/".into() });
    let _ = m.get_manifest("alpine", "4").await;
    let up = status_json(&m).await["upstreams"][0].clone();
    assert_eq!(up["state"], "rate_limited", "{up}");
    assert_eq!(up["last_error"]["message"], "answered 429 Too Many Requests", "{up}");
    assert!(up["last_error"]["at"].as_str().is_some_and(|at| at.ends_with('Z')), "{up}");

    reg.clear_faults();
    reg.stop().await;
    let _ = m.get_manifest("alpine", "5").await;
    let up = status_json(&m).await["upstreams"][0].clone();
    assert_eq!(up["state"], "down", "{up}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_served_where_metrics_is() {
    let reg = FakeRegistry::start().await;
    // On the client listener, beside /metrics (answered without credentials); the status page
    // names repositories and digests, so it asks for the credentials the registry API asks for.
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::start_with(&reg, Options { credentials: true, tail: htpasswd_access(dir.path()), ..Default::default() }).await;
    assert_eq!(m.get("/v2/").await.status(), 401);
    assert_eq!(m.get("/metrics").await.status(), 200);
    for path in ["/status", "/status.json"] {
        let anonymous = m.get(path).await;
        assert_eq!(anonymous.status(), 401, "{path} without credentials");
        assert!(anonymous.text().await.unwrap().contains("UNAUTHORIZED"), "{path}: an OCI error body");
        let wrong = Mirror::client().get(format!("{}{path}", m.url)).basic_auth("dev", Some("nope")).send().await.unwrap();
        assert_eq!(wrong.status(), 401, "{path} with wrong credentials");
        let authed = Mirror::client().get(format!("{}{path}", m.url)).basic_auth("dev", Some("letmein")).send().await.unwrap();
        assert_eq!(authed.status(), 200, "{path} with the client's credentials");
    }
    let post = Mirror::client().post(format!("{}/status", m.url)).send().await.unwrap();
    assert_ne!(post.status(), 200);

    // With admin_listen: only there, as /metrics.
    let m = Mirror::start_with_top(&reg, "admin_listen = \"127.0.0.1:0\"\n").await;
    for path in ["/metrics", "/status", "/status.json"] {
        assert_eq!(m.get(path).await.status(), 404, "{path} on the client listener");
    }
    let app = m.app.upgrade().expect("running");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_url = format!("http://{}", admin.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(regcache::http::serve_admin(admin, app, async {
        let _ = stopped.await;
    }));
    for path in ["/metrics", "/status", "/status.json"] {
        let resp = Mirror::client().get(format!("{admin_url}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} on admin_listen");
    }
    let _ = stop.send(());
    served.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credential_appears_on_the_status_page() {
    let reg = FakeRegistry::start().await;
    reg.set_credentials("ci", "s3cret");
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10_000);
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::start_with(&reg, Options { credentials: true, tail: htpasswd_access(dir.path()), ..Default::default() }).await;
    let authed = |path: String| Mirror::client().get(format!("{}{path}", m.url)).basic_auth("dev", Some("letmein")).send();
    assert_eq!(authed(format!("/v2/alpine/blobs/{}", image.layers[0].digest)).await.unwrap().status(), 200);
    assert!(!reg.token_requests().is_empty(), "the upstream was asked for a token with the credentials");
    let json = authed("/status.json".into()).await.unwrap().text().await.unwrap();
    let html = authed("/status".into()).await.unwrap().text().await.unwrap();
    for page in [&json, &html] {
        for secret in ["s3cret", "Y2k6czNjcmV0", "letmein", "$2y$", "Bearer", "Basic ", "ci:", "token"] {
            assert!(!page.contains(secret), "{secret} in {page}");
        }
    }
    assert!(json.contains("library/alpine"), "the page has what a client sees: {json}");
}
