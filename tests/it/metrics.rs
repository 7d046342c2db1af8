//! `regcache_served_bytes_total{source}`: every body byte a client receives is counted once, under
//! where it came from: this node's hot tier, the shared bucket, another member of the fleet, or
//! the upstream (a fill that failed over from a member to the upstream, in two parts).

use std::time::Duration;

use tokio::time::Instant;

use crate::it::fleet::{blob_owned_by, Fleet};
use crate::it::mirror::{eventually, Mirror};
use crate::it::shared::{node, TestBucket};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

/// The sources, in the order [`served`] gives their counts.
const SOURCES: [&str; 4] = ["hot", "bucket", "peer", "upstream"];

/// Bytes served by `m` so far, by source (hot, bucket, peer, upstream).
async fn served(m: &Mirror) -> [u64; 4] {
    let text = m.get("/metrics").await.text().await.expect("metrics");
    SOURCES.map(|source| {
        let prefix = format!("regcache_served_bytes_total{{source=\"{source}\"}} ");
        text.lines().find_map(|l| l.strip_prefix(prefix.as_str())).map_or(0, |v| v.parse().expect("a count"))
    })
}

/// Wait until `m` has served `want` bytes by source (a body is counted once it is done, which the
/// client may see first); fails with what it has if that doesn't happen within 10 seconds.
async fn wait_served(m: &Mirror, want: [u64; 4]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = served(m).await;
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "served bytes by source {SOURCES:?}: {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bytes_served_from_the_upstream_the_hot_tier_and_the_bucket_are_counted_apart() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 70_000);
    let (layer, manifest) = (&image.layers[0], &image.manifest);
    let (len, mlen) = (layer.bytes.len() as u64, manifest.bytes.len() as u64);
    let bucket = TestBucket::new();
    let a = node(&reg, &bucket).await;

    // A miss, then a hit, of a blob and of a manifest.
    assert_eq!(a.blob("alpine", &layer.digest).await.expect("blob"), (reqwest::StatusCode::OK, layer.bytes.clone()));
    wait_served(&a, [0, 0, 0, len]).await;
    a.wait_stored(&layer.digest).await;
    assert_eq!(a.blob("alpine", &layer.digest).await.expect("blob").1, layer.bytes);
    wait_served(&a, [len, 0, 0, len]).await;
    let resp = a.get_manifest("alpine", &manifest.digest).await;
    assert_eq!(resp.bytes().await.expect("manifest").as_ref(), manifest.bytes.as_slice());
    wait_served(&a, [len, 0, 0, len + mlen]).await;
    let resp = a.get_manifest("alpine", &manifest.digest).await;
    assert_eq!(resp.bytes().await.expect("manifest").as_ref(), manifest.bytes.as_slice());
    wait_served(&a, [len + mlen, 0, 0, len + mlen]).await;
    // A HEAD sends no body: nothing served.
    assert_eq!(a.head(&format!("/v2/alpine/blobs/{}", layer.digest)).await.status(), 200);
    wait_served(&a, [len + mlen, 0, 0, len + mlen]).await;

    // Another node on the same bucket: both from the bucket, the upstream not asked.
    a.metrics_with("regcache_bucket_operations_total{op=\"upload\",result=\"ok\"} 1\n").await;
    a.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 1\n").await;
    reg.clear_log();
    let b = node(&reg, &bucket).await;
    assert_eq!(b.blob("alpine", &layer.digest).await.expect("blob").1, layer.bytes);
    wait_served(&b, [0, len, 0, 0]).await;
    let resp = b.get_manifest("alpine", &manifest.digest).await;
    assert_eq!(resp.bytes().await.expect("manifest").as_ref(), manifest.bytes.as_slice());
    wait_served(&b, [0, len + mlen, 0, 0]).await;
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "node B asked the upstream: {:?}", reg.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_a_member_streamed_are_served_from_a_peer_and_not_counted_by_the_member() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 2, 0).await;
    let (digest, bytes) = blob_owned_by(&reg, &fleet, 0, 300_000);
    let len = bytes.len() as u64;
    let asker = &fleet.nodes[1];
    assert_eq!(asker.blob("library/app", &digest).await.expect("blob").1, bytes);
    wait_served(asker, [0, 0, len, 0]).await;
    asker.wait_stored(&digest).await;
    assert_eq!(asker.blob("library/app", &digest).await.expect("blob").1, bytes);
    wait_served(asker, [len, 0, len, 0]).await;
    // The owner fetched it from the upstream for the member: no client of its own was served.
    fleet.nodes[0].wait_stored(&digest).await;
    assert_eq!(served(&fleet.nodes[0]).await, [0; 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_that_failed_over_from_a_member_to_the_upstream_counts_each_part_under_its_source() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 2, 0).await;
    let (digest, bytes) = blob_owned_by(&reg, &fleet, 0, 3_000_000);
    let len = bytes.len() as u64;
    // The owner gets the first MiB from the upstream, then the rest is held; it goes away.
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 1 << 20, path_contains: digest.clone() });
    let url = fleet.nodes[1].url.clone();
    let pull = tokio::spawn(Mirror::client().get(format!("{url}/v2/library/app/blobs/{digest}")).send());
    let fill_digest = digest.parse().expect("digest");
    let streaming = || fleet.nodes[1].fills.get(&regcache::oci::RegistryHost::new("docker.io"), &fill_digest).is_some_and(|f| f.progress().0 > 0);
    eventually("the asker's fill has bytes from the owner", streaming).await;
    fleet.proxies[0].kill();
    reg.release_held();
    let got = pull.await.expect("task").expect("response").bytes().await.expect("body");
    assert!(got == bytes, "the whole blob");
    let deadline = Instant::now() + Duration::from_secs(10);
    let [hot, bucket, peer, upstream] = loop {
        let now = served(&fleet.nodes[1]).await;
        if now.iter().sum::<u64>() == len || Instant::now() > deadline {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((hot, bucket, peer + upstream), (0, 0, len), "every byte once: peer {peer}, upstream {upstream}");
    assert!(peer > 0 && peer <= 1 << 20, "the owner's part: {peer}");
    assert!(upstream >= len - (1 << 20), "the rest, from the upstream: {upstream}");
}
