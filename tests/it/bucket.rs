//! The bucket backend (`store::Bucket`) against a real S3 server, SeaweedFS: multipart and
//! single-PUT writes, ranged reads, listing, the start-up probe and the clean-up of uploads a
//! crash left behind; wrong credentials, a missing bucket and unreachable endpoints.

use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::PutPayload;
use regcache::oci::Digest;
use regcache::store::bucket::{Bucket, PART_SIZE};
use regcache::store::BlobBackend;

use crate::support::s3::SeaweedFs;

fn blob(len: usize, seed: u8) -> (Vec<u8>, Digest) {
    let bytes: Vec<u8> = (0..len).map(|i| ((i * 7 + seed as usize) % 253) as u8).collect();
    let digest = Digest::sha256_of(&bytes);
    (bytes, digest)
}

async fn store(bucket: &Bucket, bytes: &[u8], digest: &Digest) {
    let mut w = bucket.begin(digest, Some(bytes.len() as u64)).await.unwrap();
    for batch in bytes.chunks(300 << 10) {
        w.append(&[Bytes::copy_from_slice(batch)]).await.unwrap();
    }
    w.commit().await.unwrap();
}

async fn read(bucket: &Bucket, digest: &Digest, range: std::ops::Range<u64>) -> (u64, Vec<u8>, usize) {
    let mut opened = bucket.open(digest, range).await.unwrap().expect("stored");
    let (mut out, mut chunks) = (Vec::new(), 0);
    while let Some(chunk) = opened.reader.next_chunk().await {
        out.extend_from_slice(&chunk.unwrap());
        chunks += 1;
    }
    (opened.size, out, chunks)
}

fn uploads(data: &std::path::Path) -> usize {
    std::fs::read_dir(data.join("uploads")).map(|d| d.count()).unwrap_or(0)
}

#[tokio::test]
async fn bucket_backend_on_seaweedfs() {
    let weed = SeaweedFs::start().await;
    eprintln!("SeaweedFS answered S3 requests {:?} after it was started", weed.startup);
    weed.create_bucket("regcache").await;
    let data = tempfile::tempdir().unwrap();
    let bucket = Bucket::from_config(&weed.storage("regcache", "/nodes/a/"), data.path()).unwrap();
    bucket.probe().await.unwrap();

    // A blob of three parts, read back whole and in a range.
    let len = (20 << 20) + 123;
    let (big, big_digest) = blob(len, 1);
    let mut w = bucket.begin(&big_digest, Some(len as u64)).await.unwrap();
    w.append(&[Bytes::copy_from_slice(&big[..PART_SIZE + 1])]).await.unwrap();
    assert_eq!(uploads(data.path()), 1, "an upload is recorded as soon as its first part is sent");
    w.append(&[Bytes::copy_from_slice(&big[PART_SIZE + 1..])]).await.unwrap();
    assert_eq!(bucket.stat(&big_digest).await.unwrap(), None, "nothing under the key before the commit");
    w.commit().await.unwrap();
    assert_eq!(uploads(data.path()), 0);
    assert_eq!(bucket.stat(&big_digest).await.unwrap(), Some(len as u64));
    let (size, whole, chunks) = read(&bucket, &big_digest, 0..len as u64).await;
    assert_eq!(size, len as u64);
    assert!(big_digest.matches(&whole), "the bytes read back are the blob");
    assert!(chunks > 1, "streamed as it arrives, not collected: {chunks} chunk(s)");
    let (size, part, _) = read(&bucket, &big_digest, (5 << 20) + 3..(13 << 20) + 7).await;
    assert_eq!(size, len as u64, "a ranged read knows the whole size");
    assert!(part == big[(5 << 20) + 3..(13 << 20) + 7], "the range's bytes");

    // A small blob: one PUT; stored twice, still one object.
    let (small, small_digest) = blob(1000, 2);
    store(&bucket, &small, &small_digest).await;
    store(&bucket, &small, &small_digest).await;
    assert_eq!(read(&bucket, &small_digest, 10..20).await.1, small[10..20]);
    let (_, missing) = blob(5, 3);
    assert!(bucket.open(&missing, 0..5).await.unwrap().is_none());
    assert_eq!(bucket.stat(&missing).await.unwrap(), None);

    let mut listed = bucket.list().await.unwrap();
    listed.sort_by_key(|l| l.size);
    let got: Vec<(Option<Digest>, u64)> = listed.iter().map(|l| (l.digest.clone(), l.size)).collect();
    assert_eq!(got, [(Some(small_digest.clone()), 1000), (Some(big_digest.clone()), len as u64)]);
    assert!(listed[0].name.starts_with("nodes/a/blobs/sha256/"), "{listed:?}");

    // A crash mid-upload: the next start aborts it.
    let (third, third_digest) = blob(PART_SIZE + 10, 4);
    let mut w = bucket.begin(&third_digest, None).await.unwrap();
    w.append(&[Bytes::copy_from_slice(&third)]).await.unwrap();
    let record = std::fs::read_dir(data.path().join("uploads")).unwrap().next().unwrap().unwrap().path();
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
    let (key, id) = (record["key"].as_str().unwrap().to_owned(), record["id"].as_str().unwrap().to_owned());
    std::mem::forget(w);
    let restarted = Bucket::from_config(&weed.storage("regcache", "nodes/a"), data.path()).unwrap();
    assert_eq!(restarted.cleanup_uploads().await.unwrap(), 1);
    assert_eq!(uploads(data.path()), 0);
    let late_part = restarted.store().put_part(&Path::parse(&key).unwrap(), &id, 1, PutPayload::from_static(b"x")).await;
    assert!(late_part.is_err(), "the upload is gone");
    assert_eq!(restarted.stat(&third_digest).await.unwrap(), None);

    // An aborted write leaves nothing either.
    let mut w = bucket.begin(&third_digest, None).await.unwrap();
    w.append(&[Bytes::copy_from_slice(&third)]).await.unwrap();
    w.abort().await;
    assert_eq!(uploads(data.path()), 0);
    assert_eq!(bucket.list().await.unwrap().len(), 2);

    bucket.remove(&small_digest).await.unwrap();
    bucket.remove(&small_digest).await.unwrap();
    assert_eq!(bucket.stat(&small_digest).await.unwrap(), None);

    // Wrong credentials and a missing bucket fail the probe with one line naming them.
    let mut wrong = weed.storage("regcache", "");
    wrong.credentials.as_mut().unwrap().secret_access_key = "not-the-secret-42".into();
    let err = Bucket::from_config(&wrong, data.path()).unwrap().probe().await.unwrap_err().to_string();
    assert!(err.contains("\"regcache\"") && err.contains(&weed.endpoint) && err.contains("list"), "{err}");
    assert!(err.contains("403") || err.contains("SignatureDoesNotMatch") || err.contains("AccessDenied"), "{err}");
    assert!(!err.contains("not-the-secret-42") && !err.contains('\n'), "{err}");
    eprintln!("wrong secret: {err}");
    let err = Bucket::from_config(&weed.storage("no-such-bucket", ""), data.path()).unwrap().probe().await.unwrap_err();
    let err = err.to_string();
    assert!(err.contains("no-such-bucket") && err.contains("does not exist") && !err.contains('\n'), "{err}");
    eprintln!("missing bucket: {err}");
}

#[tokio::test]
async fn unreachable_and_silent_endpoints_fail_within_the_timeout() {
    let data = tempfile::tempdir().unwrap();
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            held.push(conn);
        }
    });
    for addr in [refused, silent_addr] {
        let storage = regcache::config::S3Storage {
            endpoint: Some(format!("http://{addr}").parse().unwrap()),
            region: "us-east-1".into(),
            bucket: "regcache".into(),
            prefix: String::new(),
            path_style: true,
            credentials: Some(regcache::config::S3Credentials {
                access_key_id: "ak".into(),
                secret_access_key: "sk".into(),
            }),
            ca_pem: None,
            timeout: Duration::from_secs(1),
        };
        let started = Instant::now();
        let err = Bucket::from_config(&storage, data.path()).unwrap().probe().await.unwrap_err().to_string();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{addr}: took {took:?}");
        assert!(err.contains(&addr.to_string()) && err.contains("list") && !err.contains('\n'), "{err}");
        eprintln!("{addr} failed after {took:?}: {err}");
    }
}
