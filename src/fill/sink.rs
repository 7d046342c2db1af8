//! What a fill needs from the store, and nothing more: whether the blob is stored already, room
//! for it, its write (begin, then commit once verified), holding it in use while a reader reads
//! it; and, from the tiers behind this node, a copy to fill from instead of the upstream, where to
//! publish what it fetched, and where to throw away a copy that failed verification. The store
//! implements it (`store::Store`); tests wrap it to make a fill misbehave.

use std::io;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::FillError;
use crate::oci::Digest;
use crate::store::{BlobWrite, InUse, NoRoom, Opened, PartialBlob, Reservation, VerifiedFill};

/// Where a fill's blob goes. The methods for the tiers behind this node have defaults for a store
/// without any: no copy, nothing published, nothing to discard.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// The size of the blob `digest`, if it is stored and indexed. Asked under the fills' lock, so
    /// it must answer from memory in practice (an index read), never wait on the network.
    fn stored(&self, digest: &Digest) -> io::Result<Option<u64>>;

    /// The most bytes the store keeps, if limited: a larger blob is passed through.
    fn max_size(&self) -> Option<u64>;

    /// Room for a new temporary of `size` bytes (0 for a body without a length, grown batch by
    /// batch).
    fn reserve(&self, size: u64) -> Result<Reservation, NoRoom>;

    /// Room for `len` more bytes in `reservation`.
    fn grow(&self, reservation: &mut Reservation, len: u64) -> Result<(), NoRoom>;

    /// Start writing the blob `digest` (`size`: as announced); its partial content is readable
    /// by the fill's readers while it is written.
    async fn begin(&self, digest: &Digest, size: Option<u64>) -> io::Result<Box<dyn BlobWrite>>;

    /// Make the verified blob `digest` of `size` bytes, written by `writer`, durable and indexed.
    async fn commit(&self, digest: &Digest, writer: Box<dyn BlobWrite>, size: u64) -> io::Result<()>;

    /// Keep the blob `digest` from being evicted until the value returned is dropped.
    fn hold(&self, digest: &Digest) -> InUse;

    /// The blob `digest` from a tier behind this node, to fill from instead of the upstream;
    /// `None` if none has it (or none answers).
    async fn open_copy(&self, _digest: &Digest) -> Option<Opened> {
        None
    }

    /// Publish the blob `digest` a fill is writing from the upstream to the tiers behind this
    /// node, reading it from `written`, once `verified` says it checked out (dropped unsent:
    /// nothing is published). Whether anything will be published.
    fn publish(&self, _digest: &Digest, _written: &dyn PartialBlob, _verified: oneshot::Receiver<VerifiedFill>) -> bool {
        false
    }

    /// The copy of `digest` from [`Sink::open_copy`] failed verification (`why`): remove it, so
    /// the next fill asks the upstream.
    async fn discard_copy(&self, _digest: &Digest, _why: &FillError) {}
}
