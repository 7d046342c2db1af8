//! The request log as a log shipper reads it: the real binary's stderr with `log_format = "json"`
//! (every line one JSON object; the access line's fields for a miss, a coalesced miss, a hit and a
//! pass-through), the request id kept, replaced and echoed, the same fields in the text format,
//! and no credential in any line of either.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::it::mirror::{htpasswd_access, PROMPTLY};
use crate::support::fake_registry::{Fault, FakeRegistry};
use crate::support::images;

const BIN: &str = env!("CARGO_BIN_EXE_regcache");
/// The upstream's password: regcache sends it for tokens, and must never log it.
const UPSTREAM_PASSWORD: &str = "upstream-pw-7f3a9c";
/// The client's password (`htpasswd_access`), and its Basic header's value.
const CLIENT_PASSWORD: &str = "letmein";

/// `regcache serve` as a child process, its stderr collected by a thread.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A server in `log_format` (none: the default) against `reg`, with client credentials
    /// required and upstream credentials configured.
    async fn start(reg: &FakeRegistry, log_format: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let format = log_format.map(|f| format!("log_format = {f:?}\n")).unwrap_or_default();
        let config = format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = {:?}\n{format}{}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nusername = \"loguser\"\npassword = \"{UPSTREAM_PASSWORD}\"\n",
            dir.path().join("data").display().to_string(),
            htpasswd_access(dir.path()),
            reg.url(),
        );
        let file = dir.path().join("regcache.toml");
        std::fs::File::create(&file).unwrap().write_all(config.as_bytes()).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&file)
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().unwrap();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let server = Server { child, url: format!("http://127.0.0.1:{port}"), log, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("{}/healthz", server.url)).await.is_err() {
            assert!(Instant::now() < deadline, "regcache did not start: {}", server.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// A GET with the client's credentials and, if given, an `X-Request-Id`.
    fn get(&self, path: &str, id: Option<&[u8]>) -> reqwest::RequestBuilder {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.url)).basic_auth("dev", Some(CLIENT_PASSWORD));
        if let Some(id) = id {
            req = req.header("x-request-id", reqwest::header::HeaderValue::from_bytes(id).unwrap());
        }
        req
    }

    /// The JSON access line of the request with `id` (waiting for it: it is written when the
    /// body is done).
    async fn access_line(&self, id: &str) -> Value {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            let found = self.log().lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|v| {
                v["message"] == "request" && v["request_id"] == id
            });
            if let Some(line) = found {
                return line;
            }
            assert!(Instant::now() < deadline, "no access line for {id}: {}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The text access line of the request with `id`.
    async fn text_line(&self, id: &str) -> String {
        let deadline = Instant::now() + PROMPTLY;
        loop {
            if let Some(line) = self.log().lines().find(|l| l.contains(" request ") && l.contains(&format!("request_id={id} "))) {
                return line.to_owned();
            }
            assert!(Instant::now() < deadline, "no access line for {id}: {}", self.log());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop the server and return everything it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let _ = self.child.wait();
        // The reader thread ends at EOF, which came with the exit; give it a moment to append.
        std::thread::sleep(Duration::from_millis(100));
        self.log()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Neither the upstream's password nor the client's (plain or in its Basic header) is in `log`.
fn assert_no_credentials(log: &str) {
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("dev:{CLIENT_PASSWORD}"));
    for secret in [UPSTREAM_PASSWORD, CLIENT_PASSWORD, basic.as_str()] {
        assert!(!log.contains(secret), "{secret:?} logged: {log}");
    }
}

fn assert_access_line(line: &Value, id: &str, path: &str, status: u64, bytes: usize, cache: &str) {
    assert_eq!(line["request_id"], id, "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["path"], path, "{line}");
    assert_eq!(line["status"], status, "{line}");
    assert_eq!(line["bytes"], bytes as u64, "{line}");
    assert!(line["duration_ms"].is_u64(), "{line}");
    assert_eq!(line["cache"], cache, "{line}");
    assert_eq!(line["upstream"], "docker.io", "{line}");
    assert!(line["client"].as_str().is_some_and(|c| c.starts_with("127.0.0.1:")), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_lines_carry_the_request_and_how_the_cache_answered_it() {
    let reg = FakeRegistry::start().await;
    reg.set_credentials("loguser", UPSTREAM_PASSWORD);
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 300_000);
    let layer = image.layers[0].clone();
    let server = Server::start(&reg, Some("json")).await;

    // A miss: the manifest fetched from upstream (with its credentials).
    let resp = server.get("/v2/alpine/manifests/3", Some(b"manifest-1")).send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "manifest-1", "the client's id is echoed");
    let body = resp.bytes().await.unwrap();
    let line = server.access_line("manifest-1").await;
    assert_access_line(&line, "manifest-1", "/v2/alpine/manifests/3", 200, body.len(), "miss");
    assert!(!reg.token_requests().is_empty(), "the upstream's credentials were used");

    // A miss and a request that joins its fill: coalesced.
    let blob = format!("/v2/alpine/blobs/{}", layer.digest);
    reg.set_fault(Fault::Hold { path_contains: "/blobs/".into() });
    let first = tokio::spawn(server.get(&blob, Some(b"fill-first")).send());
    tokio::time::timeout(PROMPTLY, reg.wait_held(1)).await.expect("the fill started");
    let second = tokio::spawn(server.get(&blob, Some(b"fill-second")).send());
    let deadline = Instant::now() + PROMPTLY;
    loop {
        let metrics = reqwest::get(format!("{}/metrics", server.url)).await.unwrap().text().await.unwrap();
        if metrics.contains("regcache_fill_coalesced_readers 1\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the second request did not join the fill: {metrics}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    reg.release_held();
    for (task, id, cache) in [(first, "fill-first", "miss"), (second, "fill-second", "coalesced")] {
        let resp = task.await.unwrap().unwrap();
        assert_eq!(resp.headers()["x-request-id"], id);
        assert_eq!(resp.bytes().await.unwrap(), layer.bytes);
        let line = server.access_line(id).await;
        assert_access_line(&line, id, &blob, 200, layer.bytes.len(), cache);
    }
    reg.clear_faults();

    // A hit, once the fill stored it.
    let deadline = Instant::now() + PROMPTLY;
    let mut n = 0;
    let hit = loop {
        n += 1;
        let id = format!("hit-{n}");
        let resp = server.get(&blob, Some(id.as_bytes())).send().await.unwrap();
        assert_eq!(resp.bytes().await.unwrap(), layer.bytes);
        let line = server.access_line(&id).await;
        if line["cache"] == "hit" {
            break (id, line);
        }
        assert!(Instant::now() < deadline, "never a hit: {line}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_access_line(&hit.1, &hit.0, &blob, 200, layer.bytes.len(), "hit");

    // A pass-through: tag lists aren't cached as answers.
    let resp = server.get("/v2/alpine/tags/list", Some(b"tags-1")).send().await.unwrap();
    let body = resp.bytes().await.unwrap();
    let line = server.access_line("tags-1").await;
    assert_access_line(&line, "tags-1", "/v2/alpine/tags/list", 200, body.len(), "pass");

    // Ids that aren't kept are replaced, and the replacement is echoed and logged.
    let too_long = [b'a'; 129];
    for bad in [&too_long[..], b"has space", b"caf\xc3\xa9"] {
        let resp = server.get("/v2/", Some(bad)).send().await.unwrap();
        let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_ne!(made.as_bytes(), bad);
        assert!(!made.is_empty() && made.len() <= 128 && made.bytes().all(|b| b.is_ascii_graphic()), "{made:?}");
        let line = server.access_line(&made).await;
        assert_eq!(line["path"], "/v2/", "{line}");
        assert!(line.get("cache").is_none() && line.get("upstream").is_none(), "no cache, no upstream: {line}");
    }
    // The longest id kept; none sent: one is made, a different one each time.
    let longest = "b".repeat(128);
    let resp = server.get("/v2/", Some(longest.as_bytes())).send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], longest.as_str());
    server.access_line(&longest).await;
    let made: Vec<String> = futures_util::future::join_all((0..2).map(|_| server.get("/v2/", None).send()))
        .await
        .into_iter()
        .map(|r| r.unwrap().headers()["x-request-id"].to_str().unwrap().to_owned())
        .collect();
    assert_ne!(made[0], made[1]);
    for id in &made {
        server.access_line(id).await;
    }
    // A refused client is logged too, without its (wrong) credentials.
    let resp = reqwest::Client::new()
        .get(format!("{}/v2/", server.url))
        .basic_auth("dev", Some("not-the-password"))
        .header("x-request-id", "refused-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(server.access_line("refused-1").await["status"], 401);

    let log = server.stop();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.is_object() && v["timestamp"].is_string() && v["level"].is_string(), "{line}");
    }
    assert!(log.lines().count() > 10, "{log}");
    assert_no_credentials(&log);
    assert!(!log.contains("not-the-password"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_access_lines_carry_the_same_fields_and_no_credentials() {
    let reg = FakeRegistry::start().await;
    reg.set_credentials("loguser", UPSTREAM_PASSWORD);
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100_000);
    let server = Server::start(&reg, None).await;

    let resp = server.get("/v2/alpine/manifests/3", Some(b"text-1")).send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "text-1");
    let body = resp.bytes().await.unwrap();
    let line = server.text_line("text-1").await;
    for field in [
        "request_id=text-1 ".to_owned(),
        "method=GET ".to_owned(),
        "path=/v2/alpine/manifests/3 ".to_owned(),
        "status=200 ".to_owned(),
        format!("bytes={} ", body.len()),
        "duration_ms=".to_owned(),
        "cache=\"miss\"".to_owned(),
        "upstream=\"docker.io\"".to_owned(),
        "client=127.0.0.1:".to_owned(),
    ] {
        assert!(line.contains(&field), "{field:?} in {line}");
    }
    let blob = format!("/v2/alpine/blobs/{}", image.layers[0].digest);
    let resp = server.get(&blob, None).send().await.unwrap();
    let made = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(resp.bytes().await.unwrap(), image.layers[0].bytes);
    assert!(server.text_line(&made).await.contains("cache=\"miss\""));

    let log = server.stop();
    assert!(serde_json::from_str::<Value>(log.lines().next().unwrap_or_default()).is_err(), "text, not JSON: {log}");
    assert_no_credentials(&log);
}
