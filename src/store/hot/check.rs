//! Keeping the store honest: the start-up repair after a crash, and `verify`, which re-hashes
//! everything stored.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;

use crate::store::Store;
use crate::oci::{Digest, Hasher};

/// What the start-up repair did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Index entries whose file was missing or the wrong size.
    pub dropped: usize,
    /// Files without an index entry whose hash checked out.
    pub reindexed: usize,
    /// Files that were not valid blobs.
    pub removed: usize,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    /// Blobs and manifests checked.
    pub checked: usize,
    /// Bytes hashed.
    pub bytes: u64,
    /// Corrupt content: what it was and where it went.
    pub corrupt: Vec<(String, Option<PathBuf>)>,
}

/// The digest of a file's content.
pub fn hash_file(path: &std::path::Path, algorithm: crate::oci::Algorithm) -> io::Result<(Digest, u64)> {
    let mut f = File::open(path)?;
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1024 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

impl Store {
    /// Make index and files agree. Files are only ever renamed into place after verification, so a
    /// file without an index entry is the mark of a crash between rename and index write; its hash
    /// is checked again before it is trusted.
    pub fn reconcile(&self) -> io::Result<Reconciled> {
        let mut r = Reconciled::default();
        let mut indexed = Vec::new();
        for digest in self.index.blob_digests().map_err(io::Error::other)? {
            let size = self.index.blob_size(&digest).map_err(io::Error::other)?;
            let on_disk = std::fs::metadata(self.files.path(&digest)).ok().map(|m| m.len());
            if on_disk.is_none() || on_disk != size {
                self.index.remove_blob(&digest).map_err(io::Error::other)?;
                r.dropped += 1;
            } else {
                indexed.push(digest);
            }
        }
        indexed.sort();
        for (digest, path) in self.files.list_files()? {
            match digest {
                Some(d) if indexed.binary_search(&d).is_ok() => {}
                Some(d) => match hash_file(&path, d.algorithm()) {
                    Ok((got, size)) if got == d => {
                        self.index.put_blob(&d, size).map_err(io::Error::other)?;
                        r.reindexed += 1;
                    }
                    _ => {
                        std::fs::remove_file(&path)?;
                        r.removed += 1;
                    }
                },
                None => {
                    std::fs::remove_file(&path)?;
                    r.removed += 1;
                }
            }
        }
        Ok(r)
    }

    /// Re-hash every stored blob and manifest. Corrupt ones leave the index; corrupt blob files go
    /// to `quarantine/`. `progress(done, total)` is called after each item.
    pub fn verify(&self, mut progress: impl FnMut(usize, usize)) -> io::Result<Verified> {
        let mut v = Verified::default();
        let blobs = self.index.blob_digests().map_err(io::Error::other)?;
        let manifests = self.index.manifest_digests().map_err(io::Error::other)?;
        let total = blobs.len() + manifests.len();
        for digest in blobs {
            let path = self.files.path(&digest);
            let ok = match hash_file(&path, digest.algorithm()) {
                Ok((got, size)) => {
                    v.bytes += size;
                    got == digest && self.index.blob_size(&digest).map_err(io::Error::other)? == Some(size)
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if !ok {
                self.index.remove_blob(&digest).map_err(io::Error::other)?;
                let moved = self.files.quarantine(&path).ok();
                v.corrupt.push((format!("blob {digest}"), moved));
            }
            v.checked += 1;
            progress(v.checked, total);
        }
        for digest in manifests {
            if let Some(m) = self.index.manifest(&digest).map_err(io::Error::other)? {
                v.bytes += m.bytes.len() as u64;
                // The same check as on the way in: the digest of the bytes (of the JWS payload for
                // signed schema1), and a media type the manifest itself agrees with.
                let ok = crate::oci::verify_manifest(&m.bytes, std::slice::from_ref(&digest), Some(&m.media_type)).is_ok();
                if !ok {
                    self.index.remove_manifest(&digest).map_err(io::Error::other)?;
                    v.corrupt.push((format!("manifest {digest}"), None));
                }
            }
            v.checked += 1;
            progress(v.checked, total);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn put(store: &Store, bytes: &[u8]) -> Digest {
        store.put_test_blob(bytes)
    }

    #[test]
    fn reconcile_repairs_a_crashed_store() {
        let dir = tempfile::tempdir().unwrap();
        let (kept, lost, orphan, bad);
        {
            let store = Store::open(dir.path()).unwrap();
            kept = put(&store, b"kept");
            lost = put(&store, b"lost");
            orphan = put(&store, b"orphan");
            bad = put(&store, b"bad");
            std::fs::remove_file(store.files.path(&lost)).unwrap();
            store.index.remove_blob(&orphan).unwrap();
            store.index.remove_blob(&bad).unwrap();
            std::fs::write(store.files.path(&bad), b"tampered").unwrap();
            std::fs::write(dir.path().join("blobs/sha256/stray"), b"x").unwrap_or(());
            store.index.flush().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.index.blob_size(&kept).unwrap(), Some(4));
        assert_eq!(store.index.blob_size(&lost).unwrap(), None);
        assert_eq!(store.index.blob_size(&orphan).unwrap(), Some(6), "a verified orphan is re-indexed");
        assert_eq!(store.index.blob_size(&bad).unwrap(), None);
        assert!(!store.files.path(&bad).exists(), "an orphan that fails its hash is removed");
        assert_eq!(store.reconcile().unwrap(), Reconciled::default(), "a second pass finds nothing");
    }

    #[test]
    fn verify_finds_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = put(&store, b"good content");
        let flipped = put(&store, b"will be flipped");
        let f = std::fs::OpenOptions::new().write(true).open(store.files.path(&flipped)).unwrap();
        f.write_all_at(b"W", 0).unwrap();
        let mut calls = 0;
        let v = store.verify(|_, _| calls += 1).unwrap();
        assert_eq!(v.checked, 2);
        assert_eq!(calls, 2);
        assert_eq!(v.corrupt.len(), 1);
        assert!(v.corrupt[0].0.contains(&flipped.to_string()));
        assert!(v.corrupt[0].1.as_ref().unwrap().starts_with(dir.path().join("quarantine")));
        assert_eq!(store.index.blob_size(&flipped).unwrap(), None);
        assert_eq!(store.index.blob_size(&good).unwrap(), Some(12));
        assert!(store.verify(|_, _| {}).unwrap().corrupt.is_empty());
    }

    #[test]
    fn verify_checks_manifests_schema1_by_its_payload() {
        use crate::oci::{SCHEMA1_SIGNED, DOCKER_MANIFEST};
        use crate::store::StoredManifest;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let payload = "{\n   \"schemaVersion\": 1,\n   \"name\": \"library/old\",\n   \"fsLayers\": []\n}";
        let signed = bytes::Bytes::from(crate::oci::signed_schema1(payload));
        let image = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{},"layers":[]}"#);
        let put = |digest: &Digest, media_type: &str, bytes: &bytes::Bytes| {
            store.index.put_manifest(digest, &StoredManifest { media_type: media_type.into(), bytes: bytes.clone() }).unwrap();
        };
        let good_schema1 = Digest::sha256_of(payload.as_bytes());
        put(&good_schema1, SCHEMA1_SIGNED, &signed);
        put(&Digest::sha256_of(&image), DOCKER_MANIFEST, &image);
        // What an older regcache stored on an upstream's word: another digest, or another type.
        let poisoned = Digest::sha256_of(b"someone else's index");
        put(&poisoned, SCHEMA1_SIGNED, &signed);
        let mistyped_bytes = bytes::Bytes::from_static(br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#);
        let mistyped = Digest::sha256_of(&mistyped_bytes);
        put(&mistyped, "text/html", &mistyped_bytes);
        let v = store.verify(|_, _| {}).unwrap();
        let mut corrupt: Vec<String> = v.corrupt.iter().map(|(what, _)| what.clone()).collect();
        corrupt.sort();
        let mut want = vec![format!("manifest {poisoned}"), format!("manifest {mistyped}")];
        want.sort();
        assert_eq!(corrupt, want);
        assert!(store.index.manifest(&good_schema1).unwrap().is_some());
        assert!(store.index.manifest(&poisoned).unwrap().is_none());
    }
}
