//! regcache started in-process on a free port, with its own data directory.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use regcache::cache::CoalescedCalls;
use regcache::config::{Config, Overrides};
use regcache::http::App;
use regcache::oci::RegistryHost;
use regcache::fill::Fills;
use tokio::sync::oneshot;

use crate::support::fake_registry::FakeRegistry;

/// Docker's `Accept` lines when pulling, one header line each.
pub const DOCKER_ACCEPT: [&str; 4] = [
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
];

/// A running regcache.
pub struct Mirror {
    pub url: String,
    pub data_dir: PathBuf,
    /// Its running fills, to see who waits on them.
    pub fills: Arc<Fills>,
    /// Its shared upstream calls (tag revalidations, manifest fetches), to see who waits on them.
    pub coalesced_calls: CoalescedCalls,
    /// The application itself (its store, the shared bucket's client), while it runs (weak: a
    /// stopped mirror releases its data directory).
    pub app: std::sync::Weak<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

/// Options for [`Mirror::start_with`].
#[derive(Default, Clone)]
pub struct Options {
    pub credentials: bool,
    /// Extra keys for the `[[upstream]]` table.
    pub extra: String,
    /// Extra top-level keys.
    pub top: String,
    /// More tables after the first upstream (`[[upstream]]` entries, `[access]`).
    pub tail: String,
    pub data_dir: Option<PathBuf>,
    /// The upstream's URL instead of `reg.url()` (e.g. naming it `localhost`).
    pub url: Option<String>,
    /// Decide whether the upstream is a private registry instead of resolving its host (every
    /// test server is on loopback, so without this every upstream is private).
    pub private_network: Option<bool>,
    /// A bucket shared with other mirrors, behind this one's data directory.
    pub bucket: Option<std::sync::Arc<dyn regcache::store::SharedBackend>>,
}

impl Mirror {
    /// regcache mirroring `reg` as docker.io, with the fake's credentials.
    pub async fn start(reg: &FakeRegistry) -> Mirror {
        Mirror::start_with(reg, Options { credentials: true, ..Default::default() }).await
    }

    pub async fn start_with(reg: &FakeRegistry, opts: Options) -> Mirror {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Mirror::start_on(reg, opts, listener).await
    }

    /// regcache serving on `listener` (bound before, so that its address can be in its
    /// configuration, as a fleet's members need).
    pub async fn start_on(reg: &FakeRegistry, opts: Options, listener: tokio::net::TcpListener) -> Mirror {
        let (tmp, data_dir) = match opts.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let creds = if opts.credentials { "username = \"ci\"\npassword = \"s3cret\"\n" } else { "" };
        let toml = format!(
            "data_dir = {:?}\n{}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\n{creds}{}\n{}\n",
            data_dir.display().to_string(),
            opts.top,
            opts.url.unwrap_or_else(|| reg.url()),
            opts.extra,
            opts.tail
        );
        let mut config = Config::from_toml(&toml, &Overrides::default(), Path::new(".")).expect("config");
        config.upstreams[0].private_network = opts.private_network;
        let registry = regcache::app::open_with(&config, opts.bucket, Default::default()).expect("open registry");
        let fills = registry.cache().fills().clone();
        let coalesced_calls = registry.cache().coalesced_calls();
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(regcache::http::serve(listener, registry.clone(), async {
            let _ = stopped.await;
        }));
        Mirror { url, data_dir, fills, coalesced_calls, app: Arc::downgrade(&registry), stop: Some(stop), task: Some(task), _tmp: tmp }
    }

    /// The shared bucket's client of this running mirror.
    pub fn shared(&self) -> Arc<regcache::store::Shared> {
        let app = self.app.upgrade().expect("the mirror runs");
        app.cache().store().shared().cloned().expect("a shared bucket")
    }

    /// regcache with extra top-level configuration.
    pub async fn start_with_top(reg: &FakeRegistry, top: &str) -> Mirror {
        Mirror::start_with(reg, Options { credentials: true, top: top.into(), ..Default::default() }).await
    }

    /// Stop serving and wait until the server has drained and flushed its index.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
    }

    pub fn client() -> reqwest::Client {
        reqwest::Client::builder().build().expect("client")
    }

    /// A manifest request (`method` GET or HEAD) accepting Docker's schema2 type; add headers and send.
    pub fn manifest_request(&self, method: reqwest::Method, name: &str, reference: &str) -> reqwest::RequestBuilder {
        Mirror::client()
            .request(method, format!("{}/v2/{name}/manifests/{reference}", self.url))
            .header("accept", "application/vnd.docker.distribution.manifest.v2+json")
    }

    /// `GET` a manifest the way Docker asks for it.
    pub async fn get_manifest(&self, name: &str, reference: &str) -> reqwest::Response {
        let mut req = Mirror::client().get(format!("{}/v2/{name}/manifests/{reference}", self.url));
        for a in DOCKER_ACCEPT {
            req = req.header("accept", a);
        }
        req.send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        Mirror::client().get(format!("{}{path}", self.url)).send().await.expect("request")
    }

    pub async fn head(&self, path: &str) -> reqwest::Response {
        Mirror::client().head(format!("{}{path}", self.url)).send().await.expect("request")
    }

    /// The bytes of a blob, or the error that cut the body.
    pub async fn blob(&self, name: &str, digest: &str) -> Result<(reqwest::StatusCode, Vec<u8>), reqwest::Error> {
        let resp = self.get(&format!("/v2/{name}/blobs/{digest}")).await;
        let status = resp.status();
        let body = resp.bytes().await?;
        Ok((status, body.to_vec()))
    }

    /// Every file under the blob directory, and whether the temporary directory is empty.
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else { return };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.data_dir.join("blobs"), &mut out);
        out
    }

    /// The metrics text once it contains `needle` (bounded wait: background work updates them).
    pub async fn metrics_with(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = self.get("/metrics").await.text().await.expect("metrics");
            if text.contains(needle) {
                return text;
            }
            assert!(tokio::time::Instant::now() < deadline, "metrics never showed {needle:?}:\n{text}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Bytes in the temporary files of running fills.
    pub fn tmp_bytes(&self) -> u64 {
        std::fs::read_dir(self.data_dir.join("tmp"))
            .map(|d| d.flatten().filter_map(|e| e.metadata().ok()).map(|md| md.len()).sum())
            .unwrap_or(0)
    }

    pub fn tmp_files(&self) -> usize {
        std::fs::read_dir(self.data_dir.join("tmp")).map(|d| d.count()).unwrap_or(0)
    }

    /// Wait until a blob a client just received is stored: clients get the last byte once the
    /// digest checks out, and the file is made durable and indexed right after.
    pub async fn wait_stored(&self, digest: &str) {
        eventually(&format!("{digest} stored"), || self.has_blob(digest)).await;
        self.metrics_with("regcache_fills_in_progress 0\n").await;
    }

    /// How many requests wait on (or read) the fill of `digest` from `upstream`.
    pub fn fill_waiters(&self, upstream: &str, digest: &str) -> usize {
        let digest = digest.parse().expect("a digest");
        self.fills.get(&RegistryHost::new(upstream), &digest).map_or(0, |f| f.readers())
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        let hex = digest.trim_start_matches("sha256:");
        self.data_dir.join("blobs/sha256").join(&hex[..2]).join(hex).exists()
    }
}

/// The OCI error code in a response body.
pub async fn error_code(resp: reqwest::Response) -> (reqwest::StatusCode, String) {
    let status = resp.status();
    let v: serde_json::Value = resp.json().await.expect("an OCI error body");
    (status, v["errors"][0]["code"].as_str().unwrap_or("").to_owned())
}

/// The whole body of `url`, fetched in the background.
pub fn spawn_get(url: &str) -> tokio::task::JoinHandle<Vec<u8>> {
    let url = url.to_owned();
    tokio::spawn(async move { Mirror::client().get(url).send().await.unwrap().bytes().await.unwrap().to_vec() })
}

/// What a `Range` request got ([`spawn_range`]).
#[derive(Debug)]
pub struct RangeAnswer {
    pub status: u16,
    pub content_range: Option<String>,
    /// The body, or why it was cut.
    pub body: Result<Vec<u8>, String>,
    /// Whether the response's headers came while the fill of its blob had no verdict yet.
    pub before_the_verdict: bool,
}

/// `GET url` with `Range: range`, in the background; `fills` are the mirror's, whose fill of
/// `digest` from `docker.io` is watched for its verdict when the response headers arrive.
pub fn spawn_range(fills: &Arc<Fills>, url: &str, digest: &str, range: &str) -> tokio::task::JoinHandle<RangeAnswer> {
    use futures_util::FutureExt;
    let (fills, url, range) = (fills.clone(), url.to_owned(), range.to_owned());
    let digest: regcache::oci::Digest = digest.parse().expect("a digest");
    tokio::spawn(async move {
        let resp = Mirror::client().get(url).header("range", range).send().await.expect("response headers");
        // `verified` answers at once when the fill has its verdict.
        let before_the_verdict = fills.get(&RegistryHost::new("docker.io"), &digest).is_some_and(|f| f.verified().now_or_never().is_none());
        let status = resp.status().as_u16();
        let content_range = resp.headers().get("content-range").map(|v| v.to_str().expect("ASCII").to_owned());
        let body = resp.bytes().await.map(|b| b.to_vec()).map_err(|e| e.to_string());
        RangeAnswer { status, content_range, body, before_the_verdict }
    })
}

/// How long a test waits for something that happens at once when regcache is right.
pub const PROMPTLY: std::time::Duration = std::time::Duration::from_secs(10);

/// Wait (bounded) for a condition that another task makes true.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// An `[access]` table (without its closing keys, so a test may add some) whose htpasswd file in
/// `dir` has the one user `dev` with password `letmein`, as `htpasswd -B` writes it (`$2y$`).
pub fn htpasswd_access(dir: &Path) -> String {
    let hash = bcrypt::hash("letmein", 4).expect("bcrypt").replacen("$2b$", "$2y$", 1);
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("dev:{hash}\n")).expect("write htpasswd");
    format!("[access]\nhtpasswd = {:?}\n", htpasswd.display().to_string())
}
