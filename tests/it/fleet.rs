//! Three regcache nodes in one fleet against one fake upstream: a cold blob is fetched from the
//! upstream once for every client of every node; the owner stopping mid-stream, or a listed member
//! that never started, fails no pull; the member-to-member API refuses requests without the
//! fleet's secret. Members reach each other through small TCP proxies (their member URLs), so a
//! test can take a member off the network at once, as a SIGKILL would: its connections are cut
//! and new ones refused.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use regcache::fleet::hrw;
use regcache::fleet::MemberId;
use regcache::store::SharedBackend;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::it::mirror::{error_code, eventually, Mirror, Options, PROMPTLY};
use crate::it::shared::TestBucket;
use crate::support::fake_registry::{sha256_digest, Fault, FakeRegistry};

const SECRET: &str = "fleet-test-secret";

/// A TCP proxy to a node: the node's member URL. Killed, its connections are cut and new ones
/// refused.
struct Proxy {
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(listener: TcpListener, target: SocketAddr) -> Proxy {
        let task = tokio::spawn(async move {
            // Dropped with the task: every connection goes with it.
            let mut conns = JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                conns.spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Proxy { task }
    }

    fn kill(&self) {
        self.task.abort();
    }
}

/// The nodes of a fleet, their proxies (member URLs), and the secret file's directory.
struct Fleet {
    nodes: Vec<Mirror>,
    proxies: Vec<Proxy>,
    /// Every member's id (the proxies', then any listed member that never started).
    members: Vec<MemberId>,
    /// The ports of the members that never started: bound, never listening, so connections are
    /// refused and no other test's server gets the port meanwhile.
    _absent: Vec<TcpSocket>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `n` nodes, plus `absent` listed members that never start (their ports refuse connections).
    async fn start(reg: &FakeRegistry, n: usize, absent: usize) -> Fleet {
        Fleet::start_on(reg, n, absent, None).await
    }

    /// The same, every node on `bucket` if given.
    async fn start_on(reg: &FakeRegistry, n: usize, absent: usize, bucket: Option<Arc<TestBucket>>) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let secret_file = dir.path().join("fleet.secret");
        std::fs::write(&secret_file, format!("{SECRET}\n")).unwrap();
        let mut listeners = Vec::new();
        let mut proxy_listeners = Vec::new();
        for _ in 0..n {
            listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
            proxy_listeners.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
        }
        let mut members: Vec<String> = proxy_listeners.iter().map(|l| format!("http://{}", l.local_addr().unwrap())).collect();
        let mut absent_ports = Vec::new();
        for _ in 0..absent {
            let never = TcpSocket::new_v4().unwrap();
            never.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            members.push(format!("http://{}", never.local_addr().unwrap()));
            absent_ports.push(never);
        }
        let mut nodes = Vec::new();
        let mut proxies = Vec::new();
        for (i, (listener, proxy)) in listeners.into_iter().zip(proxy_listeners).enumerate() {
            let target = listener.local_addr().unwrap();
            proxies.push(Proxy::start(proxy, target).await);
            let tail = fleet_table(&members[i], &members, &secret_file);
            let bucket = bucket.clone().map(|b| -> Arc<dyn SharedBackend> { b });
            let opts = Options { credentials: true, tail, bucket, ..Default::default() };
            nodes.push(Mirror::start_on(reg, opts, listener).await);
        }
        let members = members.iter().map(|m| m.parse().unwrap()).collect();
        Fleet { nodes, proxies, members, _absent: absent_ports, _dir: dir }
    }

    /// The members in their order for `digest` (the owner first), as indexes into `members`.
    fn order(&self, digest: &str) -> Vec<usize> {
        hrw::rank(&self.members, digest).into_iter().map(|m| self.members.iter().position(|x| x == m).unwrap()).collect()
    }
}

fn fleet_table(node: &str, members: &[String], secret_file: &Path) -> String {
    let peers: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    format!("[fleet]\nnode = {node:?}\npeers = [{}]\nsecret_file = {:?}\n", peers.join(", "), secret_file.display().to_string())
}

/// A blob of `len` bytes whose owner among `fleet`'s members is `owner` (an index into them).
fn blob_owned_by(reg: &FakeRegistry, fleet: &Fleet, owner: usize, len: usize) -> (String, Vec<u8>) {
    for seed in 0u32.. {
        let bytes: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed) as u8).collect();
        let digest = sha256_digest(&bytes);
        if fleet.order(&digest)[0] == owner {
            reg.add_blob(bytes.clone());
            return (digest, bytes);
        }
    }
    unreachable!()
}

/// `GET` a blob through `url` in the background: its digest as received (the body verified by
/// the test), or why it was cut. `got_bytes` counts clients that received their first bytes.
fn pull(url: &str, digest: &str, got_bytes: Arc<AtomicUsize>) -> JoinHandle<Result<String, String>> {
    let url = format!("{url}/v2/library/app/blobs/{digest}");
    tokio::spawn(async move {
        let resp = Mirror::client().get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let mut body = resp.bytes_stream();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            if bytes.is_empty() && !chunk.is_empty() {
                got_bytes.fetch_add(1, Ordering::SeqCst);
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(sha256_digest(&bytes))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_three_nodes_make_one_upstream_fetch_of_a_cold_blob() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 3, 0).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 2_000_000);
    // The owner's upstream request is held until every client of every node follows a fill.
    reg.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let pulls: Vec<_> = (0..48).map(|i| pull(&fleet.nodes[i % 3].url, &digest, got_bytes.clone())).collect();
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the owner's fill started");
    for node in &fleet.nodes {
        eventually("16 clients follow each node's fill", || node.fill_waiters("docker.io", &digest) >= 16).await;
    }
    reg.release_held();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    assert_eq!(reg.cdn_count(&digest), 1, "one upstream GET of the blob for the fleet");
    for node in &fleet.nodes {
        node.wait_stored(&digest).await;
    }
    // The others streamed from the owner's fill; the owner asked nobody; every member is up.
    let order = fleet.order(&digest);
    for &i in &order[1..] {
        fleet.nodes[i].metrics_with("regcache_fleet_fills_total{outcome=\"peer_fill\"} 1\n").await;
    }
    let owner = fleet.nodes[order[0]].get("/metrics").await.text().await.unwrap();
    assert!(!owner.contains("regcache_fleet_fills_total{"), "the owner asked nobody: {owner}");
    let states: Vec<&str> = owner.lines().filter(|l| l.starts_with("regcache_fleet_member_up{")).collect();
    assert_eq!(states.len(), 3, "{owner}");
    assert!(states.iter().all(|l| l.ends_with(" 1")), "{states:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_stopping_mid_stream_fails_no_pull() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 3, 0).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 3_000_000);
    // The owner gets the first MiB from the upstream, then the rest is held.
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 1 << 20, path_contains: digest.clone() });
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let pulls: Vec<_> = (0..16).map(|i| pull(&fleet.nodes[1 + i % 2].url, &digest, got_bytes.clone())).collect();
    eventually("every client got bytes streamed from the owner", || got_bytes.load(Ordering::SeqCst) == 16).await;
    assert_eq!(reg.cdn_count(&digest), 1, "only the owner fetched; the others stream from it");
    fleet.proxies[0].kill();
    reg.release_held();
    let started = Instant::now();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    assert!(started.elapsed() < PROMPTLY, "finished promptly: {:?}", started.elapsed());
    // The owner's fetch, and the next member's from where its stream broke off (the third member
    // streams from the second).
    assert_eq!(reg.cdn_count(&digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_shared_bucket_the_member_that_finishes_for_a_stopped_owner_uploads_the_blob_once() {
    let reg = FakeRegistry::start().await;
    let bucket = TestBucket::new();
    let fleet = Fleet::start_on(&reg, 3, 0, Some(bucket.clone())).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 3_000_000);
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 1 << 20, path_contains: digest.clone() });
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let pulls: Vec<_> = (0..8).map(|i| pull(&fleet.nodes[1 + i % 2].url, &digest, got_bytes.clone())).collect();
    eventually("every client got bytes streamed from the owner", || got_bytes.load(Ordering::SeqCst) == 8).await;
    fleet.proxies[0].kill();
    reg.release_held();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    let order = fleet.order(&digest);
    let (next, last) = (&fleet.nodes[order[1]], &fleet.nodes[order[2]]);
    next.wait_stored(&digest).await;
    last.wait_stored(&digest).await;
    // The owner never got to upload it; the member that finished it from the upstream did, and
    // the third, which streamed it from that member, did not.
    next.metrics_with("regcache_bucket_operations_total{op=\"upload\",result=\"ok\"} 1\n").await;
    let text = last.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("regcache_bucket_operations_total{op=\"upload\""), "{text}");
    assert_eq!(bucket.objects(), 1);
    assert!(bucket.path(&digest).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_member_that_never_started_holds_up_no_pull() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 2, 1).await;
    // The member that never started owns the blob.
    let (digest, _) = blob_owned_by(&reg, &fleet, 2, 1_000_000);
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let pulls: Vec<_> = (0..16).map(|i| pull(&fleet.nodes[i % 2].url, &digest, got_bytes.clone())).collect();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    // A refused connection marks a member down at once: no timeout is waited for.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "finished promptly: {:?}", started.elapsed());
    assert_eq!(reg.cdn_count(&digest), 1, "the next member fetched it for both");
    let dead = fleet.members[2].as_str();
    for node in &fleet.nodes {
        let text = node.metrics_with("regcache_fleet_fills_total{outcome=\"owner_down\"}").await;
        assert!(text.contains(&format!("regcache_fleet_member_up{{member=\"{dead}\"}} 0")), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_api_refuses_requests_without_the_secret() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 1, 0).await;
    let node = &fleet.nodes[0];
    let digest = reg.add_blob(b"a member's blob".to_vec());
    let url = format!("{}/_fleet/v1/blobs/{digest}", node.url);
    let ask = |secret: Option<&str>| {
        let mut req = Mirror::client().get(&url).header("x-regcache-upstream", "docker.io").header("x-regcache-repository", "library/app");
        if let Some(s) = secret {
            req = req.header("x-regcache-fleet-secret", s);
        }
        req.send()
    };
    let cases: [(Option<&str>, u16, &str); 3] = [(None, 401, "UNAUTHORIZED"), (Some("wrong"), 403, "DENIED"), (Some(""), 403, "DENIED")];
    for (secret, status, code) in cases {
        let (got, got_code) = error_code(ask(secret).await.unwrap()).await;
        assert_eq!((got.as_u16(), got_code.as_str()), (status, code), "{secret:?}");
    }
    assert_eq!(reg.count("GET", "/blobs/"), 0, "nothing was fetched for a refused request");
    // Never reachable through /v2/.
    let v2 = Mirror::client().get(format!("{}/v2/_fleet/v1/blobs/{digest}", node.url)).header("x-regcache-fleet-secret", SECRET);
    assert_eq!(v2.send().await.unwrap().status().as_u16(), 400);
    // With the secret: the blob, from an offset too.
    let whole = ask(Some(SECRET)).await.unwrap();
    assert_eq!(whole.status().as_u16(), 200);
    assert_eq!(whole.bytes().await.unwrap().as_ref(), b"a member's blob");
    let part = Mirror::client()
        .get(&url)
        .header("x-regcache-fleet-secret", SECRET)
        .header("x-regcache-upstream", "docker.io")
        .header("x-regcache-repository", "library/app")
        .header("range", "bytes=2-")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status().as_u16(), 206);
    assert_eq!(part.headers()["x-regcache-offset"], "2");
    assert_eq!(part.bytes().await.unwrap().as_ref(), b"member's blob");
}
