use super::*;
use bytes::Bytes;

use crate::metrics::Metrics;
use crate::store::{BlobBackend, LocalBlobs, Records, StoredManifest, TagAnswer};

fn tree() -> (tempfile::TempDir, sled::Db, sled::Tree) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new().path(dir.path().join("index")).open().unwrap();
    let tree = db.open_tree("backlog").unwrap();
    (dir, db, tree)
}

fn blob(n: u8) -> Pending {
    Pending::Blob { digest: Digest::sha256_of(&[n]), size: u64::from(n) }
}

fn tag(t: &str) -> Pending {
    Pending::Tag { repo: UpstreamRepo::of("docker.io", "library/alpine"), tag: t.parse().unwrap(), kind: ManifestKind::Index }
}

/// Everything queued, oldest first.
fn all(b: &Backlog) -> Vec<Pending> {
    let (mut out, mut cursor) = (Vec::new(), None);
    while let Some((seq, p)) = b.next_after(cursor).unwrap() {
        out.push(p);
        cursor = Some(seq);
    }
    out
}

#[test]
fn entries_come_back_oldest_first_once_each_and_after_a_reopen() {
    let (_dir, _db, tree) = tree();
    let b = Backlog::open(Slot::new(tree.clone())).unwrap();
    let subject = Digest::sha256_of(b"subject");
    let referrers = Pending::Referrers { repo: UpstreamRepo::of("ghcr.io", "org/app"), subject };
    let manifest = Pending::Manifest { digest: Digest::sha256_of(b"manifest") };
    // More than 256 entries: the order is the sequence's, not the bytes' of a little-endian key.
    let many: Vec<Pending> = (0..=255).map(blob).chain([tag("3"), manifest.clone(), referrers.clone()]).collect();
    for p in &many {
        assert_eq!(b.push(p).unwrap(), Pushed::Queued);
    }
    assert_eq!(b.push(&tag("3")).unwrap(), Pushed::Already, "a tag republished waits once");
    assert_eq!(b.push(&Pending::Blob { digest: Digest::sha256_of(&[7]), size: 99 }).unwrap(), Pushed::Already, "a blob by its digest");
    assert_eq!(b.len(), many.len() as u64);
    assert_eq!(all(&b), many);

    // Reopened (a restart): the same entries in the same order, and new ones go behind them.
    let b = Backlog::open(Slot::new(tree.clone())).unwrap();
    assert_eq!(b.len(), many.len() as u64);
    assert_eq!(all(&b), many);
    let (seq, first) = b.next_after(None).unwrap().unwrap();
    b.remove(seq, &first).unwrap();
    b.remove(seq, &first).unwrap();
    assert_eq!(b.len(), many.len() as u64 - 1, "removed once");
    assert_eq!(b.push(&first).unwrap(), Pushed::Queued, "a removed entry may be queued again");
    let mut want = many[1..].to_vec();
    want.push(first);
    assert_eq!(all(&b), want, "behind everything queued before");
    assert_eq!(Backlog::open(Slot::new(tree)).unwrap().len(), many.len() as u64);
}

#[test]
fn a_full_backlog_drops_its_oldest_entry_for_a_new_one() {
    let (_dir, _db, tree) = tree();
    let b = Backlog::with_cap(Slot::new(tree.clone()), 3).unwrap();
    let gauge = Gauge::default();
    for n in 0..3 {
        assert_eq!(b.push(&blob(n)).unwrap(), Pushed::Queued);
        if n == 0 {
            b.count_in(gauge.clone());
        }
    }
    assert_eq!(b.push(&blob(3)).unwrap(), Pushed::DroppedOldest);
    assert_eq!(b.push(&blob(2)).unwrap(), Pushed::Already, "nothing dropped for what waits already");
    assert_eq!((b.len(), gauge.get()), (3, 3), "the gauge counts what waited before it was given, and follows");
    assert_eq!(all(&b), [blob(1), blob(2), blob(3)]);
    assert_eq!(b.push(&blob(0)).unwrap(), Pushed::DroppedOldest, "the dropped entry's identity went with it");
    assert_eq!(all(&b), [blob(2), blob(3), blob(0)]);
    assert_eq!(tree.scan_prefix([QUEUED]).count(), 3, "one identity per entry");
    let (seq, first) = b.next_after(None).unwrap().unwrap();
    b.remove(seq, &first).unwrap();
    b.remove(seq, &first).unwrap();
    assert_eq!(gauge.get(), 2, "removed once");
}

#[test]
fn entries_that_do_not_parse_are_dropped() {
    let (_dir, _db, tree) = tree();
    let b = Backlog::open(Slot::new(tree.clone())).unwrap();
    b.push(&blob(1)).unwrap();
    let bad: [&[u8]; 7] = [
        b"not json",
        br#"{"what":"blob","digest":"md5:00","size":1}"#,
        br#"{"what":"blob","digest":"sha256:00","size":-1}"#,
        br#"{"what":"manifest"}"#,
        br#"{"what":"tag","upstream":"docker.io","repo":"../etc","tag":"3","kind":"index"}"#,
        br#"{"what":"tag","upstream":"a/b","repo":"library/alpine","tag":"3","kind":"index"}"#,
        br#"{"what":"referrers","upstream":"docker.io","repo":"library/alpine","subject":"sha256:zz"}"#,
    ];
    for (n, value) in bad.iter().enumerate() {
        tree.insert(queue_key(100 + n as u64), *value).unwrap();
    }
    tree.insert(b"q-short", &b"{}"[..]).unwrap();
    // An identity left without its entry doesn't keep the thing out.
    tree.insert(blob(2).identity(), &5000u64.to_be_bytes()).unwrap();
    let b = Backlog::open(Slot::new(tree.clone())).unwrap();
    assert_eq!(b.len(), 1, "only the good entry counts");
    assert_eq!(tree.scan_prefix([QUEUE]).count(), 1, "the others are removed at open");
    assert_eq!(b.push(&blob(2)).unwrap(), Pushed::Queued);
    // One that turns up later is dropped when the drain reaches it.
    tree.insert(queue_key(150), &b"{\"what\":\"nothing\"}"[..]).unwrap();
    assert_eq!(all(&b), [blob(1), blob(2)]);
    assert_eq!(tree.scan_prefix([QUEUE]).count(), 2);
    let p = tag("v1.0");
    assert_eq!(Pending::parse(&p.record()).unwrap(), p);
}

/// A node's store on a bucket that is a second local directory.
fn node() -> (tempfile::TempDir, Arc<Store>, Arc<LocalBlobs>) {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("node")).unwrap();
    let bucket = Arc::new(LocalBlobs::at(&dir.path().join("bucket")).unwrap());
    let shared = Shared::new(bucket.clone(), store.index.shared_sizes(), store.index.backlog().clone(), Metrics::new().shared());
    store.shared = Some(Arc::new(shared));
    (dir, Arc::new(store), bucket)
}

/// Store `bytes` in the hot tier under `digest` (whatever their digest is), indexed.
async fn keep(store: &Store, digest: &Digest, bytes: &[u8]) {
    let mut w = store.blobs.begin(digest, Some(bytes.len() as u64)).await.unwrap();
    w.append(&[Bytes::copy_from_slice(bytes)]).await.unwrap();
    w.commit().await.unwrap();
    store.index.put_blob(digest, bytes.len() as u64).unwrap();
}

fn answer(digest: &Digest, checked_at: u64) -> TagAnswer {
    TagAnswer { digest: digest.clone(), checked_at, published_at: None }
}

#[tokio::test]
async fn a_drain_uploads_what_is_still_kept_and_drops_what_is_not() {
    let (_dir, store, bucket) = node();
    let backlog = store.index.backlog().clone();
    let kept = b"kept in the hot tier".to_vec();
    let kept_digest = Digest::sha256_of(&kept);
    keep(&store, &kept_digest, &kept).await;
    let evicted = Digest::sha256_of(b"evicted since");
    // The same size as the blob it claims to be, other bytes.
    let rotten = Digest::sha256_of(b"rotten on disk");
    keep(&store, &rotten, b"rotten on dusk").await;
    let manifest = Digest::sha256_of(b"a manifest");
    let m = StoredManifest { media_type: "application/vnd.oci.image.manifest.v1+json".into(), bytes: Bytes::from_static(b"{}") };
    store.index.put_manifest(&manifest, &m).unwrap();
    let repo = UpstreamRepo::of("docker.io", "library/alpine");
    let (older, newer): (Tag, Tag) = ("older".parse().unwrap(), "newer".parse().unwrap());
    for (tag, ours) in [(&older, 100), (&newer, 100)] {
        store.index.put_tag(&repo, tag, ManifestKind::Image, &answer(&manifest, ours)).unwrap();
    }
    // Another node wrote `newer` later than this one learnt it, and `older` before.
    let theirs = Digest::sha256_of(b"their manifest");
    for (tag, at) in [(&older, 50), (&newer, 200)] {
        let key = format!("tags/docker.io/library/alpine/{tag}/image");
        bucket.put(&key, serde_json::to_vec(&answer(&theirs, at)).unwrap().into()).await.unwrap();
    }
    store.index.put_referrers(&repo, &manifest, b"{\"manifests\":[]}").unwrap();
    let tag = |t: &Tag| Pending::Tag { repo: repo.clone(), tag: t.clone(), kind: ManifestKind::Image };
    for p in [
        Pending::Blob { digest: kept_digest.clone(), size: kept.len() as u64 },
        Pending::Blob { digest: evicted.clone(), size: 13 },
        Pending::Blob { digest: rotten.clone(), size: 14 },
        Pending::Manifest { digest: manifest.clone() },
        Pending::Manifest { digest: Digest::sha256_of(b"evicted manifest") },
        tag(&older),
        tag(&newer),
        tag(&"forgotten".parse().unwrap()),
        Pending::Referrers { repo: repo.clone(), subject: manifest.clone() },
    ] {
        assert_eq!(backlog.push(&p).unwrap(), Pushed::Queued);
    }

    assert!(matches!(drain(&Arc::downgrade(&store)).await, Drained::Idle));
    assert!(backlog.is_empty(), "{:?}", all(&backlog));
    assert_eq!(bucket.stat(&kept_digest).await.unwrap(), Some(kept.len() as u64));
    assert_eq!(store.index.shared_sizes().get(&kept_digest).unwrap(), Some(kept.len() as u64), "remembered");
    assert_eq!(bucket.stat(&evicted).await.unwrap(), None);
    assert_eq!(bucket.stat(&rotten).await.unwrap(), None, "a copy that is not the blob any more is not uploaded");
    let record = bucket.get(&format!("manifests/sha256/{}", manifest.hex()), 1 << 20).await.unwrap().unwrap();
    assert_eq!(&record[..], b"application/vnd.oci.image.manifest.v1+json\0{}");
    let tag_in_bucket = |t: &'static str| {
        let bucket = bucket.clone();
        async move {
            let r = bucket.get(&format!("tags/docker.io/library/alpine/{t}/image"), 4096).await.unwrap().unwrap();
            serde_json::from_slice::<TagAnswer>(&r).unwrap()
        }
    };
    assert_eq!(tag_in_bucket("older").await, answer(&manifest, 100), "ours is newer than the bucket's");
    assert_eq!(tag_in_bucket("newer").await, answer(&theirs, 200), "the bucket's is newer: kept");
    assert_eq!(bucket.list_records("tags/docker.io/library/alpine/forgotten").await.unwrap(), Vec::<String>::new());
    assert!(bucket.get(&format!("referrers/docker.io/library/alpine/sha256/{}", manifest.hex()), 4096).await.unwrap().is_some());
}

#[tokio::test]
async fn a_bucket_that_fails_keeps_the_backlog_and_is_left_alone_until_its_retry_time() {
    let (dir, store, bucket) = node();
    let backlog = store.index.backlog().clone();
    let bytes = b"waits for the bucket".to_vec();
    let digest = Digest::sha256_of(&bytes);
    keep(&store, &digest, &bytes).await;
    backlog.push(&Pending::Blob { digest: digest.clone(), size: bytes.len() as u64 }).unwrap();
    // The bucket can't begin a write: a file stands where its temporary directory should be.
    let tmp = dir.path().join("bucket/tmp");
    std::fs::remove_dir_all(&tmp).unwrap();
    std::fs::write(&tmp, b"in the way").unwrap();
    let before = std::time::Instant::now();
    match drain(&Arc::downgrade(&store)).await {
        Drained::DownUntil(at) => assert!(at >= before + crate::store::RETRY, "{at:?}"),
        other => panic!("the bucket failed: {other:?}"),
    }
    assert_eq!(all(&backlog), [Pending::Blob { digest: digest.clone(), size: bytes.len() as u64 }], "kept");
    assert_eq!(bucket.stat(&digest).await.unwrap(), None);
    // Marked down: another pass asks the bucket nothing and says when to come back.
    std::fs::remove_file(&tmp).unwrap();
    std::fs::create_dir(&tmp).unwrap();
    assert!(matches!(drain(&Arc::downgrade(&store)).await, Drained::DownUntil(_)));
    assert_eq!(bucket.stat(&digest).await.unwrap(), None, "not tried within the retry time");
    assert_eq!(backlog.len(), 1);
    // The store gone (the server stopped), the drain ends.
    let weak = Arc::downgrade(&store);
    drop(store);
    assert!(matches!(drain(&weak).await, Drained::Gone));
}
