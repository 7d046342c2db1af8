//! Three regcache nodes in one fleet against one fake upstream: a cold blob is fetched from the
//! upstream once for every client of every node; the owner stopping mid-stream, or a listed member
//! that never started, fails no pull; the member-to-member API refuses requests without the
//! fleet's secret. A tag revalidated by clients of every node costs one upstream request (its
//! owner's); an owner's answer that doesn't verify is refused, an owner that is down skipped, and
//! with the upstream down every node serves its tags stale; a cold blob's `HEAD` asks its owner.
//! With a shared bucket, the node that fetched a blob from the upstream uploads it (the owner, or
//! an asker that finished from the upstream), and no other. Members reach each other through small
//! TCP proxies (their member URLs), so a
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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::it::mirror::{error_code, eventually, Mirror, Options, PROMPTLY};
use crate::support::fake_registry::{sha256_digest, Fault, FakeRegistry};
use crate::support::images;

const SECRET: &str = "fleet-test-secret";

/// A TCP proxy to a node: the node's member URL. Killed, its connections are cut and new ones
/// refused.
pub(crate) struct Proxy {
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

    pub(crate) fn kill(&self) {
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
pub(crate) struct Fleet {
    pub(crate) nodes: Vec<Mirror>,
    pub(crate) proxies: Vec<Proxy>,
    /// Every member's id (the proxies', then any listed member that never started).
    members: Vec<MemberId>,
    /// The ports of the members that never started: bound, never listening, so connections are
    /// refused and no other test's server gets the port meanwhile.
    absent: Vec<TcpSocket>,
    _dir: tempfile::TempDir,
}

impl Fleet {
    /// `n` nodes, plus `absent` listed members that never start (their ports refuse connections).
    pub(crate) async fn start(reg: &FakeRegistry, n: usize, absent: usize) -> Fleet {
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
        Fleet { nodes, proxies, members, absent: absent_ports, _dir: dir }
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
pub(crate) fn blob_owned_by(reg: &FakeRegistry, fleet: &Fleet, owner: usize, len: usize) -> (String, Vec<u8>) {
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
    // A HEAD of a blob the member that never started owns: answered all the same.
    let (other, _) = blob_owned_by(&reg, &fleet, 2, 1000);
    for node in &fleet.nodes {
        let resp = node.head(&format!("/v2/library/app/blobs/{other}")).await;
        assert_eq!((resp.status().as_u16(), resp.headers()["content-length"].to_str().unwrap()), (200, "1000"));
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

/// The first tag `t<i>` of `library/app` whose owner among `fleet`'s members is `owner`, pushed as
/// a schema2 image.
fn tag_owned_by(reg: &FakeRegistry, fleet: &Fleet, owner: usize) -> (String, images::Image) {
    let tag = (0u32..).map(|i| format!("t{i}")).find(|t| fleet.order(&format!("docker.io/library/app:{t}"))[0] == owner).unwrap();
    let image = images::schema2_image(reg, "library/app", &tag, 1, 10);
    (tag, image)
}

/// `GET` the manifest `library/app:<tag>` through `url` as a Docker schema2 client: its status
/// and digest, and whether the body hashed to that digest.
async fn get_tag(url: &str, tag: &str) -> (u16, String, bool) {
    let resp = Mirror::client()
        .get(format!("{url}/v2/library/app/manifests/{tag}"))
        .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let digest = resp.headers().get("docker-content-digest").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let body = resp.bytes().await.unwrap();
    let verified = sha256_digest(&body) == digest;
    (status, digest, verified)
}

/// The metrics line of `regcache_fleet_tag_revalidations_total` for `outcome`, with its value.
fn tag_outcome(outcome: &str, n: usize) -> String {
    format!("regcache_fleet_tag_revalidations_total{{outcome=\"{outcome}\"}} {n}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_revalidated_by_clients_of_three_nodes_costs_one_upstream_request() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 3, 0).await;
    let (tag, image) = tag_owned_by(&reg, &fleet, 0);
    let order = fleet.order(&format!("docker.io/library/app:{tag}"));
    let (owner, askers) = (&fleet.nodes[order[0]], [&fleet.nodes[order[1]], &fleet.nodes[order[2]]]);
    // Cold, then (tag_ttl 0: always revalidated) warm: each time, the upstream is held until every
    // client of every node waits on one revalidation (each asker's own, and the owner's that
    // the askers' asks joined).
    reg.set_fault(Fault::Hold { path_contains: format!("/manifests/{tag}") });
    // Cold: the owner's HEAD without a token (answered 401), with it, and its GET; warm: its HEAD.
    for (round, upstream_requests) in [("cold", 3), ("warm", 1)] {
        reg.clear_log();
        let burst: Vec<_> = (0..30)
            .map(|i| {
                let (url, tag) = (fleet.nodes[i % 3].url.clone(), tag.clone());
                tokio::spawn(async move { get_tag(&url, &tag).await })
            })
            .collect();
        tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect(round);
        for asker in askers {
            eventually(&format!("{round}: an asker's 10 clients wait on its one ask"), || asker.coalesced_calls.revalidation_waiters() == 10).await;
        }
        eventually(&format!("{round}: the owner's 10 clients and the 2 asks"), || owner.coalesced_calls.revalidation_waiters() == 12).await;
        for step in 0..upstream_requests {
            if step > 0 {
                tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect(round);
            }
            reg.pass_held();
        }
        for got in burst {
            assert_eq!(got.await.unwrap(), (200, image.manifest.digest.clone(), true), "{round}");
        }
        let (heads, gets) = (reg.count("HEAD", &format!("/manifests/{tag}")), reg.count("GET", &format!("/manifests/{tag}")));
        match round {
            "cold" => assert_eq!((heads, gets), (2, 1), "{:?}", reg.requests()),
            _ => assert_eq!((heads, gets), (1, 0), "one HEAD for the fleet: {:?}", reg.requests()),
        }
    }
    reg.release_held();
    // The askers learnt the tag from the owner each time (the second time without the manifest's
    // bytes: they had them); the owner asked nobody.
    for asker in askers {
        asker.metrics_with(&tag_outcome("peer_answer", 2)).await;
    }
    let text = owner.get("/metrics").await.text().await.unwrap();
    assert!(!text.contains("regcache_fleet_tag_revalidations_total{"), "{text}");
}

/// A member at `socket` that answers every tag it is asked about with `digest` and `body`
/// (whatever they are): how many it answered.
fn fake_member(socket: TcpSocket, digest: String, body: Vec<u8>) -> Arc<AtomicUsize> {
    let asked = Arc::new(AtomicUsize::new(0));
    let listener = socket.listen(64).unwrap();
    let counter = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (digest, body, counter) = (digest.clone(), body.clone(), counter.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read_exact(&mut byte).await.is_ok() {
                    head.push(byte[0]);
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/vnd.docker.distribution.manifest.v2+json\r\ndocker-content-digest: {digest}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
                let _ = conn.write_all(&body).await;
            });
        }
    });
    asked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tags_owner_answering_bytes_that_are_not_its_digest_is_refused() {
    let reg = FakeRegistry::start().await;
    let mut fleet = Fleet::start(&reg, 2, 1).await;
    // The owner is a member that claims the right digest with another manifest's bytes.
    let (tag, image) = tag_owned_by(&reg, &fleet, 2);
    let other = images::schema2_image(&reg, "library/other", "1", 1, 10);
    let asked = fake_member(fleet.absent.remove(0), image.manifest.digest.clone(), other.manifest.bytes.clone());
    let order = fleet.order(&format!("docker.io/library/app:{tag}"));
    // The node after the owner: its answer refused, it asks the upstream itself.
    let next = &fleet.nodes[order[1]];
    assert_eq!(get_tag(&next.url, &tag).await, (200, image.manifest.digest.clone(), true));
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    let text = next.metrics_with(&tag_outcome("refused", 1)).await;
    assert!(text.contains(&tag_outcome("fell_back_upstream", 1)), "{text}");
    // The last node: the owner's answer refused, the next member in the tag's order answers.
    let last = &fleet.nodes[order[2]];
    reg.clear_log();
    assert_eq!(get_tag(&last.url, &tag).await, (200, image.manifest.digest.clone(), true));
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    let text = last.metrics_with(&tag_outcome("refused", 1)).await;
    assert!(text.contains(&tag_outcome("peer_answer", 1)), "{text}");
    assert!(!text.contains("{outcome=\"fell_back_upstream\"}"), "{text}");
    // Nothing but the manifest that has the digest is stored under it.
    let by_digest = last.get(&format!("/v2/library/app/manifests/{}", image.manifest.digest)).await;
    assert!(by_digest.bytes().await.unwrap() == image.manifest.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tags_owner_that_is_down_fails_no_request() {
    let reg = FakeRegistry::start().await;
    // The member that never started owns the tag.
    let fleet = Fleet::start(&reg, 2, 1).await;
    let (tag, image) = tag_owned_by(&reg, &fleet, 2);
    let order = fleet.order(&format!("docker.io/library/app:{tag}"));
    let started = Instant::now();
    // The node after the owner asks the upstream itself; the last node asks it.
    for i in [order[1], order[2]] {
        assert_eq!(get_tag(&fleet.nodes[i].url, &tag).await, (200, image.manifest.digest.clone(), true));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "a refused connection is skipped at once: {:?}", started.elapsed());
    let next = fleet.nodes[order[1]].metrics_with(&tag_outcome("owner_down", 1)).await;
    assert!(next.contains(&tag_outcome("fell_back_upstream", 1)), "{next}");
    let last = fleet.nodes[order[2]].metrics_with(&tag_outcome("owner_down", 1)).await;
    assert!(last.contains(&tag_outcome("peer_answer", 1)), "{last}");
    // The node after the owner revalidated the tag twice (tag_ttl 0): for its client and for the
    // last node's (the first HEAD answered 401 for a token); the manifest was fetched once.
    assert_eq!(reg.count("HEAD", &format!("/manifests/{tag}")), 3, "{:?}", reg.requests());
    assert_eq!(reg.count("GET", &format!("/manifests/{tag}")), 1, "{:?}", reg.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_blobs_head_asks_its_owner() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 3, 0).await;
    let (digest, bytes) = blob_owned_by(&reg, &fleet, 0, 100_000);
    let order = fleet.order(&digest);
    let owner = &fleet.nodes[order[0]];
    // The owner has a token for the repository already.
    let (tag, _) = tag_owned_by(&reg, &fleet, order[0]);
    assert_eq!(get_tag(&owner.url, &tag).await.0, 200);
    let path = format!("/v2/library/app/blobs/{digest}");
    // Not stored anywhere: the owner's upstream HEAD answers it, the asker's upstream isn't asked.
    reg.clear_log();
    let resp = fleet.nodes[order[1]].head(&path).await;
    assert_eq!((resp.status().as_u16(), resp.headers()["content-length"].to_str().unwrap()), (200, "100000"));
    assert_eq!(reg.count("HEAD", &digest), 1, "the owner's HEAD only: {:?}", reg.requests());
    owner.metrics_with("regcache_http_requests_total{route=\"fleet\",status=\"200\"} 1\n").await;
    // Stored at the owner: nobody asks the upstream.
    assert_eq!(owner.blob("library/app", &digest).await.unwrap(), (reqwest::StatusCode::OK, bytes));
    owner.wait_stored(&digest).await;
    reg.clear_log();
    for &i in &order[1..] {
        let resp = fleet.nodes[i].head(&path).await;
        assert_eq!((resp.status().as_u16(), resp.headers()["content-length"].to_str().unwrap()), (200, "100000"));
    }
    assert!(reg.requests().is_empty() && reg.cdn_requests().is_empty(), "{:?}", reg.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_upstream_down_every_node_serves_its_tags_stale() {
    let reg = FakeRegistry::start().await;
    let fleet = Fleet::start(&reg, 3, 0).await;
    let (tag, image) = tag_owned_by(&reg, &fleet, 0);
    for node in &fleet.nodes {
        assert_eq!(get_tag(&node.url, &tag).await, (200, image.manifest.digest.clone(), true));
    }
    reg.stop().await;
    let order = fleet.order(&format!("docker.io/library/app:{tag}"));
    for &i in &order {
        let resp = fleet.nodes[i].manifest_request(reqwest::Method::GET, "library/app", &tag).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
        assert!(resp.headers()["warning"].to_str().unwrap().starts_with("110"));
    }
    // The owner said its upstream failed: an answer, not a failure; it is not taken for down.
    for &i in &order[1..] {
        let text = fleet.nodes[i].metrics_with(&tag_outcome("fell_back_upstream", 1)).await;
        assert!(!text.contains("{outcome=\"owner_down\"}"), "{text}");
        assert!(text.lines().filter(|l| l.starts_with("regcache_fleet_member_up{")).all(|l| l.ends_with(" 1")), "{text}");
    }
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
