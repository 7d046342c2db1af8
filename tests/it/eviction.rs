//! `max_size`: least-recently-used content goes, content in use stays, oversized blobs pass through.

use crate::it::mirror::{eventually, Mirror};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_the_most_recently_used() {
    let reg = FakeRegistry::start().await;
    // Four 100 kB layers; the limit holds three, and eviction goes down to 90 % of it: 315 kB.
    let image = images::schema2_image(&reg, "library/big", "1", 4, 100_000);
    let m = Mirror::start_with_top(&reg, "max_size = \"350kB\"").await;
    let [a, b, c, d] = [0, 1, 2, 3].map(|i| image.layers[i].digest.clone());
    for x in [&a, &b, &c] {
        m.blob("big", x).await.unwrap();
        m.wait_stored(x).await;
    }
    m.blob("big", &a).await.unwrap(); // a is now more recent than b and c
    m.blob("big", &d).await.unwrap(); // 400 kB > 350 kB: evict the least recent, b
    eventually("b evicted", || !m.has_blob(&b)).await;
    m.metrics_with("regcache_evictions_total 1\n").await;
    assert!(m.has_blob(&a), "recently used content stays");
    assert!(m.has_blob(&c));
    assert!(m.has_blob(&d), "the newest blob stays");
    let (_, bytes) = m.blob("big", &b).await.unwrap();
    assert!(bytes == image.layers[1].bytes, "evicted content is fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_being_served_is_never_evicted() {
    let reg = FakeRegistry::start().await;
    // 16 MB layers: more than socket buffers hold, so an unread response keeps its blob in use.
    let image = images::schema2_image(&reg, "library/big", "1", 3, 16_000_000);
    let m = Mirror::start_with_top(&reg, "max_size = \"40MB\"").await;
    let [a, b, c] = [0, 1, 2].map(|i| image.layers[i].digest.clone());
    m.blob("big", &a).await.unwrap();
    m.wait_stored(&a).await;
    // Hold a's body open: read the headers, not the body.
    let held = Mirror::client().get(format!("{}/v2/big/blobs/{a}", m.url)).send().await.unwrap();
    m.blob("big", &b).await.unwrap();
    m.wait_stored(&b).await;
    m.blob("big", &c).await.unwrap(); // 48 MB > 40 MB: a is least recent but in use, so b goes
    eventually("b evicted", || !m.has_blob(&b)).await;
    assert!(m.has_blob(&a));
    let body = held.bytes().await.unwrap();
    assert!(body.as_ref() == image.layers[0].bytes.as_slice());
}

#[tokio::test]
async fn a_blob_larger_than_the_limit_is_streamed_not_stored() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 200_000);
    let m = Mirror::start_with_top(&reg, "max_size = \"100kB\"").await;
    reg.set_fault(Fault::SlowBlobs { chunk: 50_000, delay_ms: 1 });
    let (status, bytes) = m.blob("big", &image.layers[0].digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == image.layers[0].bytes);
    assert!(!m.has_blob(&image.layers[0].digest));
    assert_eq!(m.tmp_files(), 0);
}

