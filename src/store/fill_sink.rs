//! The store as a fill's sink ([`crate::fill::Sink`]): the hot tier's budget and writes, the index,
//! and the shared bucket behind them when there is one.

use std::io;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::{BlobWrite, InUse, NoRoom, Opened, PartialBlob, Reservation, Store, VerifiedFill};
use crate::fill::{FillError, Sink};
use crate::oci::Digest;

#[async_trait]
impl Sink for Store {
    fn stored(&self, digest: &Digest) -> io::Result<Option<u64>> {
        self.index.blob_size(digest).map_err(io::Error::other)
    }

    fn max_size(&self) -> Option<u64> {
        self.max_size
    }

    fn reserve(&self, size: u64) -> Result<Reservation, NoRoom> {
        self.temp.reserve(size)
    }

    fn grow(&self, reservation: &mut Reservation, len: u64) -> Result<(), NoRoom> {
        self.temp.grow(reservation, len)
    }

    async fn begin(&self, digest: &Digest, size: Option<u64>) -> io::Result<Box<dyn BlobWrite>> {
        self.blobs.begin(digest, size).await
    }

    async fn commit(&self, digest: &Digest, writer: Box<dyn BlobWrite>, size: u64) -> io::Result<()> {
        writer.commit().await?;
        self.index.put_blob(digest, size).map_err(io::Error::other)?;
        self.note_stored(digest);
        Ok(())
    }

    fn hold(&self, digest: &Digest) -> InUse {
        self.usage.hold(digest)
    }

    async fn open_copy(&self, digest: &Digest) -> Option<Opened> {
        self.shared.as_ref()?.open(digest).await
    }

    fn publish(&self, digest: &Digest, written: &dyn PartialBlob, verified: oneshot::Receiver<VerifiedFill>) -> bool {
        // The reader is made only when there is a bucket to upload to.
        self.shared.as_ref().and_then(|shared| shared.spawn_upload(digest, written.reader(), verified)).is_some()
    }

    async fn discard_copy(&self, digest: &Digest, why: &FillError) {
        if let Some(shared) = &self.shared {
            shared.discard(digest, why).await;
        }
    }
}
