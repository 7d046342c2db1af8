//! Uploads to the bucket: a blob a fill fetched from the upstream, once the fill has verified it,
//! read back from the hot tier's file ([`Shared::spawn_upload`]); and a blob the backlog kept,
//! from the hot tier's stored copy, hashed again on the way ([`Shared::upload_stored`]).

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use super::backlog::Pending;
use super::{answered, NotDone, Shared};
use crate::metrics::SharedOp;
use crate::oci::{Digest, Hasher};
use crate::store::backend::{BlobRead, BlobWrite, ReadAt};

/// How many bytes an upload reads from the hot tier at once.
pub(super) const UPLOAD_CHUNK: usize = 1024 * 1024;

/// What a fill tells the upload of its blob once it has verified the blob and tried to keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedFill {
    /// The blob's size.
    pub size: u64,
    /// Whether the hot tier keeps it (committed and indexed): only then can it wait in the backlog
    /// while the bucket is down.
    pub kept: bool,
}

impl Shared {
    /// Upload the blob `digest` of `size` bytes from the hot tier's copy (`stored`, read whole),
    /// hashing it again on the way (the commit happens only if it is still the blob), unless the
    /// bucket has it already. The caller holds one of [`Shared::upload_permits`].
    pub(in crate::store) async fn upload_stored(&self, digest: &Digest, size: u64, stored: Box<dyn BlobRead>) -> Result<(), NotDone> {
        if matches!(self.sizes.get(digest), Ok(Some(_))) {
            return Ok(());
        }
        if let Some(there) = self.attempt(SharedOp::Head, answered(self.blobs.stat(digest)).await)? {
            self.remember(digest, there);
            return Ok(());
        }
        self.upload_now(digest, size, UploadFrom::Stored { reader: stored, hasher: Some(Box::new(Hasher::new(digest.algorithm()))) }).await
    }

    /// Upload the blob `digest` that a fill is writing to the hot tier, once it is verified:
    /// `verified` says so, with its size and whether the hot tier keeps it (dropped unsent: the
    /// fill failed or stopped storing, nothing is uploaded); `written` reads the fill's file.
    /// Whether the bucket is down is asked then: if it is (or the upload fails), a blob the hot
    /// tier keeps waits in the backlog. Nothing happens when the bucket is known to have the blob
    /// already. The upload's task, if any.
    pub fn spawn_upload(
        self: &Arc<Self>,
        digest: &Digest,
        written: Box<dyn ReadAt>,
        verified: oneshot::Receiver<VerifiedFill>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if matches!(self.sizes.get(digest), Ok(Some(_))) {
            return None;
        }
        let (shared, digest) = (Arc::clone(self), digest.clone());
        Some(tokio::spawn(async move {
            let Ok(VerifiedFill { size, kept }) = verified.await else { return };
            let later = || {
                if kept {
                    shared.keep_for_later(&Pending::Blob { digest: digest.clone(), size });
                }
            };
            if !shared.health.available() {
                return later();
            }
            let Ok(_permit) = shared.uploads.clone().acquire_owned().await else { return };
            // It may have failed while this upload waited for its turn.
            if !shared.health.available() {
                return later();
            }
            if shared.upload_now(&digest, size, UploadFrom::Fill(written)).await == Err(NotDone::Failed) {
                later();
            }
        }))
    }

    /// Upload the blob `digest` of `size` bytes from `source` now; the caller holds one of
    /// [`Shared::upload_permits`].
    async fn upload_now(&self, digest: &Digest, size: u64, source: UploadFrom) -> Result<(), NotDone> {
        let _running = self.metrics.upload_started();
        let writer = match self.blobs.begin(digest, Some(size)).await {
            Ok(w) => w,
            Err(e) => return self.attempt(SharedOp::Upload, Err(e)),
        };
        match upload(writer, source, size, digest).await {
            Ok(()) => {
                self.attempt(SharedOp::Upload, Ok(()))?;
                self.metrics.written(size);
                self.remember(digest, size);
                tracing::info!(%digest, size, "blob uploaded to the bucket");
                Ok(())
            }
            Err(Cut::Bucket(e)) => {
                self.metrics.upload_aborted();
                self.attempt(SharedOp::Upload, Err(e))
            }
            // This node's copy, not the bucket: nothing to try again.
            Err(Cut::Source(e)) => {
                self.metrics.upload_aborted();
                self.metrics.operation(SharedOp::Upload, false);
                tracing::error!(%digest, error = %e, "reading the blob to upload failed; not uploaded");
                Err(NotDone::Unusable)
            }
        }
    }
}

/// Where an upload's bytes come from.
enum UploadFrom {
    /// The fill's write, which the fill has verified.
    Fill(Box<dyn ReadAt>),
    /// The hot tier's stored copy, read whole: verified when it was stored, hashed again as it is
    /// read because it has sat on disk since.
    Stored { reader: Box<dyn BlobRead>, hasher: Option<Box<Hasher>> },
}

impl UploadFrom {
    /// Up to `n` bytes from `pos` (the position after everything returned so far); empty at the
    /// end.
    async fn read(&mut self, pos: u64, n: usize) -> io::Result<Bytes> {
        match self {
            UploadFrom::Fill(written) => written.read_at(pos, n).await,
            UploadFrom::Stored { reader, hasher } => {
                let Some(chunk) = reader.next_chunk().await.transpose()? else { return Ok(Bytes::new()) };
                let (h, hashed) = (hasher.take(), chunk.clone());
                let h = tokio::task::spawn_blocking(move || {
                    h.map(|mut h| {
                        h.update(&hashed);
                        h
                    })
                })
                .await
                .map_err(io::Error::other)?;
                *hasher = h;
                Ok(chunk)
            }
        }
    }

    /// Whether the bytes read are `digest`'s (the fill's were checked by the fill).
    fn check(self, digest: &Digest) -> io::Result<()> {
        match self {
            UploadFrom::Fill(_) => Ok(()),
            UploadFrom::Stored { hasher, .. } => match hasher.map(|h| h.finish()) {
                Some(got) if got == *digest => Ok(()),
                got => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the hot tier's copy has digest {}", got.map_or_else(|| "unknown".into(), |g| g.to_string())),
                )),
            },
        }
    }
}

/// Why an upload was cut.
enum Cut {
    /// The bucket failed.
    Bucket(io::Error),
    /// Reading (or checking) what was to be uploaded failed.
    Source(io::Error),
}

/// Copy the blob `digest` of `size` bytes from `source` into `writer` and commit it once the
/// source says the bytes are the blob's; on any failure the write is aborted.
async fn upload(mut writer: Box<dyn BlobWrite>, mut source: UploadFrom, size: u64, digest: &Digest) -> Result<(), Cut> {
    let copied = async {
        let mut pos = 0u64;
        while pos < size {
            let n = usize::try_from(size - pos).unwrap_or(usize::MAX).min(UPLOAD_CHUNK);
            let bytes = source.read(pos, n).await.map_err(Cut::Source)?;
            let end = pos.checked_add(bytes.len() as u64).filter(|end| *end <= size);
            let Some(end) = end.filter(|_| !bytes.is_empty()) else {
                return Err(Cut::Source(io::Error::new(io::ErrorKind::UnexpectedEof, "the hot tier's file is not the blob's size")));
            };
            pos = end;
            writer.append(&[bytes]).await.map_err(Cut::Bucket)?;
        }
        source.check(digest).map_err(Cut::Source)
    }
    .await;
    match copied {
        Ok(()) => writer.commit().await.map_err(Cut::Bucket),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}
