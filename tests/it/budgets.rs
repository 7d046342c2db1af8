//! Fills keep to their budgets: what can't be stored is passed through without growing `tmp/`, a
//! fill nobody reads must keep a pace, shutdown doesn't wait for a straggler; referrers lists count.

use std::time::Duration;

use crate::it::mirror::{eventually, spawn_get, Mirror};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

/// Test-sized pace for fills nobody reads: at least 1 KiB/s over 200 ms.
const QUICK_PACE: &str = "[fills]\nunread_min_rate = \"1KiB\"\nrate_window = \"200ms\"\n";

/// The whole body of `resp`, asserting after every chunk that `tmp/` holds at most `max` bytes.
async fn read_checking_tmp(m: &Mirror, mut resp: reqwest::Response, max: u64) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.expect("the body completes") {
        body.extend_from_slice(&chunk);
        let held = m.tmp_bytes();
        assert!(held <= max, "tmp/ holds {held} bytes after {} passed through", body.len());
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_that_does_not_fit_is_passed_through_without_touching_the_disk() {
    // Content-Length 200 kB: more than max_size; more than the free space above min_free.
    for top in ["max_size = \"100kB\"", "[fills]\nmin_free = \"1PB\""] {
        let reg = FakeRegistry::start().await;
        let image = images::schema2_image(&reg, "library/big", "1", 1, 200_000);
        let layer = &image.layers[0];
        let m = Mirror::start_with_top(&reg, top).await;
        reg.set_fault(Fault::SlowBlobs { chunk: 20_000, delay_ms: 1 });
        let resp = m.get(&format!("/v2/big/blobs/{}", layer.digest)).await;
        assert_eq!(resp.status(), 200, "{top}");
        assert!(read_checking_tmp(&m, resp, 0).await == layer.bytes, "{top}");
        eventually("the fill ended", || m.fills.is_empty()).await;
        assert!(!m.has_blob(&layer.digest), "{top}");
        assert_eq!(m.tmp_files(), 0, "{top}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_blob_is_stored_up_to_the_budget_and_stops_when_its_client_leaves() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 100_000);
    let digest = image.layers[0].digest.clone();
    let m = Mirror::start_with_top(&reg, "max_size = \"1MB\"").await;
    reg.set_fault(Fault::EndlessBlobs);
    let mut resp = m.get(&format!("/v2/big/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    let mut got = 0;
    // Past the budget the bytes still reach the client, from memory.
    while got < 4_000_000 {
        let chunk = resp.chunk().await.expect("the body goes on").expect("an endless body");
        got += chunk.len();
        let held = m.tmp_bytes();
        assert!(held <= 1_000_000, "tmp/ holds {held} bytes after {got} passed through");
    }
    drop(resp);
    eventually("the fill ended", || m.fills.is_empty()).await;
    assert_eq!(m.tmp_files(), 0, "its temporary file is gone");
    assert!(!m.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_a_blob_that_is_passed_through_is_answered_whole() {
    // Its bytes are never on disk to be served once verified: the range is ignored (RFC 9110), and
    // the whole blob streams as for a GET without one, its last byte held back until it is verified.
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 200_000);
    let layer = &image.layers[0];
    let m = Mirror::start_with_top(&reg, "max_size = \"100kB\"").await;
    let url = format!("{}/v2/big/blobs/{}", m.url, layer.digest);
    let resp = Mirror::client().get(&url).header("range", "bytes=0-9").send().await.unwrap();
    assert_eq!(resp.status(), 200, "never a 206 of bytes that can't be verified first");
    assert!(resp.headers().get("content-range").is_none());
    assert!(read_checking_tmp(&m, resp, 0).await == layer.bytes);
    eventually("the fill ended", || m.fills.is_empty()).await;

    // Wrong bytes passed through: the body is cut, never a complete answer; or, when the fill has
    // already failed by the time the range looks at it (a busy machine), the fill's error.
    reg.set_fault(Fault::CorruptBlobs);
    let resp = Mirror::client().get(&url).header("range", "bytes=0-9").send().await.unwrap();
    match resp.status().as_u16() {
        200 => assert!(resp.bytes().await.is_err(), "a corrupt blob's body is cut"),
        502 => {
            let body: serde_json::Value = resp.json().await.expect("an OCI error body");
            assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{body}");
        }
        status => panic!("a range of wrong bytes answered {status}"),
    }
    assert!(!m.has_blob(&layer.digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_an_endless_blob_is_answered_whole_once_it_outgrows_the_budget() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 100_000);
    let digest = image.layers[0].digest.clone();
    let m = Mirror::start_with_top(&reg, "max_size = \"1MB\"").await;
    reg.set_fault(Fault::EndlessBlobs);
    // No length, so no verdict for a while: once the fill stops storing, the range can't wait for one.
    let resp = Mirror::client().get(format!("{}/v2/big/blobs/{digest}", m.url)).header("range", "bytes=0-9").send();
    let mut resp = tokio::time::timeout(Duration::from_secs(10), resp).await.expect("answered once the blob outgrew the budget").unwrap();
    assert_eq!(resp.status(), 200);
    let mut got = 0;
    while got < 2_000_000 {
        got += resp.chunk().await.expect("the body goes on").expect("an endless body").len();
    }
    drop(resp);
    eventually("the fill ended", || m.fills.is_empty()).await;
    assert_eq!(m.tmp_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporaries_together_stay_within_max_temp() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 2, 200_000);
    let [a, b] = [0, 1].map(|i| image.layers[i].clone());
    let m = Mirror::start_with_top(&reg, "[fills]\nmax_temp = \"300kB\"").await;
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 100_000, path_contains: a.digest.clone() });
    let first = spawn_get(&format!("{}/v2/big/blobs/{}", m.url, a.digest));
    eventually("a's fill holds its first bytes", || m.tmp_bytes() >= 100_000).await;
    // a has reserved 200 kB of the 300: b doesn't fit beside it.
    let resp = m.get(&format!("/v2/big/blobs/{}", b.digest)).await;
    assert_eq!(resp.status(), 200);
    assert!(read_checking_tmp(&m, resp, 100_000).await == b.bytes, "b is passed through");
    eventually("b's fill ended", || m.fills.len() == 1).await;
    assert!(!m.has_blob(&b.digest));
    reg.release_held();
    assert!(first.await.unwrap() == a.bytes);
    m.wait_stored(&a.digest).await;
    assert_eq!(m.tmp_files(), 0);
    // Once a is stored, b fits.
    m.blob("big", &b.digest).await.unwrap();
    m.wait_stored(&b.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_drip_nobody_reads_is_given_up() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 10_000);
    let digest = image.layers[0].digest.clone();
    let m = Mirror::start_with_top(&reg, QUICK_PACE).await;
    // 2 bytes a second, far below 1 KiB/s, and well within idle_timeout.
    reg.set_fault(Fault::SlowBlobs { chunk: 1, delay_ms: 500 });
    let resp = m.get(&format!("/v2/big/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    // While read, however slowly, the fill goes on.
    eventually("the client is reading", || m.fill_waiters("docker.io", &digest) == 1).await;
    drop(resp);
    eventually("the fill was given up", || m.fills.is_empty()).await;
    assert_eq!(m.tmp_files(), 0);
    assert!(!m.has_blob(&digest));
    assert_eq!(reg.cdn_count(&digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_a_slow_drip_nobody_reads() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 10_000);
    let digest = image.layers[0].digest.clone();
    let mut m = Mirror::start_with_top(&reg, QUICK_PACE).await;
    reg.set_fault(Fault::SlowBlobs { chunk: 1, delay_ms: 500 });
    let resp = m.get(&format!("/v2/big/blobs/{digest}")).await;
    assert_eq!(resp.status(), 200);
    drop(resp);
    // The drain time is 30 s; the drip would take over an hour.
    tokio::time::timeout(Duration::from_secs(10), m.shutdown()).await.expect("shutdown ends before the drain time");
    assert!(m.fills.is_empty());
    assert_eq!(m.tmp_files(), 0);
    assert!(!m.has_blob(&digest));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn referrers_lists_count_in_max_size_and_are_evicted() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 2, 100_000);
    let subject = image.manifest.digest.clone();
    let pad = "x".repeat(60_000);
    let list = format!(r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{{"pad":"{pad}"}}}}"#);
    reg.put_referrers("library/big", &subject, list.clone().into_bytes());
    let m = Mirror::start_with_top(&reg, "max_size = \"250kB\"").await;
    let path = format!("/v2/big/referrers/{subject}");
    let resp = m.get(&path).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap(), list);
    m.metrics_with(&format!("regcache_disk_bytes {}\n", list.len())).await;
    // 60 kB of referrers + 2 × 100 kB of blobs > 250 kB: the least recently used goes, the list
    // (its subject manifest was never asked for).
    for layer in &image.layers {
        m.blob("big", &layer.digest).await.unwrap();
        m.wait_stored(&layer.digest).await;
    }
    m.metrics_with("regcache_evictions_total 1\n").await;
    m.metrics_with("regcache_disk_bytes 200000\n").await;
    assert!(image.layers.iter().all(|l| m.has_blob(&l.digest)), "the blobs stay");
    // Evicted: with upstream down it is no longer served from what regcache remembered.
    reg.stop().await;
    assert_eq!(m.get(&path).await.status(), 502);
}
