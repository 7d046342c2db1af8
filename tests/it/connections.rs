//! Client connections can't hold the server: connections that send nothing, half a request, or sit
//! idle are closed after their timeout; a response the client stops reading is dropped; over
//! `max_connections`, new connections wait while existing ones keep working.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::it::mirror::Mirror;
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;

/// Far longer than any timeout configured here: reaching it means the server never closed.
const NEVER: Duration = Duration::from_secs(20);

fn addr(m: &Mirror) -> &str {
    m.url.trim_start_matches("http://")
}

/// Read until the server closes the connection; everything it sent.
async fn until_closed(conn: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(NEVER, conn.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the server never closed the connection (got {} bytes)", got.len());
    got
}

/// One `GET` on a kept-alive connection; the status line and the body.
async fn get(conn: &mut BufReader<TcpStream>, path: &str) -> (String, Vec<u8>) {
    send(conn, path).await;
    receive(conn).await
}

async fn send(conn: &mut BufReader<TcpStream>, path: &str) {
    conn.get_mut().write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
}

/// The status line and body of the next response.
async fn receive(conn: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut status = String::new();
    conn.read_line(&mut status).await.unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await.unwrap();
    (status.trim().to_owned(), body)
}

#[tokio::test]
async fn a_client_that_sends_nothing_or_half_a_request_is_disconnected() {
    let reg = FakeRegistry::start().await;
    let m = Mirror::start_with_top(&reg, "header_timeout = \"200ms\"").await;
    let mut silent = TcpStream::connect(addr(&m)).await.unwrap();
    assert!(until_closed(&mut silent).await.is_empty());
    let mut half = TcpStream::connect(addr(&m)).await.unwrap();
    half.write_all(b"GET /v2/ HTTP/1.1\r\nhost: x\r\nuser-agent: sl").await.unwrap();
    let got = until_closed(&mut half).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{}", String::from_utf8_lossy(&got));
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let reg = FakeRegistry::start().await;
    let m = Mirror::start_with_top(&reg, "header_timeout = \"30s\"\nkeepalive_timeout = \"200ms\"").await;
    let mut conn = BufReader::new(TcpStream::connect(addr(&m)).await.unwrap());
    let (status, body) = get(&mut conn, "/v2/").await;
    assert_eq!((status.as_str(), body.as_slice()), ("HTTP/1.1 200 OK", b"{}".as_slice()));
    assert!(until_closed(&mut conn).await.is_empty(), "closed without another answer");
}

#[tokio::test]
async fn a_client_that_stops_reading_a_cached_blob_is_dropped() {
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/big", "1", 1, 16 << 20);
    let m = Mirror::start_with_top(&reg, "client_idle_timeout = \"300ms\"").await;
    let layer = &image.layers[0].digest;
    let path = format!("/v2/big/blobs/{layer}");
    assert_eq!(m.blob("big", layer).await.unwrap().1.len(), 16 << 20, "cached");
    m.wait_stored(layer).await;

    // A small receive buffer, so the blob can't disappear into the kernel's buffers.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket.connect(addr(&m).parse().unwrap()).await.unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
    // The server counts a request once its body is done or dropped: here, dropped.
    m.metrics_with("regcache_http_requests_total{route=\"blob\",status=\"200\"} 2\n").await;
    let got = until_closed(&mut conn).await;
    assert!(got.starts_with(b"HTTP/1.1 200 OK"));
    assert!(got.len() < 16 << 20, "the response was cut, not completed");
}

#[tokio::test]
async fn over_max_connections_new_ones_wait_and_existing_ones_keep_working() {
    let reg = FakeRegistry::start().await;
    let m = Mirror::start_with_top(&reg, "max_connections = 1").await;
    let mut first = BufReader::new(TcpStream::connect(addr(&m)).await.unwrap());
    assert_eq!(get(&mut first, "/v2/").await.0, "HTTP/1.1 200 OK");
    // The kernel completes the second connection's handshake and takes its request, but regcache
    // doesn't accept it yet.
    let mut waiting = BufReader::new(TcpStream::connect(addr(&m)).await.unwrap());
    send(&mut waiting, "/v2/").await;
    let second = tokio::spawn(async move { receive(&mut waiting).await.0 });
    for _ in 0..3 {
        assert_eq!(get(&mut first, "/healthz").await, ("HTTP/1.1 200 OK".to_owned(), b"ok\n".to_vec()));
    }
    assert!(!second.is_finished(), "the second connection waits while the first is open");
    drop(first);
    assert_eq!(tokio::time::timeout(NEVER, second).await.expect("served once the first closed").unwrap(), "HTTP/1.1 200 OK");
}
