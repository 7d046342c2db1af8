//! Three regcache nodes in one fleet against one fake upstream: a cold blob is fetched from the
//! upstream once for every client of every node; the owner stopping mid-stream, or a listed member
//! that never started, fails no pull; the member-to-member API refuses requests without the
//! fleet's secret. With a shared bucket, the node that fetched a blob from the upstream uploads it
//! (the owner, or an asker that finished from the upstream), and no other. Members reach each other through small TCP proxies (their member URLs), so a
//! test can take a member off the network at once, as a SIGKILL would: its connections are cut
//! and new ones refused; and put it back, as a restart would. A member taken for down is probed
//! and up again without a client's request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use regcache::fleet::hrw;
use regcache::fleet::MemberId;
use regcache::store::{BlobBackend, Bucket, SharedBackend};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::it::mirror::{error_code, eventually, Mirror, Options, PROMPTLY};
use crate::support::fake_registry::{sha256_digest, Fault, FakeRegistry};

const SECRET: &str = "fleet-test-secret";

/// A TCP proxy to a node: the node's member URL. Killed, its connections are cut and new ones
/// refused.
struct Proxy {
    task: JoinHandle<()>,
    /// Its address (the member URL's).
    addr: SocketAddr,
    target: SocketAddr,
}

impl Proxy {
    async fn start(listener: TcpListener, target: SocketAddr) -> Proxy {
        let addr = listener.local_addr().unwrap();
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
        Proxy { task, addr, target }
    }

    fn kill(&self) {
        self.task.abort();
    }

    /// Back on the network at the same address, as a member that restarted.
    async fn revive(&mut self) {
        self.task.abort();
        // Its listener is closed once the task is gone: the address can be bound again.
        let _ = (&mut self.task).await;
        let listener = TcpListener::bind(self.addr).await.unwrap();
        *self = Proxy::start(listener, self.target).await;
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
        Fleet::start_with(reg, n, absent, None).await
    }

    /// The same, every node on `bucket` (`backend = "s3"`) when given.
    async fn start_with(reg: &FakeRegistry, n: usize, absent: usize, bucket: Option<Arc<dyn SharedBackend>>) -> Fleet {
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
            let opts = Options { credentials: true, tail, bucket: bucket.clone(), ..Default::default() };
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
async fn a_listed_member_that_never_started_holds_up_no_pull() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 2, 1).await;
    // The member that never started owns the blob.
    let (digest, _) = blob_owned_by(&reg, &fleet, 2, 1_000_000);
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    // The next member's clients start its fill (which asks the dead owner) before the last
    // member's request could start it for them: a fill started for a member asks no member.
    let (next, last) = (fleet.order(&digest)[1], fleet.order(&digest)[2]);
    let mut pulls: Vec<_> = (0..8).map(|_| pull(&fleet.nodes[next].url, &digest, got_bytes.clone())).collect();
    let next_node = &fleet.nodes[next];
    eventually("the next member's fill started", || next_node.fill_waiters("docker.io", &digest) >= 1 || next_node.has_blob(&digest)).await;
    pulls.extend((0..8).map(|_| pull(&fleet.nodes[last].url, &digest, got_bytes.clone())));
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

/// A bucket in memory (the S3 backend's own client on `object_store`'s in-memory store), shared
/// by the nodes given it; its upload records under `dir`.
fn in_memory_bucket(dir: &Path) -> Arc<Bucket> {
    Arc::new(Bucket::in_memory("fleet", dir))
}

/// How many uploads to the bucket `text` (a node's metrics) counts as done.
fn uploads(text: &str) -> usize {
    let line = text.lines().find(|l| l.starts_with("regcache_bucket_operations_total{op=\"upload\",result=\"ok\"}"));
    line.and_then(|l| l.rsplit(' ').next()).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bucket_only_the_owner_uploads_a_blob_it_streamed_to_the_others() {
    let reg = FakeRegistry::start().await;
    let records = tempfile::tempdir().unwrap();
    let bucket = in_memory_bucket(records.path());
    let fleet = Fleet::start_with(&reg, 3, 0, Some(bucket.clone() as Arc<dyn SharedBackend>)).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 1_500_000);
    reg.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let pulls: Vec<_> = (0..4).map(|i| pull(&fleet.nodes[1 + i % 2].url, &digest, got_bytes.clone())).collect();
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the owner's fill started");
    for node in &fleet.nodes[1..] {
        eventually("each asker follows its fill", || node.fill_waiters("docker.io", &digest) >= 2).await;
    }
    reg.release_held();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    assert_eq!(reg.cdn_count(&digest), 1);
    let owner = fleet.nodes[0].metrics_with("regcache_bucket_operations_total{op=\"upload\",result=\"ok\"} 1\n").await;
    assert_eq!(uploads(&owner), 1);
    let stored = bucket.stat(&digest.parse().unwrap()).await.unwrap();
    assert_eq!(stored, Some(1_500_000), "the owner's upload is in the bucket");
    for node in &fleet.nodes[1..] {
        node.wait_stored(&digest).await;
        let text = node.metrics_with("regcache_fleet_fills_total{outcome=\"peer_fill\"} 1\n").await;
        assert_eq!(uploads(&text), 0, "an asker whose bytes all came from the owner uploads nothing: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_bucket_an_asker_that_finished_from_the_upstream_uploads_the_blob() {
    let reg = FakeRegistry::start().await;
    let records = tempfile::tempdir().unwrap();
    let bucket = in_memory_bucket(records.path());
    let fleet = Fleet::start_with(&reg, 3, 0, Some(bucket.clone() as Arc<dyn SharedBackend>)).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 3_000_000);
    let order = fleet.order(&digest);
    reg.set_fault(Fault::HoldBlobsAfter { bytes: 1 << 20, path_contains: digest.clone() });
    let got_bytes = Arc::new(AtomicUsize::new(0));
    let pulls: Vec<_> = (0..4).map(|i| pull(&fleet.nodes[1 + i % 2].url, &digest, got_bytes.clone())).collect();
    eventually("every client got bytes streamed from the owner", || got_bytes.load(Ordering::SeqCst) == 4).await;
    fleet.proxies[0].kill();
    reg.release_held();
    for p in pulls {
        assert_eq!(p.await.unwrap(), Ok(digest.clone()), "every body verified");
    }
    assert_eq!(reg.cdn_count(&digest), 2, "the owner's fetch, and the next member's from where the owner broke off");
    // The next member finished from the upstream: no member has the whole blob from the sources it
    // used, so it uploads it.
    let next = &fleet.nodes[order[1]];
    let text = next.metrics_with("regcache_bucket_operations_total{op=\"upload\",result=\"ok\"} 1\n").await;
    assert!(text.contains("regcache_fleet_fills_total{outcome=\"fell_back_upstream\"} 1\n"), "{text}");
    assert_eq!(bucket.stat(&digest.parse().unwrap()).await.unwrap(), Some(3_000_000));
    // The last streamed from the owner, then from the next member, which uploads.
    let last = &fleet.nodes[order[2]];
    last.wait_stored(&digest).await;
    let text = last.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("{outcome=\"fell_back_upstream\"}"), "{text}");
    assert_eq!(uploads(&text), 0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstreams_rate_limit_headers_reach_the_client_of_an_asker() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 2, 0).await;
    let (digest, bytes) = blob_owned_by(&reg, &fleet, 0, 200_000);
    reg.set_fault(Fault::RateLimitHeaders { remaining: 76 });
    let limits = |resp: &reqwest::Response| {
        ["ratelimit-limit", "ratelimit-remaining", "docker-ratelimit-source"].map(|h| resp.headers().get(h).map(|v| v.to_str().unwrap().to_owned()))
    };
    let from_upstream = [Some("100;w=21600".to_owned()), Some("76;w=21600".to_owned()), Some("192.0.2.7".to_owned())];
    let path = format!("/v2/library/app/blobs/{digest}");
    let resp = fleet.nodes[1].get(&path).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, from_upstream), "through the owner's fill");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &bytes[..]);
    fleet.nodes[1].metrics_with("regcache_fleet_fills_total{outcome=\"peer_fill\"} 1\n").await;
    // Stored on both now: no upstream response, no headers (as without the fleet).
    fleet.nodes[1].wait_stored(&digest).await;
    let resp = fleet.nodes[1].get(&path).await;
    assert_eq!((resp.status().as_u16(), limits(&resp)), (200, [None, None, None]), "a hit");
}

/// `member`'s state in `node`'s `/status.json`.
async fn status_of(node: &Mirror, member: &MemberId) -> String {
    let status: serde_json::Value = node.get("/status.json").await.json().await.unwrap();
    let members = status["fleet"]["members"].as_array().unwrap_or_else(|| panic!("{status}"));
    let found = members.iter().find(|m| m["node"] == member.as_str()).unwrap_or_else(|| panic!("{status}"));
    found["state"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_taken_for_down_is_probed_and_up_again_without_a_request() {
    let reg = FakeRegistry::start().await;
    let mut fleet = Fleet::start(&reg, 2, 0).await;
    let (digest, _) = blob_owned_by(&reg, &fleet, 0, 100_000);
    let owner = fleet.members[0].clone();
    fleet.proxies[0].kill();
    let pulled = pull(&fleet.nodes[1].url, &digest, Arc::default()).await.unwrap();
    assert_eq!(pulled, Ok(digest.clone()), "from the upstream, the owner being off the network");
    let down = format!("regcache_fleet_member_up{{member=\"{owner}\"}} 0\n");
    let text = fleet.nodes[1].metrics_with(&down).await;
    assert!(text.contains("regcache_fleet_fills_total{outcome=\"owner_down\"} 1\n"), "{text}");
    assert_eq!(status_of(&fleet.nodes[1], &owner).await, "down");
    assert_eq!(status_of(&fleet.nodes[1], &fleet.members[1]).await, "up", "this node");

    fleet.proxies[0].revive().await;
    // Up again on its probe, with no request of a client asking it meanwhile.
    let up = format!("regcache_fleet_member_up{{member=\"{owner}\"}} 1\n");
    let text = fleet.nodes[1].metrics_with(&up).await;
    assert!(text.contains("regcache_fleet_fills_total{outcome=\"owner_down\"} 1\n"), "{text}");
    assert!(!text.contains("outcome=\"peer_"), "no blob was asked of it: {text}");
    assert_eq!(status_of(&fleet.nodes[1], &owner).await, "up");
    // The owner answers again: a blob it owns comes from it.
    let (other, _) = blob_owned_by(&reg, &fleet, 0, 100_001);
    assert_eq!(pull(&fleet.nodes[1].url, &other, Arc::default()).await.unwrap(), Ok(other.clone()));
    fleet.nodes[1].metrics_with("regcache_fleet_fills_total{outcome=\"peer_fill\"} 1\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_needs_the_secret() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 1, 0).await;
    let url = format!("{}/_fleet/v1/ping", fleet.nodes[0].url);
    let cases: [(Option<&str>, u16); 3] = [(None, 401), (Some("wrong"), 403), (Some(SECRET), 200)];
    for (secret, status) in cases {
        let mut req = Mirror::client().get(&url);
        if let Some(s) = secret {
            req = req.header("x-regcache-fleet-secret", s);
        }
        assert_eq!(req.send().await.unwrap().status().as_u16(), status, "{secret:?}");
    }
}
