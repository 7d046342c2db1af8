//! `regcache healthcheck` as the real binary: healthy servers (plain, admin_listen, TLS with a
//! self-signed certificate) exit 0; nothing listening, a 500 and a server that never answers exit 1
//! with one line saying which.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::it::commands::{text, tls};

const BIN: &str = env!("CARGO_BIN_EXE_regcache");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn healthcheck(args: &[&str]) -> (Output, Duration) {
    let start = Instant::now();
    let out = Command::new(BIN).arg("healthcheck").args(args).env_remove("REGCACHE_CONFIG").stdin(Stdio::null()).output().unwrap();
    (out, start.elapsed())
}

/// A failed check: exit 1 and one line on stderr containing `want`.
fn assert_unhealthy(out: &Output, want: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", text(out));
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(want), "{want:?} in {stderr}");
}

/// A server killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `regcache serve` with `listen` on a free port and more configuration from `tail`; returns once
/// `wait_port` accepts connections.
fn serve(dir: &Path, tail: &str, wait_port: u16) -> (Server, std::path::PathBuf) {
    let config = dir.join("regcache.toml");
    let text = format!(
        "data_dir = {:?}\n{tail}\n[[upstream]]\nname = \"docker.io\"\nurl = \"http://127.0.0.1:9\"\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&config, text).unwrap();
    let server = Server(Command::new(BIN).arg("serve").arg("--config").arg(&config).stderr(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", wait_port)).is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (server, config)
}

#[test]
fn a_healthy_server_exits_0_on_the_address_its_configuration_gives() {
    type Tail = fn(&Path, u16, u16) -> String;
    let cases: [(&str, Tail); 3] = [
        ("listen", |_, port, _| format!("listen = \"0.0.0.0:{port}\"\n")),
        ("admin_listen", |_, port, admin| format!("listen = \"127.0.0.1:{port}\"\nadmin_listen = \"0.0.0.0:{admin}\"\n")),
        ("tls, self-signed", |dir, port, _| format!("listen = \"127.0.0.1:{port}\"\n{}", tls(dir))),
    ];
    for (what, tail) in cases {
        let dir = tempfile::tempdir().unwrap();
        let (port, admin) = (free_port(), free_port());
        let tail = tail(dir.path(), port, admin);
        let wait = if what == "admin_listen" { admin } else { port };
        let (_server, config) = serve(dir.path(), &tail, wait);
        let (out, _) = healthcheck(&["--config", config.to_str().unwrap()]);
        assert!(out.status.success(), "{what}: {}", text(&out));
        assert!(out.stderr.is_empty() && out.stdout.is_empty(), "{what}: silent when healthy: {}", text(&out));
        // With TLS, plain HTTP to the same port is not an answer.
        if what.starts_with("tls") {
            let (out, _) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")]);
            assert_unhealthy(&out, "no HTTP answer");
        }
    }
}

#[test]
fn nothing_listening_is_connection_refused() {
    let port = free_port();
    let (out, _) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")]);
    assert_unhealthy(&out, &format!("http://127.0.0.1:{port}/healthz: connection refused"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("regcache.toml");
    std::fs::write(&config, format!("listen = \"0.0.0.0:{port}\"\n")).unwrap();
    let (out, _) = healthcheck(&["--config", config.to_str().unwrap()]);
    assert_unhealthy(&out, "connection refused");
    let (out, _) = healthcheck(&["--config", "/nonexistent/regcache.toml"]);
    assert_unhealthy(&out, "/nonexistent/regcache.toml");
}

#[test]
fn an_answer_other_than_200_is_unhealthy() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut reader = BufReader::new(stream);
        let mut request_line = String::new();
        reader.read_line(&mut request_line).unwrap();
        let mut line = String::new();
        while reader.read_line(&mut line).unwrap() > 2 {
            line.clear();
        }
        let body = "down\n";
        let resp = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        reader.get_mut().write_all(resp.as_bytes()).unwrap();
        request_line
    });
    let (out, elapsed) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}/")]);
    assert_unhealthy(&out, "answered 500");
    assert!(elapsed < Duration::from_secs(3), "a 500 is reported at once: {elapsed:?}");
    assert!(served.join().unwrap().starts_with("GET /healthz HTTP/1.1"));
}

#[test]
fn a_server_that_never_answers_is_given_up_after_3_s() {
    // Connections complete in the kernel's backlog; nobody reads the request.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (out, elapsed) = healthcheck(&["--url", &format!("http://127.0.0.1:{port}")]);
    assert_unhealthy(&out, "no answer within 3 s");
    assert!(elapsed >= Duration::from_secs(3), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "given up after about 3 s: {elapsed:?}");
    drop(listener);
}
