//! Redirects (and token realms) of a public upstream don't lead into the operator's network: a
//! redirect to loopback, link-local or private addresses is refused before anything is fetched,
//! with an error that names no address; `redirect_hosts` and private registries are let through,
//! except that not even a private registry's redirects reach unspecified or link-local addresses.

use crate::it::mirror::{Mirror, Options};
use crate::support::fake_registry::{FakeRegistry, Fault};
use crate::support::images;

/// The status and OCI error message of a blob request that must fail.
async fn refused_blob(m: &Mirror, digest: &str) -> (u16, String, String) {
    let resp = m.get(&format!("/v2/alpine/blobs/{digest}")).await;
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("an OCI error body");
    let code = body["errors"][0]["code"].as_str().unwrap_or_default().to_owned();
    let message = body["errors"][0]["message"].as_str().unwrap_or_default().to_owned();
    (status, code, message)
}

/// A message fit for clients: in words, no address, port or OS error text.
fn assert_says_nothing_internal(message: &str, ports: &[u16]) {
    assert!(message.contains("private network"), "says what failed: {message}");
    for needle in ["127.0.0.1", "169.254", "localhost", "::1", "os error", "Connection"] {
        assert!(!message.contains(needle), "{needle:?} in {message:?}");
    }
    for port in ports {
        assert!(!message.contains(&port.to_string()), "port {port} in {message:?}");
    }
}

fn port(url: &str) -> u16 {
    url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("a port")
}

fn public(url: Option<String>, extra: &str) -> Options {
    Options { credentials: true, url, private_network: Some(false), extra: extra.into(), ..Default::default() }
}

#[tokio::test]
async fn a_redirect_to_a_loopback_address_is_refused_before_anything_is_fetched() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let digest = &image.layers[0].digest;
    // The upstream is `localhost`, its realm too; its blobs redirect to the CDN at 127.0.0.1.
    reg.set_fault(Fault::RealmFromHost);
    let by_name = format!("http://localhost:{}", port(&reg.url()));
    let m = Mirror::start_with(&reg, public(Some(by_name), "")).await;

    let (status, code, message) = refused_blob(&m, digest).await;
    assert_eq!((status, code.as_str()), (502, "UNAVAILABLE"), "{message}");
    assert_says_nothing_internal(&message, &[port(&reg.url()), port(&reg.cdn_url())]);
    assert_eq!(reg.cdn_requests(), [], "nothing was fetched from the redirect target");
    assert_eq!(reg.count("GET", "/blobs/"), 2, "the upstream itself was asked (401, then with a token)");
    assert!(!m.has_blob(digest));
}

#[tokio::test]
async fn a_redirect_to_a_name_that_resolves_to_loopback_is_refused() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    reg.set_fault(Fault::RedirectToOtherHost); // the CDN as localhost:PORT
    let m = Mirror::start_with(&reg, public(None, "")).await;

    let (status, code, message) = refused_blob(&m, &image.layers[0].digest).await;
    assert_eq!((status, code.as_str()), (502, "UNAVAILABLE"), "{message}");
    assert_says_nothing_internal(&message, &[port(&reg.cdn_url())]);
    assert_eq!(reg.cdn_requests(), []);
}

#[tokio::test]
async fn redirects_to_metadata_unspecified_and_mapped_addresses_are_refused() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let cdn = port(&reg.cdn_url());
    // A refusal is immediate; an attempt at 169.254.169.254 would hit the connect timeout.
    let m = Mirror::start_with(&reg, public(None, "connect_timeout = 30\nresponse_timeout = 30\n")).await;
    for target in ["http://169.254.169.254".to_owned(), format!("http://0.0.0.0:{cdn}"), format!("http://[::ffff:127.0.0.1]:{cdn}")] {
        reg.clear_faults();
        reg.set_fault(Fault::RedirectBlobsTo(target.clone()));
        let (status, code, message) = refused_blob(&m, &image.layers[0].digest).await;
        assert_eq!((status, code.as_str()), (502, "UNAVAILABLE"), "{target}: {message}");
        assert_says_nothing_internal(&message, &[cdn]);
        assert!(!message.contains("0.0.0.0") && !message.contains("ffff"), "{message}");
    }
    assert_eq!(reg.cdn_requests(), []);
}

#[tokio::test]
async fn redirect_hosts_let_listed_hosts_through() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let layer = &image.layers[0];

    reg.set_fault(Fault::RedirectToOtherHost);
    let m = Mirror::start_with(&reg, public(None, "redirect_hosts = [\"LocalHost\"]\n")).await;
    let (status, bytes) = m.blob("alpine", &layer.digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 1);
    m.wait_stored(&layer.digest).await;

    reg.clear_faults();
    reg.set_fault(Fault::RealmFromHost);
    let by_name = format!("http://localhost:{}", port(&reg.url()));
    let m = Mirror::start_with(&reg, public(Some(by_name), "redirect_hosts = [\"127.0.0.1\"]\n")).await;
    let (status, bytes) = m.blob("alpine", &layer.digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 2);
}

#[tokio::test]
async fn a_registry_on_a_private_network_may_redirect_within_it() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let layer = &image.layers[0];
    // Not decided by the test: `localhost` resolves to loopback only, so it is a private registry,
    // and its redirect to 127.0.0.1 (another host) is followed.
    reg.set_fault(Fault::RealmFromHost);
    let by_name = format!("http://localhost:{}", port(&reg.url()));
    let m = Mirror::start_with(&reg, Options { credentials: true, url: Some(by_name), ..Default::default() }).await;
    let (status, bytes) = m.blob("alpine", &layer.digest).await.unwrap();
    assert_eq!(status, 200);
    assert!(bytes == layer.bytes);
    assert_eq!(reg.cdn_count(&layer.digest), 1);
}

#[tokio::test]
async fn an_unusable_token_realm_is_told_in_words() {
    let reg = FakeRegistry::start().await;
    images::schema2_image(&reg, "library/alpine", "3", 1, 100);
    let m = Mirror::start(&reg).await;
    for realm in ["ftp://10.1.2.3:2121/token", "http://[10.1.2.3:99/token"] {
        reg.set_fault(Fault::Realm(realm.into()));
        let resp = m.get_manifest("alpine", "3").await;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap();
        assert_eq!(status, 502, "{realm}: {body}");
        assert!(body.contains("token realm"), "{realm}: {body}");
        assert!(!body.contains("10.1.2.3"), "{realm}: the upstream's realm is not repeated: {body}");
        reg.clear_faults();
    }
}

/// A dual-stack listener on every local address that counts the connections it is offered: what
/// `0.0.0.0:PORT` and `[::]:PORT` reach on Linux.
struct Tripwire {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Tripwire {
    async fn start() -> Tripwire {
        let listener = tokio::net::TcpListener::bind("[::]:0").await.expect("bind [::]:0");
        let port = listener.local_addr().expect("local addr").port();
        let connections = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = connections.clone();
        let task = tokio::spawn(async move {
            let mut held = Vec::new(); // kept open: a request sent here would wait for its timeout
            while let Ok((conn, _)) = listener.accept().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                held.push(conn);
            }
        });
        Tripwire { port, connections, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Tripwire {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Short timeouts, so that a connection regcache should not have made shows as a timeout (or as a
/// tripwire's connection) instead of a hung test.
const SHORT_TIMEOUTS: &str = "connect_timeout = 2\nresponse_timeout = 2\n";

#[tokio::test]
async fn a_private_registry_never_redirects_to_unspecified_or_link_local_addresses() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 1, 1000);
    let tripwire = Tripwire::start().await;
    let p = tripwire.port;
    // The upstream is on loopback: a private registry, whose redirects within its network are followed.
    let m = Mirror::start_with(&reg, Options { credentials: true, extra: SHORT_TIMEOUTS.into(), ..Default::default() }).await;
    let targets = [
        format!("http://0.0.0.0:{p}"),
        format!("http://0.0.0.1:{p}"),
        format!("http://[::]:{p}"),
        format!("http://[::ffff:0.0.0.0]:{p}"),
        format!("http://[::0.0.0.2]:{p}"),
        "http://169.254.169.254".to_owned(),
        format!("http://169.254.1.1:{p}"),
        format!("http://[fe80::1]:{p}"),
        "http://[::ffff:169.254.169.254]".to_owned(),
        "http://[::169.254.169.254]".to_owned(),
    ];
    for target in targets {
        reg.clear_faults();
        reg.set_fault(Fault::RedirectBlobsTo(target.clone()));
        let (status, code, message) = refused_blob(&m, &image.layers[0].digest).await;
        assert_eq!((status, code.as_str()), (502, "UNAVAILABLE"), "{target}: {message}");
        assert_says_nothing_internal(&message, &[p]);
        assert_eq!(tripwire.connections(), 0, "{target}: a connection was made");
    }
    assert!(!m.has_blob(&image.layers[0].digest));

    // The same for a token realm (a new mirror: the first one holds a token).
    reg.clear_faults();
    reg.set_fault(Fault::Realm(format!("http://0.0.0.0:{p}/token")));
    let m = Mirror::start_with(&reg, Options { credentials: true, extra: SHORT_TIMEOUTS.into(), ..Default::default() }).await;
    let resp = m.get_manifest("alpine", "3").await;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("private network"), "{body}");
    assert_eq!(tripwire.connections(), 0, "the realm was connected to");

    // Named in redirect_hosts, such a host is reached.
    reg.clear_faults();
    reg.set_fault(Fault::RedirectBlobsTo(format!("http://0.0.0.0:{p}")));
    let listed = format!("{SHORT_TIMEOUTS}redirect_hosts = [\"0.0.0.0\"]\n");
    let m = Mirror::start_with(&reg, Options { credentials: true, extra: listed, ..Default::default() }).await;
    let (status, _, message) = refused_blob(&m, &image.layers[0].digest).await;
    assert_eq!(status, 504, "the tripwire never answers: {message}");
    assert_eq!(tripwire.connections(), 1, "listed: connected to");
}
