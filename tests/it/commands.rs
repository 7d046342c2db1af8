//! The maintenance commands, run as the real binary against the fake upstream: warm, ls, verify,
//! gc, check-config, with and without a server holding the data directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

const BIN: &str = env!("CARGO_BIN_EXE_regcache");

struct Setup {
    _dir: tempfile::TempDir,
    config: PathBuf,
    data: PathBuf,
}

fn setup(reg: &FakeRegistry, listen: &str) -> Setup {
    setup_with(reg, listen, |_| String::new())
}

/// As [`setup`], with more configuration (`[tls]`, `[access]`) made by `tail` from the directory.
fn setup_with(reg: &FakeRegistry, listen: &str, tail: impl FnOnce(&Path) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let tail = tail(dir.path());
    let data = dir.path().join("data");
    let config = dir.path().join("regcache.toml");
    let mut f = std::fs::File::create(&config).unwrap();
    write!(
        f,
        "listen = \"{listen}\"\ndata_dir = {:?}\n{tail}\n[[upstream]]\nname = \"docker.io\"\nurl = \"{}\"\nusername = \"ci\"\npassword = \"s3cret\"\n",
        data.display().to_string(),
        reg.url()
    )
    .unwrap();
    Setup { _dir: dir, config, data }
}

/// The real binary with `args` and `--config config`, off the async threads.
pub async fn regcache(config: &Path, args: &[&str]) -> Output {
    let config = config.to_owned();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN).args(&args).arg("--config").arg(&config).stdin(Stdio::null()).output().unwrap()
    })
    .await
    .unwrap()
}

/// What a command printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_ls_verify_gc_without_a_server() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 20_000);
    let list = images::manifest_list(&reg, "library/multi", "1");
    let s = setup(&reg, "127.0.0.1:1");

    let o = regcache(&s.config, &["warm", "alpine:3", "multi:1", "--platform", "linux/arm64"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warmed docker.io/alpine:3: 1 manifests, 3 blobs"), "{}", text(&o));
    for b in image.blobs() {
        assert_eq!(reg.cdn_count(&b.digest), 1);
    }
    let arm = list.children.iter().find(|c| c.platform.starts_with("linux/arm64")).unwrap();
    let amd = list.children.iter().find(|c| c.platform == "linux/amd64").unwrap();
    assert_eq!(reg.cdn_count(&arm.layers[0].digest), 1, "the chosen platform is warmed");
    assert_eq!(reg.cdn_count(&amd.layers[0].digest), 0, "other platforms are not");

    let o = regcache(&s.config, &["ls"]).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("docker.io/library/alpine") && out.contains("docker.io/library/multi"), "{out}");
    assert!(out.contains("revalidated"), "{out}");
    let o = regcache(&s.config, &["ls", "alpine"]).await;
    assert!(!text(&o).contains("multi"), "{}", text(&o));

    let o = regcache(&s.config, &["verify"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("0 corrupt"), "{}", text(&o));

    // Flip one byte of a stored layer: verify finds it, quarantines it, and says so in its exit code.
    let layer = &image.layers[0].digest;
    let hex = layer.trim_start_matches("sha256:");
    let path = s.data.join("blobs/sha256").join(&hex[..2]).join(hex);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let o = regcache(&s.config, &["verify"]).await;
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(layer.as_str()), "{}", text(&o));
    assert!(!path.exists());
    assert!(s.data.join("quarantine").join(hex).exists());

    let o = regcache(&s.config, &["gc", "--max-size", "0", "--dry-run"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("would evict"), "{}", text(&o));
    assert!(s.data.join("blobs/sha256").join(&image.layers[1].digest[7..9]).exists());
    let o = regcache(&s.config, &["gc", "--max-size", "0"]).await;
    assert!(o.status.success(), "{}", text(&o));
    let o = regcache(&s.config, &["ls"]).await;
    assert!(text(&o).contains("0 B stored"), "{}", text(&o));
    let o = regcache(&s.config, &["gc"]).await;
    assert_eq!(o.status.code(), Some(2), "no size configured: {}", text(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_server_running_warm_goes_through_it_and_the_rest_refuse_clearly() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = setup(&reg, &format!("127.0.0.1:{port}"));
    let mut server = Command::new(BIN).arg("serve").arg("--config").arg(&s.config).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let o = regcache(&s.config, &["warm", "docker.io/library/alpine:3"]).await;
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(reg.cdn_count(&image.layers[0].digest), 1);
    for cmd in ["ls", "verify"] {
        let o = regcache(&s.config, &[cmd]).await;
        assert_eq!(o.status.code(), Some(2), "{cmd}: {}", text(&o));
        assert!(text(&o).contains("in use by a running regcache server"), "{}", text(&o));
    }
    let _ = server.kill();
    let _ = server.wait();
}

/// `[tls]` with a fresh self-signed certificate in `dir`.
pub fn tls(dir: &Path) -> String {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", text(&made));
    format!("[tls]\ncert = {:?}\nkey = {:?}\n", cert.display().to_string(), key.display().to_string())
}

/// `[access]` that requires credentials and refuses loopback addresses altogether.
fn access(dir: &Path) -> String {
    let htpasswd = dir.join("htpasswd");
    std::fs::write(&htpasswd, format!("dev:{}\n", bcrypt::hash("letmein", 4).unwrap())).unwrap();
    format!("[access]\nhtpasswd = {:?}\nallow = [\"10.0.0.0/8\"]\n", htpasswd.display().to_string())
}

/// Start `regcache serve` with the configuration `tail` makes, warm an image, and check that the
/// running server fetched it.
async fn warm_through_a_running_server(tail: impl FnOnce(&Path) -> String) {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let s = setup_with(&reg, &format!("127.0.0.1:{port}"), tail);
    let mut server = Command::new(BIN).arg("serve").arg("--config").arg(&s.config).stderr(Stdio::null()).spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() || !s.data.join("regcache.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(s.data.join("regcache.sock")).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "only the owner may use the local socket");
    let o = regcache(&s.config, &["warm", "docker.io/library/alpine:3"]).await;
    let _ = server.kill();
    let _ = server.wait();
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("warmed docker.io/library/alpine:3: 1 manifests, 2 blobs"), "{}", text(&o));
    assert_eq!(reg.cdn_count(&image.layers[0].digest), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_goes_through_a_running_server_with_tls() {
    warm_through_a_running_server(tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_goes_through_a_running_server_with_access_control() {
    warm_through_a_running_server(access).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_goes_through_a_running_server_with_tls_and_access_control() {
    warm_through_a_running_server(|dir| format!("{}{}", tls(dir), access(dir))).await;
}

#[tokio::test]
async fn check_config_masks_secrets() {
    let reg = FakeRegistry::start().await;
    let s = setup(&reg, "127.0.0.1:5000");
    let o = tokio::task::spawn_blocking(move || Command::new(BIN).arg("check-config").arg(&s.config).output().unwrap())
        .await
        .unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("username = ci") && out.contains("********"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
}
