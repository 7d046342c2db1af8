//! Writing a blob to the bucket: a write buffers at most one part ([`super::PART_SIZE`]) and sends
//! each part as soon as it is full, so memory stays bounded whatever the blob's size; a blob
//! smaller than one part goes up in a single PUT at the commit. The final key is written only by
//! the commit, which comes after the caller's verification: before it, the bytes sit in an
//! unfinished multipart upload, invisible to readers.
//!
//! An unfinished upload costs storage until it is aborted, so its id is recorded in a small file
//! under `<data_dir>/uploads/` before its first part is sent and removed once it is completed or
//! aborted; [`Bucket::cleanup_uploads`] aborts what a crash left behind. (An upload created just
//! before a crash, whose record wasn't written yet, is left to the bucket's lifecycle rule.)

use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::multipart::PartId;
use object_store::path::Path;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::client::random_u64;
use super::{Bucket, BucketError, Op};
use crate::store::backend::{BlobWrite, PartialBlob};

/// One recorded multipart upload.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct UploadRecord {
    pub(super) key: String,
    pub(super) id: String,
}

impl Bucket {
    /// Abort every upload a previous run recorded and left unfinished, and remove its record;
    /// how many were aborted. A record that can't be read is removed; one whose abort fails is
    /// kept for the next start, and the first such failure is returned after the others are done.
    pub async fn cleanup_uploads(&self) -> Result<usize, BucketError> {
        let record_error = |path: &FsPath, source| BucketError::Record { path: path.to_owned(), source };
        let mut entries = match tokio::fs::read_dir(&self.uploads).await {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(record_error(&self.uploads, e)),
        };
        let mut aborted = 0;
        let mut first_failure = None;
        while let Some(entry) = entries.next_entry().await.map_err(|e| record_error(&self.uploads, e))? {
            let file = entry.path();
            let record = match tokio::fs::read(&file).await {
                Ok(text) => serde_json::from_slice::<UploadRecord>(&text).ok(),
                // One entry that can't be read (a directory, permissions) doesn't keep the
                // others from being cleaned up.
                Err(e) => {
                    first_failure.get_or_insert(record_error(&file, e));
                    continue;
                }
            };
            let Some(record) = record else {
                tracing::warn!(record = %file.display(), "removing an unreadable upload record");
                remove_record(&file).await;
                continue;
            };
            let path = match self.path(Op::AbortUpload, &record.key) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(record = %file.display(), error = %e, "removing an upload record whose key is not a key");
                    remove_record(&file).await;
                    continue;
                }
            };
            let id = record.id.clone();
            match self.observe(Op::AbortUpload, 0, self.store.abort_multipart(&path, &id).await) {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                    remove_record(&file).await;
                    aborted += 1;
                }
                Err(e) => {
                    let err = self.error(Op::AbortUpload, &record.key, &e);
                    tracing::warn!(error = %err, "an unfinished upload could not be aborted; trying again at the next start");
                    first_failure.get_or_insert(err);
                }
            }
        }
        match first_failure {
            Some(e) => Err(e),
            None => Ok(aborted),
        }
    }

    /// Write the record of upload `id` for `key`; its file.
    async fn record_upload(&self, key: &str, id: &str) -> io::Result<PathBuf> {
        tokio::fs::create_dir_all(&self.uploads).await?;
        let name = format!("{:016x}", random_u64());
        let file = self.uploads.join(format!("{name}.upload"));
        let temp = self.uploads.join(format!("{name}.tmp"));
        let text = serde_json::to_vec(&UploadRecord { key: key.to_owned(), id: id.to_owned() })?;
        let mut f = tokio::fs::File::create(&temp).await?;
        tokio::io::AsyncWriteExt::write_all(&mut f, &text).await?;
        f.sync_all().await?;
        tokio::fs::rename(&temp, &file).await?;
        Ok(file)
    }
}

/// Remove an upload record; one that is gone already is fine.
async fn remove_record(file: &FsPath) {
    if let Err(e) = tokio::fs::remove_file(file).await {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(record = %file.display(), error = %e, "cannot remove an upload record");
        }
    }
}

/// A multipart upload under way.
struct Upload {
    id: String,
    record: PathBuf,
    parts: Vec<PartId>,
}

/// A blob being written to the bucket: at most one part buffered; full parts are sent as they
/// fill; nothing is under the key before the commit.
pub(super) struct BucketWrite {
    bucket: Bucket,
    key: String,
    path: Path,
    /// The bytes of the part being filled (slices of the appended batches, not copies).
    buffered: Vec<Bytes>,
    buffered_len: usize,
    /// Started when the first part is full.
    upload: Option<Upload>,
}

impl BucketWrite {
    /// A write of the object `key` (at `path`) to `bucket`, nothing sent yet.
    pub(super) fn new(bucket: Bucket, key: String, path: Path) -> BucketWrite {
        BucketWrite { bucket, key, path, buffered: Vec::new(), buffered_len: 0, upload: None }
    }

    /// Send what is buffered as the next part, starting (and recording) the upload first if needed.
    async fn send_part(&mut self) -> io::Result<()> {
        let bucket = self.bucket.clone();
        if self.upload.is_none() {
            let created = bucket.observe(Op::CreateUpload, 0, bucket.store.create_multipart(&self.path).await);
            let id = created.map_err(|e| bucket.io_error(Op::CreateUpload, &self.key, &e))?;
            let record = match bucket.record_upload(&self.key, &id).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = bucket.observe(Op::AbortUpload, 0, bucket.store.abort_multipart(&self.path, &id).await);
                    return Err(io::Error::other(BucketError::Record { path: bucket.uploads.clone(), source: e }));
                }
            };
            self.upload = Some(Upload { id, record, parts: Vec::new() });
        }
        let Some(upload) = self.upload.as_mut() else { unreachable!("the upload was just started") };
        let payload: PutPayload = std::mem::take(&mut self.buffered).into_iter().collect();
        let len = std::mem::take(&mut self.buffered_len) as u64;
        let idx = upload.parts.len();
        let part = bucket.observe(Op::PutPart, len, bucket.store.put_part(&self.path, &upload.id, idx, payload).await);
        upload.parts.push(part.map_err(|e| bucket.io_error(Op::PutPart, &self.key, &e))?);
        Ok(())
    }

    /// Abort the upload, if one was started, and remove its record once the abort succeeded.
    async fn abort_upload(bucket: &Bucket, key: &str, path: &Path, upload: Upload) {
        match bucket.observe(Op::AbortUpload, 0, bucket.store.abort_multipart(path, &upload.id).await) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => remove_record(&upload.record).await,
            Err(e) => tracing::warn!(
                error = %bucket.error(Op::AbortUpload, key, &e),
                "an upload could not be aborted; its record stays for the next start"
            ),
        }
    }
}

#[async_trait]
impl BlobWrite for BucketWrite {
    async fn append(&mut self, batch: &[Bytes]) -> io::Result<()> {
        for chunk in batch {
            let mut chunk = chunk.clone();
            while !chunk.is_empty() {
                let room = self.bucket.part_size - self.buffered_len;
                let take = chunk.split_to(room.min(chunk.len()));
                self.buffered_len += take.len();
                self.buffered.push(take);
                if self.buffered_len == self.bucket.part_size {
                    self.send_part().await?;
                }
            }
        }
        Ok(())
    }

    fn partial(&self) -> Option<Arc<dyn PartialBlob>> {
        None
    }

    async fn commit(mut self: Box<Self>) -> io::Result<()> {
        let bucket = self.bucket.clone();
        match self.upload.take() {
            None => {
                if bucket.size_at(&self.path).await?.is_some() {
                    return Ok(());
                }
                let payload: PutPayload = std::mem::take(&mut self.buffered).into_iter().collect();
                let len = payload.content_length() as u64;
                let options = PutOptions { mode: PutMode::Create, ..PutOptions::default() };
                match bucket.observe(Op::Put, len, bucket.store.put_opts(&self.path, payload, options).await) {
                    // Someone else stored the blob meanwhile: the same bytes.
                    Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(bucket.io_error(Op::Put, &self.key, &e)),
                }
            }
            Some(upload) => {
                self.upload = Some(upload);
                let finish = async {
                    if self.buffered_len > 0 {
                        self.send_part().await?;
                    }
                    if bucket.size_at(&self.path).await?.is_some() {
                        return Ok(false);
                    }
                    let Some(upload) = self.upload.as_mut() else { unreachable!("put back above") };
                    let parts = std::mem::take(&mut upload.parts);
                    let done = bucket.store.complete_multipart(&self.path, &upload.id, parts).await;
                    bucket.observe(Op::CompleteUpload, 0, done).map_err(|e| bucket.io_error(Op::CompleteUpload, &self.key, &e))?;
                    Ok::<bool, io::Error>(true)
                };
                let result = finish.await;
                let Some(upload) = self.upload.take() else { unreachable!("put back above") };
                match result {
                    Ok(true) => {
                        remove_record(&upload.record).await;
                        Ok(())
                    }
                    // Stored already (content addressing: the same blob): this upload is not needed.
                    Ok(false) => {
                        BucketWrite::abort_upload(&bucket, &self.key, &self.path, upload).await;
                        Ok(())
                    }
                    Err(e) => {
                        BucketWrite::abort_upload(&bucket, &self.key, &self.path, upload).await;
                        Err(e)
                    }
                }
            }
        }
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(upload) = self.upload.take() {
            BucketWrite::abort_upload(&self.bucket, &self.key, &self.path, upload).await;
        }
    }
}

impl Drop for BucketWrite {
    fn drop(&mut self) {
        let Some(upload) = self.upload.take() else { return };
        // Dropped without commit or abort: abort in the background. Without a runtime (shutting
        // down) the record stays, and the next start aborts the upload.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (bucket, key, path) = (self.bucket.clone(), self.key.clone(), self.path.clone());
            runtime.spawn(async move { BucketWrite::abort_upload(&bucket, &key, &path, upload).await });
        }
    }
}
