//! Concurrent requests for the same missing blob share one upstream fetch, concurrent requests for a
//! tag share one revalidation and one manifest fetch, and one fill never hurts another: a refusal
//! for one repository or a stall of another upstream stays with its own requests. Where a count
//! depends on requests overlapping, the fake upstream holds its answer (`Fault::Hold`) until every
//! request has joined, so the counts are exact without timing.

use crate::it::mirror::{error_code, eventually, spawn_get, spawn_range, Mirror, Options, PROMPTLY};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cold_requests_make_one_upstream_fetch() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    // The fill's upstream request is held until all 16 clients follow it.
    reg.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (url, digest) = (m.url.clone(), layer.digest.clone());
        tasks.push(tokio::spawn(async move {
            let resp = Mirror::client().get(format!("{url}/v2/alpine/blobs/{digest}")).send().await.unwrap();
            resp.bytes().await.unwrap().to_vec()
        }));
    }
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the fill started");
    eventually("all 16 follow the fill", || m.fill_waiters("docker.io", &layer.digest) == 16).await;
    let text = m.metrics_with("regcache_fill_readers 16\n").await;
    assert!(text.contains("regcache_fill_coalesced_readers 15\n") && text.contains("regcache_fills_in_progress 1\n"), "{text}");
    reg.release_held();
    for t in tasks {
        assert!(t.await.unwrap() == layer.bytes);
    }
    assert_eq!(reg.cdn_count(&layer.digest), 1);
    m.wait_stored(&layer.digest).await;
    m.metrics_with("regcache_fill_readers 0\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_fill_fails_every_waiter() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    reg.set_fault(Fault::CorruptBlobs);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (url, digest) = (m.url.clone(), layer.digest.clone());
        tasks.push(tokio::spawn(async move {
            let resp = Mirror::client().get(format!("{url}/v2/alpine/blobs/{digest}")).send().await.unwrap();
            resp.bytes().await.map(|b| b.len())
        }));
    }
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the fill started");
    eventually("all 4 follow the fill", || m.fill_waiters("docker.io", &layer.digest) == 4).await;
    reg.release_held();
    for t in tasks {
        assert!(t.await.unwrap().is_err(), "every waiter's body is cut");
    }
    assert_eq!(reg.cdn_count(&layer.digest), 1, "one fill, failed for all");
    assert!(!m.has_blob(&layer.digest));
    eventually("temporary file removed", || m.tmp_files() == 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_gets_the_whole_blob_from_the_same_fill() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    // The CDN stops after 500 kB until released: the fill is under way and can't end early.
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 500_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    let first = spawn_get(&url);
    eventually("the fill is under way", || m.tmp_bytes() >= 500_000).await;
    let late = spawn_get(&url);
    eventually("the late request joined the fill", || m.fill_waiters("docker.io", &layer.digest) == 2).await;
    reg.release_held();
    assert!(late.await.unwrap() == layer.bytes, "the late joiner gets every byte");
    assert!(first.await.unwrap() == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_joining_a_running_fill_gets_its_slice_once_the_fill_is_verified() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    // The CDN stops after 300 kB until released: the range's bytes have arrived, the verdict hasn't.
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 300_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    let full = spawn_get(&url);
    eventually("the fill is under way", || m.tmp_bytes() >= 300_000).await;
    let range = spawn_range(&m.fills, &url, &layer.digest, "bytes=100000-199999");
    eventually("the range joined the fill", || m.fill_waiters("docker.io", &layer.digest) == 2 || range.is_finished()).await;
    assert!(!range.is_finished(), "a range of a fill in progress waits for the fill's verdict");
    reg.release_held();
    let answer = tokio::time::timeout(PROMPTLY, range).await.expect("answered once the fill is verified").unwrap();
    assert!(!answer.before_the_verdict, "answered before the fill was verified");
    assert_eq!((answer.status, answer.content_range.as_deref()), (206, Some("bytes 100000-199999/2000000")));
    assert!(answer.body.expect("the whole range") == layer.bytes[100_000..200_000]);
    assert!(full.await.unwrap() == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 1, "the range was served from the one fill");
    m.wait_stored(&layer.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_that_disconnects_while_it_waits_leaves_its_fill_to_the_others() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 300_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    // The range starts the fill and waits for its verdict; a full GET joins.
    let range = spawn_range(&m.fills, &url, &layer.digest, "bytes=0-9");
    eventually("the range's fill is under way", || m.tmp_bytes() >= 300_000).await;
    let full = spawn_get(&url);
    eventually("both follow the fill", || m.fill_waiters("docker.io", &layer.digest) == 2).await;
    range.abort();
    eventually("the range's request is gone", || m.fill_waiters("docker.io", &layer.digest) == 1).await;
    reg.release_held();
    assert!(full.await.unwrap() == layer.bytes, "the fill went on for the full GET");
    m.wait_stored(&layer.digest).await;
    assert_eq!(reg.cdn_count(&layer.digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_disconnects_does_not_disturb_the_others() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 2_000_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 300_000, path_contains: layer.digest.clone() });
    let url = format!("{}/v2/alpine/blobs/{}", m.url, layer.digest);
    let quitter = Mirror::client().get(&url).send().await.unwrap();
    let stayer = spawn_get(&url);
    eventually("the fill is under way", || m.tmp_bytes() >= 300_000).await;
    eventually("both follow the fill", || m.fill_waiters("docker.io", &layer.digest) == 2).await;
    drop(quitter);
    eventually("the quitter is gone", || m.fill_waiters("docker.io", &layer.digest) == 1).await;
    reg.release_held();
    assert!(stayer.await.unwrap() == layer.bytes);
    m.wait_stored(&layer.digest).await;
    assert_eq!(reg.cdn_count(&layer.digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_manifest_requests_share_revalidation_fetch_and_token() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 10);
    let m = Mirror::start(&reg).await;
    // Every manifest request upstream is held, and let go one at a time once all 32 clients wait on it.
    reg.set_fault(Fault::Hold { path_contains: "/manifests/".into() });
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = m.url.clone();
        tasks.push(tokio::spawn(async move {
            let resp = Mirror::client()
                .get(format!("{url}/v2/alpine/manifests/3"))
                .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.bytes().await.unwrap().to_vec())
        }));
    }
    let calls = m.coalesced_calls.clone();
    // The HEAD without a token (answered 401), then the HEAD with the token: one revalidation.
    for step in ["HEAD without a token", "HEAD with the token"] {
        tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect(step);
        eventually("all 32 wait on the revalidation", || calls.revalidation_waiters() == 32).await;
        reg.pass_held();
    }
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the manifest GET");
    eventually("all 32 wait on the manifest GET", || calls.manifest_fetch_waiters() == 32).await;
    reg.pass_held();
    for t in tasks {
        let answered = tokio::time::timeout(PROMPTLY, t).await;
        let (status, body) = answered.expect("answered (one still held made an upstream GET of its own)").unwrap();
        assert_eq!(status, 200);
        assert!(body == image.manifest.bytes);
    }
    assert_eq!(reg.token_requests().len(), 1, "one token fetch for the scope");
    assert_eq!(reg.count("GET", "/manifests/"), 1, "one manifest GET");
    assert_eq!(reg.count("HEAD", "/manifests/"), 2, "{:?}", reg.requests());

    // Warm: 64 concurrent tag requests cost one HEAD (the revalidation), held until all joined it.
    reg.clear_log();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let url = m.url.clone();
        tasks.push(tokio::spawn(async move {
            Mirror::client().head(format!("{url}/v2/alpine/manifests/3")).send().await.unwrap().status().as_u16()
        }));
    }
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the revalidation HEAD");
    eventually("all 64 wait on the revalidation", || calls.revalidation_waiters() == 64).await;
    reg.release_held();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(reg.count("HEAD", "/manifests/"), 1, "{:?}", reg.requests());
    assert_eq!(reg.count("GET", "/manifests/"), 0, "{:?}", reg.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_refused_for_one_repository_does_not_fail_another_that_joined_it() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100_000);
    let layer = image.layers[0].clone();
    let m = Mirror::start(&reg).await;
    // A repository that does not exist: its blob request is held, then refused.
    let refused = "/v2/nope/missing/blobs/";
    reg.set_fault(Fault::Hold { path_contains: refused.into() });
    reg.set_fault(Fault::Status { code: 404, retry_after: None, path_contains: refused.into() });
    let missing_url = format!("{}/v2/nope/missing/blobs/{}", m.url, layer.digest);
    let missing = tokio::spawn(async move { error_code(Mirror::client().get(missing_url).send().await.unwrap()).await });
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the fill for nope/missing started");
    let legit = spawn_get(&format!("{}/v2/alpine/blobs/{}", m.url, layer.digest));
    eventually("the request for alpine joined the fill for nope/missing", || m.fill_waiters("docker.io", &layer.digest) == 2).await;
    reg.release_held();
    let (status, code) = missing.await.unwrap();
    assert_eq!((status.as_u16(), code.as_str()), (404, "NAME_UNKNOWN"));
    assert!(legit.await.unwrap() == layer.bytes, "the request for alpine fetched the blob from alpine");
    assert_eq!(reg.count("GET", refused), 1);
    assert_eq!(reg.cdn_count(&layer.digest), 1);
    m.wait_stored(&layer.digest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_from_another_upstream_never_holds_up_a_request() {
    let hub = FakeRegistry::start().await;
    let ghcr = FakeRegistry::start().await;
    let image = images::schema2_image(&hub, "org/app", "1", 1, 100_000);
    let layer = image.layers[0].clone();
    let tail = format!("[[upstream]]\nname = \"ghcr.io\"\nurl = \"{}\"\n", ghcr.url());
    let m = Mirror::start_with(&hub, Options { credentials: true, tail, ..Default::default() }).await;
    // ghcr.io stalls on every blob (and does not have this one).
    ghcr.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    let stalled_url = format!("{}/v2/ghcr.io/org/app/blobs/{}", m.url, layer.digest);
    let stalled = tokio::spawn(async move { error_code(Mirror::client().get(stalled_url).send().await.unwrap()).await });
    tokio::time::timeout(PROMPTLY, ghcr.wait_held(1)).await.expect("the fill from ghcr.io started");
    let (status, bytes) = tokio::time::timeout(PROMPTLY, m.blob("org/app", &layer.digest))
        .await
        .expect("not held up by the fill from ghcr.io")
        .unwrap();
    assert_eq!(status, 200);
    assert!(bytes == layer.bytes);
    ghcr.release_held();
    let (status, code) = stalled.await.unwrap();
    assert_eq!((status.as_u16(), code.as_str()), (404, "BLOB_UNKNOWN"));
    assert_eq!(hub.cdn_count(&layer.digest), 1);
    assert_eq!(ghcr.cdn_count(&layer.digest), 0);
}
