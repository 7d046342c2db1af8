//! Access control for the mirror itself: htpasswd Basic credentials and an address allow list.

use base64::Engine as _;

use crate::it::mirror::{error_code, htpasswd_access, Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

fn basic(user: &str, pass: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}")))
}

#[tokio::test]
async fn clients_need_htpasswd_credentials() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let dir = tempfile::tempdir().unwrap();
    let tail = htpasswd_access(dir.path());
    let m = Mirror::start_with(&reg, Options { credentials: true, tail, ..Default::default() }).await;

    let resp = m.get("/v2/").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Basic realm=\"regcache\"");
    let (status, code) = error_code(m.get_manifest("alpine", "3").await).await;
    assert_eq!((status.as_u16(), code.as_str()), (401, "UNAUTHORIZED"));
    let wrong = Mirror::client().get(format!("{}/v2/", m.url)).header("authorization", basic("dev", "nope")).send().await.unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(reg.requests().is_empty(), "nothing reaches upstream without credentials");

    let ok = Mirror::client().get(format!("{}/v2/", m.url)).header("authorization", basic("dev", "letmein")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let resp = m
        .manifest_request(reqwest::Method::GET, "alpine", "3")
        .header("authorization", basic("dev", "letmein"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], image.manifest.digest.as_str());
    assert!(reg.requests().iter().all(|r| r.authorization.as_deref() != Some(basic("dev", "letmein").as_str())), "the client's credentials never go upstream");
    assert_eq!(m.get("/healthz").await.status(), 200, "liveness needs no credentials");
}

#[tokio::test]
async fn addresses_outside_the_allow_list_are_closed_before_a_byte_is_read() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let denied = Mirror::start_with(&reg, Options { credentials: true, tail: "[access]\nallow = [\"10.0.0.0/8\"]\n".into(), ..Default::default() }).await;
    let mut conn = tokio::net::TcpStream::connect(denied.url.trim_start_matches("http://")).await.unwrap();
    // The request may or may not be written before the close arrives; either way no answer comes.
    let _ = conn.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got).await;
    assert!(got.is_empty(), "no HTTP answer to a refused address: {:?}", String::from_utf8_lossy(&got));
    assert!(reg.requests().is_empty());
    let allowed = Mirror::start_with(&reg, Options { credentials: true, tail: "[access]\nallow = [\"127.0.0.0/8\"]\n".into(), ..Default::default() }).await;
    assert_eq!(allowed.get_manifest("alpine", "3").await.status(), 200);
}

#[tokio::test]
async fn an_address_sending_wrong_passwords_gets_429_and_a_known_client_goes_on() {
    let reg = FakeRegistry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let tail = htpasswd_access(dir.path()) + "max_failures = 3\n";
    let m = Mirror::start_with(&reg, Options { credentials: true, tail, ..Default::default() }).await;
    let get = |auth: String| Mirror::client().get(format!("{}/v2/", m.url)).header("authorization", auth).send();

    assert_eq!(get(basic("dev", "letmein")).await.unwrap().status(), 200, "remembered from now on");
    for _ in 0..3 {
        assert_eq!(get(basic("dev", "nope")).await.unwrap().status(), 401);
    }
    let resp = get(basic("mallory", "guess")).await.unwrap();
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    let (status, code) = error_code(resp).await;
    assert_eq!((status.as_u16(), code.as_str()), (429, "TOOMANYREQUESTS"));
    assert_eq!(get(basic("dev", "letmein")).await.unwrap().status(), 200, "a client that already proved itself goes on");
}
