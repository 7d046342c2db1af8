//! Blob files: `blobs/<algorithm>/<2 hex>/<hex>` under the data directory, filled through temporary
//! files in `tmp/` that only become blobs once verified and durable.
//!
//! This is the small interface a shared (S3-compatible) backend would implement: open a blob, begin
//! a temporary one, commit it under its digest.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::StoreError;
use crate::oci::Digest;

/// The blob directory tree.
pub struct BlobFiles {
    root: PathBuf,
    tmp: PathBuf,
}

/// A temporary file being filled. Dropping it without [`BlobFiles::commit`] deletes it.
pub struct TempBlob {
    path: PathBuf,
    file: Arc<File>,
    committed: bool,
}

impl TempBlob {
    /// The open file, shared with readers that follow the fill.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl BlobFiles {
    /// Create the directories and clear leftover temporary files.
    pub fn open(data_dir: &Path) -> Result<BlobFiles, StoreError> {
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
        Ok(BlobFiles { root, tmp })
    }

    /// Where the blob with `digest` lives. Safe: a `Digest` is an algorithm name and validated hex.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.algorithm().as_str()).join(&digest.hex()[..2]).join(digest.hex())
    }

    /// The stored blob and its size, if present.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<Option<(File, u64)>> {
        match File::open(self.path(digest)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The directory of temporary files.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A new temporary file.
    pub fn begin(&self) -> io::Result<TempBlob> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("{}-{n}", std::process::id()));
        let file = fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
        Ok(TempBlob { path, file: Arc::new(file), committed: false })
    }

    /// Make a verified temporary file the blob `digest`: fsync it, rename it into place, fsync the
    /// directory. Blocking; call from a blocking context.
    pub fn commit(&self, mut temp: TempBlob, digest: &Digest) -> io::Result<()> {
        temp.file.sync_all()?;
        let dest = self.path(digest);
        let dir = dest.parent().ok_or_else(|| io::Error::other("blob path has no parent"))?;
        fs::create_dir_all(dir)?;
        fs::rename(&temp.path, &dest)?;
        temp.committed = true;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    /// Every file in the blob tree: its digest when it sits at the path of a valid one, and its path.
    pub fn list(&self) -> io::Result<Vec<(Option<Digest>, PathBuf)>> {
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

    /// Delete a stored blob (a file the index no longer vouches for).
    pub fn remove(&self, digest: &Digest) -> io::Result<()> {
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
    use std::os::unix::fs::FileExt;

    #[test]
    fn temp_then_commit() {
        let dir = tempfile::tempdir().unwrap();
        let files = BlobFiles::open(dir.path()).unwrap();
        let d = Digest::sha256_of(b"hello");
        assert!(files.open_blob(&d).unwrap().is_none());

        let t = files.begin().unwrap();
        t.file().write_all_at(b"hello", 0).unwrap();
        files.commit(t, &d).unwrap();
        let (_, len) = files.open_blob(&d).unwrap().unwrap();
        assert_eq!(len, 5);
        assert!(files.path(&d).starts_with(dir.path().join("blobs/sha256")));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // A dropped temporary file leaves nothing behind.
        drop(files.begin().unwrap());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);

        // Leftovers from a crash are cleared on open.
        fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        let _ = BlobFiles::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
