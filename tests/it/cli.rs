//! The `regcache` binary: configuration errors, start-up, and graceful shutdown.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_regcache");

fn serve_with(config: &str) -> std::process::Output {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(config.as_bytes()).unwrap();
    Command::new(BIN).args(["serve", "--config"]).arg(f.path()).output().unwrap()
}

#[test]
fn bad_configurations_stop_with_one_line_and_exit_2() {
    let cases = [
        ("listen = \"127.0.0.1:1\"\nbogus_key = 1\n", "bogus_key"),
        ("listen = \"not an address\"\n", "listen address"),
        ("[[upstream]]\nname = \"docker.io\"\nurl = \"::nope\"\n", "url"),
        ("[[upstream]]\nname = \"docker.io\"\nurl = \"https://r\"\nca_file = \"/nonexistent/ca.pem\"\n", "ca_file"),
    ];
    for (config, want) in cases {
        let out = serve_with(config);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(want), "{config:?}: {stderr}");
    }
    let out = serve_with("listen = \"127.0.0.1:1\"\n\nbogus_key = 1\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 3"));
    let out = Command::new(BIN).args(["serve", "--config", "/nonexistent/regcache.toml"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_password_in_the_upstream_url_is_refused_without_printing_it() {
    let config = "[[upstream]]\nname = \"docker.io\"\nurl = \"https://ci:hunter2pw@registry.example\"\n";
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(config.as_bytes()).unwrap();
    let data = tempfile::tempdir().unwrap();
    let runs = [
        Command::new(BIN).args(["serve", "--config"]).arg(f.path()).arg("--data-dir").arg(data.path()).output().unwrap(),
        Command::new(BIN).arg("check-config").arg(f.path()).output().unwrap(),
        Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--upstream", "https://ci:hunter2pw@registry.example"])
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap(),
    ];
    for out in runs {
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains("username") && stderr.contains("password_file"), "{stderr}");
        assert!(!stdout.contains("hunter2pw") && !stderr.contains("hunter2pw"), "{stdout}{stderr}");
    }
}

#[test]
fn serves_then_exits_0_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let data = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--upstream", "http://127.0.0.1:9"])
        .arg("--data-dir")
        .arg(data.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::Read;
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            break buf;
        }
        assert!(Instant::now() < deadline, "regcache did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    assert!(ready.contains("registry/2.0"));
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    assert!(log.contains("GET") && log.contains("/v2/") && log.contains("status=200"), "a request log line: {log}");
    assert!(data.path().join("index").exists());
}

#[test]
fn a_bucket_that_cannot_be_used_stops_the_start_before_the_data_directory_is_opened() {
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let secret = data.path().join("secret");
    std::fs::write(&secret, "sk\n").unwrap();
    let config = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n[storage]\nbackend = \"s3\"\nendpoint = \"http://{refused}\"\nbucket = \"fleet\"\n\
         path_style = true\naccess_key_id = \"ak\"\nsecret_access_key_file = {:?}\ntimeout = \"1s\"\n",
        data.path().join("node").display().to_string(),
        secret.display().to_string()
    );
    let out = serve_with(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("regcache: storage: ") && stderr.contains(&refused.to_string()), "{stderr}");
    assert!(!data.path().join("node").join("index").exists(), "the data directory was opened: {stderr}");
}
