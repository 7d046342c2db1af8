//! Concurrent requests for the same missing blob share one upstream fetch.

use crate::it::mirror::{eventually, Mirror};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_upstream_fetch() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::SlowBlobs { chunk: 64 * 1024, delay_ms: 5 });
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (url, digest) = (m.url.clone(), layer.digest.clone());
        tasks.push(tokio::spawn(async move {
            let resp = Mirror::client().get(format!("{url}/v2/alpine/blobs/{digest}")).send().await.unwrap();
            resp.bytes().await.unwrap().to_vec()
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap() == layer.bytes);
    }
    assert_eq!(reg.cdn_count(&layer.digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_fails_every_waiter() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::SlowBlobs { chunk: 64 * 1024, delay_ms: 5 });
    reg.set_fault(Fault::CorruptBlobs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, digest) = (m.url.clone(), layer.digest.clone());
        tasks.push(tokio::spawn(async move {
            let resp = Mirror::client().get(format!("{url}/v2/alpine/blobs/{digest}")).send().await.unwrap();
            resp.bytes().await.map(|b| b.len())
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap().is_err(), "every waiter's body is cut");
    }
    assert!(!m.has_blob(&layer.digest));
    eventually("temporary file removed", || m.tmp_files() == 0).await;
}
