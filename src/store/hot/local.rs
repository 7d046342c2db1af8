//! The local directory, the first [`BlobBackend`]: blobs at `blobs/<algorithm>/<2 hex>/<hex>` under
//! the data directory, written through temporary files in `tmp/` that only become blobs once
//! verified and durable (fsync, rename, fsync of the directory).
//!
//! It also keeps [`Records`] as files under `records/`, so a directory (a shared file system) can
//! stand in for a bucket. Besides the seam it offers what only a directory has: paths for the start-up repair and
//! `verify`, the quarantine folder, and synchronous removal for the evictor.

use std::fs::{self, File};
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::store::backend::{BlobBackend, BlobRead, BlobWrite, Listed, Opened, PartialBlob, ReadAt, Records};
use super::read::{BufPool, FileRange, FileReadAt};
use crate::store::StoreError;
use crate::oci::Digest;

/// The blob directory tree.
pub struct LocalBlobs {
    root: PathBuf,
    tmp: PathBuf,
    records: PathBuf,
}

/// A temporary file being filled. Dropped without [`BlobWrite::commit`], it is deleted.
struct LocalWrite {
    /// Where the blob goes once committed.
    dest: PathBuf,
    path: PathBuf,
    file: Arc<File>,
    /// Bytes appended so far.
    len: u64,
    committed: bool,
}

impl Drop for LocalWrite {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The temporary file of a write, as readers following it see it.
struct LocalPartial(Arc<File>);

impl PartialBlob for LocalPartial {
    fn reader(&self) -> Box<dyn ReadAt> {
        Box::new(FileReadAt::new(self.0.clone(), BufPool::following()))
    }
}

#[async_trait]
impl BlobWrite for LocalWrite {
    async fn append(&mut self, batch: &[Bytes]) -> io::Result<()> {
        let (file, offset, batch) = (self.file.clone(), self.len, batch.to_vec());
        let len = tokio::task::spawn_blocking(move || {
            let mut off = offset;
            for b in &batch {
                file.write_all_at(b, off)?;
                off += b.len() as u64;
            }
            Ok::<_, io::Error>(off - offset)
        })
        .await
        .map_err(io::Error::other)??;
        self.len += len;
        Ok(())
    }

    fn partial(&self) -> Option<Arc<dyn PartialBlob>> {
        Some(Arc::new(LocalPartial(self.file.clone())))
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        let (file, path, dest) = (self.file.clone(), self.path.clone(), self.dest.clone());
        tokio::task::spawn_blocking(move || commit_file(&file, &path, &dest)).await.map_err(io::Error::other)??;
        self.committed = true;
        Ok(())
    }

    async fn abort(self: Box<Self>) {
        // Dropping it deletes the temporary file.
    }
}

/// Make the verified temporary file at `path` the blob at `dest`: fsync it, rename it into place,
/// fsync the directory.
fn commit_file(file: &File, path: &Path, dest: &Path) -> io::Result<()> {
    file.sync_all()?;
    let dir = dest.parent().ok_or_else(|| io::Error::other("blob path has no parent"))?;
    fs::create_dir_all(dir)?;
    fs::rename(path, dest)?;
    File::open(dir)?.sync_all()
}

#[async_trait]
impl BlobBackend for LocalBlobs {
    async fn begin(&self, digest: &Digest, _size: Option<u64>) -> io::Result<Box<dyn BlobWrite>> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(Box::new(LocalWrite { dest: self.path(digest), path, file: Arc::new(file), len: 0, committed: false }))
    }

    async fn open(&self, digest: &Digest, range: Range<u64>) -> io::Result<Option<Opened>> {
        // A plain open and fstat: fast enough for the async threads (no data is read here).
        let file = match File::open(self.path(digest)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let reader: Box<dyn BlobRead> = Box::new(FileRange::new(Arc::new(file), range));
        Ok(Some(Opened { size, reader }))
    }

    async fn stat(&self, digest: &Digest) -> io::Result<Option<u64>> {
        match fs::metadata(self.path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self) -> io::Result<Vec<Listed>> {
        let files = self.list_files()?;
        Ok(files
            .into_iter()
            .map(|(digest, path)| {
                let meta = fs::metadata(&path).ok();
                let modified = meta
                    .as_ref()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_millis() as u64);
                Listed { digest, size: meta.map_or(0, |m| m.len()), name: path.display().to_string(), modified }
            })
            .collect())
    }

    async fn remove(&self, digest: &Digest) -> io::Result<()> {
        self.remove_file(digest)
    }
}

#[async_trait]
impl Records for LocalBlobs {
    async fn get(&self, key: &str, max: usize) -> io::Result<Option<Bytes>> {
        let path = self.record_path(key)?;
        match fs::metadata(&path) {
            Ok(m) if m.len() > max as u64 => {
                Err(io::Error::new(io::ErrorKind::InvalidData, format!("record {key} is larger than {max} bytes")))
            }
            Ok(_) => Ok(Some(fs::read(&path)?.into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, key: &str, value: Bytes) -> io::Result<()> {
        let path = self.record_path(key)?;
        let dir = path.parent().ok_or_else(|| io::Error::other("record path has no parent"))?;
        fs::create_dir_all(dir)?;
        // Whole or not at all: written aside, then renamed over the old one.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.tmp.join(format!("record-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        fs::write(&tmp, &value)?;
        fs::rename(&tmp, &path)
    }

    async fn list_records(&self, prefix: &str) -> io::Result<Vec<String>> {
        let start = self.record_path(prefix.trim_end_matches('/'))?;
        let mut out = Vec::new();
        let mut stack = vec![start];
        while let Some(path) = stack.pop() {
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => stack.extend(read_dir_paths(&path)?),
                Ok(_) => {
                    if let Some(key) = path.strip_prefix(&self.records).ok().and_then(|k| k.to_str()) {
                        out.push(key.to_owned());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn remove_record(&self, key: &str) -> io::Result<()> {
        match fs::remove_file(self.record_path(key)?) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

impl LocalBlobs {
    /// Where the record `key` lives; only plain relative names (no `..`, no root) are keys.
    fn record_path(&self, key: &str) -> io::Result<PathBuf> {
        let plain = Path::new(key).components().all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain || key.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("not a record key: {key:?}")));
        }
        Ok(self.records.join(key))
    }

    /// Create the directories and clear leftover temporary files.
    pub fn at(data_dir: &Path) -> Result<LocalBlobs, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let root = data_dir.join("blobs");
        let tmp = data_dir.join("tmp");
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
        Ok(LocalBlobs { records: data_dir.join("records"), root, tmp })
    }

    /// Where the blob with `digest` lives. Safe: a `Digest` is an algorithm name and validated hex.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.algorithm().as_str()).join(&digest.hex()[..2]).join(digest.hex())
    }

    /// The directory of temporary files.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// Every file in the blob tree: its digest when it sits at the path of a valid one, and its path.
    pub fn list_files(&self) -> io::Result<Vec<(Option<Digest>, PathBuf)>> {
        let mut out = Vec::new();
        let mut stack = vec![(self.root.clone(), 0)];
        while let Some((dir, depth)) = stack.pop() {
            for path in read_dir_paths(&dir)? {
                if path.is_dir() {
                    stack.push((path, depth + 1));
                    continue;
                }
                let digest = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(|rel| {
                        let parts: Vec<&str> = rel.iter().filter_map(|p| p.to_str()).collect();
                        match parts.as_slice() {
                            [alg, _, hex] => format!("{alg}:{hex}").parse::<Digest>().ok(),
                            _ => None,
                        }
                    })
                    .filter(|d| self.path(d) == path);
                out.push((digest, path));
            }
        }
        Ok(out)
    }

    /// The data directory's quarantine folder, for corrupt content kept for inspection.
    pub fn quarantine(&self, path: &Path) -> io::Result<PathBuf> {
        let dir = self.root.parent().unwrap_or(&self.root).join("quarantine");
        fs::create_dir_all(&dir)?;
        let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let dest = dir.join(name);
        fs::rename(path, &dest)?;
        Ok(dest)
    }

    /// Delete a stored blob (a file the index no longer vouches for), from a blocking context.
    pub fn remove_file(&self, digest: &Digest) -> io::Result<()> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// The entries of a directory (files and folders), or none if it doesn't exist.
fn read_dir_paths(dir: &Path) -> io::Result<Vec<PathBuf>> {
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.path())).collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read_all(mut r: Box<dyn BlobRead>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await {
            out.extend_from_slice(&chunk.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn temp_then_commit() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalBlobs::at(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello world");
        assert!(files.open(&d, 0..0).await.unwrap().is_none());

        let mut w = files.begin(&d, Some(11)).await.unwrap();
        w.append(&[Bytes::from_static(b"hello"), Bytes::from_static(b" ")]).await.unwrap();
        // A follower reads what is appended before the commit.
        let mut follower = w.partial().unwrap().reader();
        assert_eq!(&follower.read_at(1, 100).await.unwrap()[..], b"ello ");
        w.append(&[Bytes::from_static(b"world")]).await.unwrap();
        assert!(files.open(&d, 0..11).await.unwrap().is_none(), "nothing is visible before the commit");
        w.commit().await.unwrap();
        let opened = files.open(&d, 6..11).await.unwrap().unwrap();
        assert_eq!(opened.size, 11);
        assert_eq!(read_all(opened.reader).await, b"world");
        assert_eq!(files.stat(&d).await.unwrap(), Some(11));
        assert!(files.path(&d).starts_with(dir.path().join("blobs/sha256")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        let listed = files.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].digest.as_ref(), listed[0].size), (Some(&d), 11));

        // An aborted or dropped write leaves nothing behind.
        let other = Digest::sha256_of(b"other");
        files.begin(&other, None).await.unwrap().abort().await;
        drop(files.begin(&other, None).await.unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(files.stat(&other).await.unwrap(), None);

        // Leftovers from a crash are cleared on open.
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        let files = LocalBlobs::at(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        files.remove(&d).await.unwrap();
        files.remove(&d).await.unwrap();
        assert_eq!(files.stat(&d).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_are_files_under_records() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalBlobs::at(dir.path()).unwrap();
        assert_eq!(files.get("tags/docker.io/library/alpine/3/image", 100).await.unwrap(), None);
        files.put("tags/docker.io/library/alpine/3/image", Bytes::from_static(b"one")).await.unwrap();
        files.put("tags/docker.io/library/alpine/3/image", Bytes::from_static(b"two")).await.unwrap();
        assert_eq!(files.get("tags/docker.io/library/alpine/3/image", 100).await.unwrap().as_deref(), Some(&b"two"[..]));
        assert_eq!(files.get("tags/docker.io/library/alpine/3/image", 2).await.unwrap_err().kind(), io::ErrorKind::InvalidData, "larger than max");
        for bad in ["../escape", "/etc/passwd", "a/../../b", ""] {
            assert_eq!(files.put(bad, Bytes::new()).await.unwrap_err().kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        files.put("tags/ghcr.io/org/app/1/index", Bytes::from_static(b"i")).await.unwrap();
        let mut keys = files.list_records("tags").await.unwrap();
        keys.sort();
        assert_eq!(keys, ["tags/docker.io/library/alpine/3/image", "tags/ghcr.io/org/app/1/index"]);
        assert_eq!(files.list_records("tags/ghcr.io/").await.unwrap(), ["tags/ghcr.io/org/app/1/index"]);
        assert!(files.list_records("nothing").await.unwrap().is_empty());
        files.remove_record("tags/ghcr.io/org/app/1/index").await.unwrap();
        files.remove_record("tags/ghcr.io/org/app/1/index").await.unwrap();
        assert_eq!(files.list_records("tags").await.unwrap(), ["tags/docker.io/library/alpine/3/image"]);
    }
}
