//! `regcache ls`, `gc` and `verify` on the shared bucket (`[storage] backend = "s3"`), as the real
//! binary against SeaweedFS, after an in-process mirror filled the bucket.

use std::sync::Arc;

use object_store::path::Path as Key;
use object_store::{ObjectStoreExt, PutPayload};
use regcache::store::{BlobBackend, Bucket, SharedBackend};

use crate::it::commands::{regcache, text};
use crate::it::mirror::{Mirror, Options};
use crate::support::fake_registry::FakeRegistry;
use crate::support::images;
use crate::support::s3::{SeaweedFs, ACCESS_KEY, SECRET_KEY};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ls_verify_and_gc_work_on_the_bucket() {
    let weed = SeaweedFs::start().await;
    weed.create_bucket("fleet").await;
    let reg = FakeRegistry::start().await;
    let image = images::schema2_image(&reg, "library/alpine", "3", 2, 50_000);

    // A node pulls the image by tag: its blobs, manifest and tag go to the bucket.
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node");
    std::fs::create_dir_all(&node_dir).unwrap();
    let storage = weed.storage("fleet", "mirror");
    let bucket = Bucket::from_config(&storage, &node_dir).unwrap();
    let shared: Arc<dyn SharedBackend> = Arc::new(bucket.clone());
    let extra = "tag_ttl = \"1m\"\n".to_owned();
    let node = Mirror::start_with(&reg, Options { credentials: true, bucket: Some(shared), extra, data_dir: Some(node_dir), ..Default::default() }).await;
    assert_eq!(node.get_manifest("alpine", "3").await.status(), 200);
    for blob in image.blobs() {
        assert!(node.blob("alpine", &blob.digest).await.expect("blob").1 == blob.bytes);
    }
    // And lists its tags: the list goes to the bucket too, a record of another kind for the commands.
    assert_eq!(node.get("/v2/alpine/tags/list").await.status(), 200);
    let n = image.blobs().len();
    node.metrics_with(&format!("regcache_bucket_operations_total{{op=\"upload\",result=\"ok\"}} {n}\n")).await;
    node.metrics_with("regcache_bucket_operations_total{op=\"put_record\",result=\"ok\"} 3\n").await;
    let tag_list = Key::parse("mirror/taglists/docker.io/library/alpine/_list").unwrap();
    assert!(bucket.store().head(&tag_list).await.is_ok(), "the tag list record");

    // The commands run elsewhere: their own data directory, the same bucket.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET_KEY).unwrap();
    let config = dir.path().join("regcache.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[storage]\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"fleet\"\nprefix = \"mirror\"\npath_style = true\n\
             access_key_id = \"{ACCESS_KEY}\"\nsecret_access_key_file = {:?}\nbucket_max_size = \"10KiB\"\n",
            dir.path().join("admin").display().to_string(),
            weed.endpoint,
            secret.display().to_string()
        ),
    )
    .unwrap();

    let o = regcache(&config, &["ls"]).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("in the bucket:\ndocker.io/library/alpine\n  3 "), "{out}");
    assert!(!out.contains("_list") && !out.contains("unreadable"), "tag lists are not tags: {out}");
    assert!(out.contains(&format!("{}…", &image.manifest.digest[..19])), "{out}");
    assert!(out.contains(&format!("the bucket holds {n} blobs, ")), "{out}");
    let o = regcache(&config, &["ls", "ghcr.io/other/app"]).await;
    assert!(text(&o).contains("no tags in the bucket for ghcr.io/other/app"), "{}", text(&o));

    let o = regcache(&config, &["verify"]).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(&format!("bucket: verified {n} blobs")) && out.contains("and 1 manifests: 0 corrupt"), "{out}");

    // Same length, other bytes, under a blob's key; and a manifest record that isn't its manifest.
    let victim = &image.layers[1];
    let digest: regcache::oci::Digest = victim.digest.parse().unwrap();
    let mut tampered = victim.bytes.clone();
    tampered[7] ^= 0x55;
    bucket.store().put(&Key::parse(bucket.blob_key(&digest)).unwrap(), PutPayload::from(tampered)).await.unwrap();
    let hex = image.manifest.digest.trim_start_matches("sha256:");
    let manifest_key = Key::parse(format!("mirror/manifests/sha256/{hex}")).unwrap();
    bucket.store().put(&manifest_key, PutPayload::from_static(b"application/vnd.oci.image.manifest.v1+json\0{}")).await.unwrap();
    let o = regcache(&config, &["verify"]).await;
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("corrupt in the bucket: blob {}, removed", victim.digest)), "{out}");
    assert!(out.contains(&format!("corrupt in the bucket: manifest {}, removed", image.manifest.digest)), "{out}");
    assert!(out.contains("2 corrupt"), "{out}");
    assert_eq!(bucket.stat(&digest).await.unwrap(), None, "the corrupt blob is deleted");
    assert!(bucket.store().head(&manifest_key).await.is_err(), "the corrupt record is deleted");
    for blob in image.blobs().iter().filter(|b| b.digest != victim.digest) {
        assert_eq!(bucket.stat(&blob.digest.parse().unwrap()).await.unwrap(), Some(blob.bytes.len() as u64), "good blobs stay");
    }
    let o = regcache(&config, &["verify"]).await;
    assert!(o.status.success() && text(&o).contains("0 corrupt"), "{}", text(&o));

    // Over bucket_max_size, but everything was just written: nothing is evicted.
    let o = regcache(&config, &["gc", "--dry-run"]).await;
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("no max_size: the data directory is left as it is"), "{out}");
    assert!(out.contains("bucket: would evict 0 blobs") && out.contains("used within the last 10m"), "{out}");
    let o = regcache(&config, &["gc", "--bucket-max-size", "1B"]).await;
    let out = text(&o);
    assert!(o.status.success() && out.contains("bucket: evicted 0 blobs"), "{out}");
    assert_eq!(bucket.list().await.unwrap().len(), n - 1, "nothing was evicted");
    // Without the protection, by age alone: everything goes (down to 1 byte).
    let o = regcache(&config, &["gc", "--bucket-max-size", "1B", "--protect-recent", "0s"]).await;
    let out = text(&o);
    assert!(o.status.success() && out.contains(&format!("bucket: evicted {} blobs", n - 1)), "{out}");
    assert!(bucket.list().await.unwrap().is_empty(), "{out}");
    assert!(bucket.store().head(&tag_list).await.is_ok(), "verify and gc leave the tag list record alone");
    let o = regcache(&config, &["gc", "--protect-recent", "soon"]).await;
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}
