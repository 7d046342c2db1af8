//! The fill's task: connect (the shared bucket, else the upstream), decide up front whether the
//! blob can be stored, download it in batches (hashed, written, relayed to the readers), verify it,
//! commit it, and give its upload the go-ahead.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::map::FillGuard;
use super::pace::{abandoned, Pace};
use super::{Fill, FillError, FillState, Sink, Via};
use crate::config::FillBudget;
use crate::fleet::peer::BlobAsk;
use crate::fleet::source::FleetStream;
use crate::oci::{Digest, Hasher, RepositoryName};
use crate::singleflight::CallDied;
use crate::store::{BlobRead, BlobWrite, Reservation, VerifiedFill};
use crate::upstream::{Transport, Upstream, UpstreamError};

/// How many bytes of a fill are gathered before one write to disk.
const WRITE_BATCH: usize = 512 * 1024;

/// Where a fill's bytes come from.
enum Body {
    /// The upstream's response.
    Upstream(Incoming),
    /// The shared bucket, which had the blob.
    Shared(Box<dyn BlobRead>),
    /// Members of the fleet (failing over to the next, then to the upstream).
    Fleet(Box<FleetStream>),
}

impl Body {
    /// The next chunk; `None` at the end. The upstream's body must send something within its idle
    /// timeout; the bucket's requests are bounded by its backend.
    async fn next(&mut self, transport: &Transport) -> Result<Option<Bytes>, FillError> {
        match self {
            Body::Upstream(body) => Ok(transport.next_chunk(body).await?),
            Body::Shared(reader) => reader.next_chunk().await.transpose().map_err(|e| FillError::Shared(e.to_string())),
            Body::Fleet(stream) => Ok(stream.next_chunk().await?),
        }
    }

    /// Whether this node publishes the blob, once verified, to the tiers behind it: not when
    /// members streamed all of it (the one that fetched it from the upstream publishes it).
    fn publishes(&self) -> bool {
        match self {
            Body::Fleet(stream) => stream.asked_upstream(),
            Body::Upstream(_) | Body::Shared(_) => true,
        }
    }
}

/// A fill whose source has answered.
struct Connected {
    body: Body,
    /// The size announced.
    total: Option<u64>,
    /// Room for the blob, and its write to the store; both `None` when it is passed through.
    reservation: Option<Reservation>,
    writer: Option<Box<dyn BlobWrite>>,
    /// Tells the upload to the shared bucket that the blob is verified (its size, and whether the
    /// hot tier keeps it), if it is to be uploaded; dropped unsent, nothing is uploaded.
    upload: Option<oneshot::Sender<VerifiedFill>>,
}

/// The work of one fill, run by its own task ([`FillJob::run`]).
pub(super) struct FillJob {
    pub(super) fill: Arc<Fill>,
    /// Where the blob goes (and the tiers behind this node it may come from).
    pub(super) sink: Arc<dyn Sink>,
    pub(super) upstream: Arc<Upstream>,
    pub(super) repo: RepositoryName,
    pub(super) digest: Digest,
    pub(super) budget: FillBudget,
    pub(super) stop: CancellationToken,
    /// Where the blob is asked for when this node's tiers don't have it.
    pub(super) via: Via,
    /// The id of the client request that started the fill, passed on to members.
    pub(super) request_id: Option<String>,
}

impl FillJob {
    /// Run the fill to its end; `guard` is dropped with it, however it ends.
    pub(super) async fn run(self, mut guard: FillGuard) {
        let result = tokio::select! {
            result = self.download() => result,
            // The drain time at shutdown is over: the download (and its unfinished write) goes.
            () = self.stop.cancelled() => Err(UpstreamError::from(CallDied).into()),
        };
        match result {
            Ok((size, stored)) => {
                // `download` told the readers (Done) as soon as the digest checked out.
                let request_id = self.request_id.as_deref().unwrap_or_default();
                tracing::info!(digest = %self.digest, size, stored, %request_id, "blob fetched and verified");
            }
            Err(e) => {
                let request_id = self.request_id.as_deref().unwrap_or_default();
                tracing::warn!(digest = %self.digest, error = %e, %request_id, "blob fill failed; nothing stored");
                guard.failure = Some(e);
            }
        }
    }

    /// Fetch, verify and (when it can) store the blob: its size, and whether it was stored.
    async fn download(&self) -> Result<(u64, bool), FillError> {
        let Connected { mut body, total, mut reservation, mut writer, mut upload } = self.connect().await?;
        let mut hasher = Hasher::new(self.digest.algorithm());
        let mut written: u64 = 0;
        let mut pace = Pace::new(&self.budget, Instant::now());
        while let Some((batch, len)) = self.next_batch(&mut body, &mut pace).await? {
            self.note_members(&body);
            if total.is_some_and(|t| written.saturating_add(len) > t) {
                return Err(FillError::Corrupt(format!("upstream sent more than the {} bytes it announced", total.unwrap_or(0))));
            }
            // A body without a length that is still being stored: reserve room for this batch.
            if let (None, false, Some(r)) = (total, self.fill.passing_through(), reservation.as_mut()) {
                if !self.grow(r, written, len) {
                    self.fill.stop_storing(written);
                }
            }
            hasher = self.write_or_relay(writer.as_deref_mut(), written, batch, len, hasher, reservation.as_mut()).await?;
            if self.fill.passing_through() {
                // Storing stopped (the budget was spent or a write failed): what it will never
                // write goes back to the other fills.
                if let Some(r) = reservation.as_mut() {
                    r.give_back_unwritten();
                }
            }
            written = written.saturating_add(len);
            self.progressed(written, &mut upload);
            pace.check(self.fill.waiters() > 0, len, Instant::now()).map_err(abandoned)?;
        }
        self.verify(total, written, hasher).await?;
        // Verified: the readers may have the last byte now; making it durable is the store's
        // business.
        self.fill.state.send_replace(FillState::Done { size: written });
        let kept = match writer {
            Some(writer) if !self.fill.passing_through() => self.commit(writer, written).await,
            Some(writer) => {
                writer.abort().await;
                false
            }
            None => false,
        };
        // The upload follows the commit: a bucket that is down now gets the blob from the hot
        // tier's file later (the backlog), so that file must be there.
        if let Some(upload) = upload.filter(|_| body.publishes()) {
            let _ = upload.send(VerifiedFill { size: written, kept });
        }
        Ok((written, kept))
    }

    /// GET the blob and decide up front whether it can be stored: an announced size is reserved
    /// whole now, a body without a length batch by batch. The body, its announced size, the
    /// reservation and the write (both `None`: the fill passes the blob through).
    async fn connect(&self) -> Result<Connected, FillError> {
        let (body, total) = self.open_source().await?;
        let (reservation, writer) = match self.reserve(total) {
            Some(r) => match self.begin(total).await {
                Some(w) => (Some(r), Some(w)),
                None => (None, None),
            },
            None => (None, None),
        };
        if writer.is_none() {
            self.fill.stop_storing(0);
        }
        let upload = self.upload(&body);
        self.fill.state.send_replace(FillState::Running { total, written: 0 });
        Ok(Connected { body, total, reservation, writer, upload })
    }

    /// The blob's bytes and announced size: from the shared bucket when it has them, else from the
    /// members of the fleet ranked above this node for it (the owner first), else from the
    /// upstream.
    async fn open_source(&self) -> Result<(Body, Option<u64>), FillError> {
        if let Some(opened) = self.sink.open_copy(&self.digest).await {
            let _ = self.fill.from_shared.set(true);
            return Ok((Body::Shared(opened.reader), Some(opened.size)));
        }
        if let Via::Fleet(fleet) = &self.via {
            let ask = BlobAsk {
                upstream: self.upstream.config().name.to_string(),
                repo: self.repo.clone(),
                digest: self.digest.clone(),
                request_id: self.request_id.clone(),
            };
            if let Some((stream, total)) = FleetStream::open(fleet, &self.upstream, ask).await {
                let _ = self.fill.rate_limit.set(stream.rate_limit());
                return Ok((Body::Fleet(Box::new(stream)), total));
            }
        }
        let (head, body) = self.upstream.get_blob(&self.repo, &self.digest).await?;
        let _ = self.fill.rate_limit.set(head.rate_limit);
        Ok((Body::Upstream(body), head.size))
    }

    /// Prepare the upload to the tiers behind this node, if there are any, of what this fill
    /// stores from the upstream or the fleet: the sender that tells it the blob is verified
    /// (dropped unsent, nothing is uploaded: see [`Body::publishes`]).
    fn upload(&self, body: &Body) -> Option<oneshot::Sender<VerifiedFill>> {
        let from_shared = matches!(body, Body::Shared(_));
        let partial = self.fill.partial.get().filter(|_| !from_shared && !self.fill.passing_through())?;
        let (tx, rx) = oneshot::channel();
        self.sink.publish(&self.digest, partial.as_ref(), rx).then_some(tx)
    }

    /// How many of the bytes had so far came from members of the fleet; noted before any reader
    /// can have them, as the readers count the bytes they serve by source.
    fn note_members(&self, body: &Body) {
        if let Body::Fleet(stream) = body {
            self.fill.from_members.store(stream.from_members(), Ordering::Relaxed);
        }
    }

    /// `written` bytes are stored: tell the readers; if storing stopped, there is nothing to
    /// upload.
    fn progressed(&self, written: u64, upload: &mut Option<oneshot::Sender<VerifiedFill>>) {
        self.fill.state.send_modify(|s| {
            if let FillState::Running { written: w, .. } = s {
                *w = written;
            }
        });
        if self.fill.passing_through() {
            *upload = None;
        }
    }

    /// Begin writing the blob to the store, its partial content readable by the fill's readers;
    /// `None` if the store can't take it (the fill passes it through).
    async fn begin(&self, total: Option<u64>) -> Option<Box<dyn BlobWrite>> {
        let writer = match self.sink.begin(&self.digest, total).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "starting to store the blob failed; passing it through without storing");
                return None;
            }
        };
        let Some(partial) = writer.partial() else {
            tracing::warn!(digest = %self.digest, "the store can't be read while it writes; passing the blob through without storing");
            writer.abort().await;
            return None;
        };
        let _ = self.fill.partial.set(partial);
        Some(writer)
    }

    /// The next chunk of the body and whatever else has already arrived, up to [`WRITE_BATCH`],
    /// for a single write, with its length; `None` at the end of the body. While it waits, the
    /// fill is held to its [`Pace`].
    async fn next_batch(&self, body: &mut Body, pace: &mut Pace) -> Result<Option<(Vec<Bytes>, u64)>, FillError> {
        let transport = self.upstream.transport();
        let first = loop {
            let deadline = pace.deadline();
            tokio::select! {
                chunk = body.next(transport) => match chunk? {
                    Some(chunk) => break chunk,
                    None => return Ok(None),
                },
                // The last reader left: from now on the fill must keep its pace.
                () = self.fill.state.closed(), if self.fill.waiters() > 0 => {
                    pace.check(false, 0, Instant::now()).map_err(abandoned)?;
                }
                () = sleep_until(deadline) => {
                    pace.check(self.fill.waiters() > 0, 0, Instant::now()).map_err(abandoned)?;
                }
            }
        };
        let mut batch = vec![first];
        let mut len = batch[0].len();
        while len < WRITE_BATCH {
            match body.next(transport).now_or_never() {
                Some(Ok(Some(more))) => {
                    len += more.len();
                    batch.push(more);
                }
                Some(Ok(None)) | None => break,
                Some(Err(e)) => return Err(e),
            }
        }
        Ok(Some((batch, len as u64)))
    }

    /// Append `batch` (`len` bytes, following `written`) to the store and keep its newest bytes in
    /// memory for the readers; or, once nothing is stored (or when the write fails), relay it to
    /// the readers through memory only. `hasher` fed with it, while the batch is written.
    async fn write_or_relay(
        &self,
        writer: Option<&mut (dyn BlobWrite + 'static)>,
        written: u64,
        batch: Vec<Bytes>,
        len: u64,
        hasher: Hasher,
        reservation: Option<&mut Reservation>,
    ) -> Result<Hasher, FillError> {
        let Some(writer) = writer.filter(|_| !self.fill.passing_through()) else {
            let hasher = hash_batch(&batch, hasher).await?;
            self.fill.relay(batch, len, self.upstream.config().idle_timeout).await?;
            return Ok(hasher);
        };
        let (appended, hasher) = tokio::join!(writer.append(&batch), hash_batch(&batch, hasher));
        let hasher = hasher?;
        match appended {
            Ok(()) => {
                if let Some(r) = reservation {
                    r.wrote(len);
                }
                self.fill.keep_recent(batch, len);
            }
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "writing the blob failed; passing it through without storing");
                self.fill.stop_storing(written);
                self.fill.relay(batch, len, self.upstream.config().idle_timeout).await?;
            }
        }
        Ok(hasher)
    }

    /// The whole body arrived: it must have the size upstream announced and the digest asked for.
    /// A blob from the shared bucket that fails this is removed from it: the next request fetches
    /// it from the upstream.
    async fn verify(&self, total: Option<u64>, written: u64, hasher: Hasher) -> Result<(), FillError> {
        let source = if self.fill.from_shared() { "the bucket" } else { "upstream" };
        let checked = match total.filter(|t| *t != written) {
            Some(t) => Err(FillError::Corrupt(format!("{source} sent {written} of {t} bytes"))),
            None => match hasher.finish() {
                got if got == self.digest => Ok(()),
                got => Err(FillError::Corrupt(format!("content from {source} has digest {got}, not the requested digest"))),
            },
        };
        if let (Err(e), true) = (&checked, self.fill.from_shared()) {
            self.sink.discard_copy(&self.digest, e).await;
        }
        checked
    }

    /// Make the verified blob of `written` bytes durable and index it: whether it was stored. The
    /// content is verified: whatever happens to storing it, the readers get it.
    async fn commit(&self, writer: Box<dyn BlobWrite>, written: u64) -> bool {
        match self.sink.commit(&self.digest, writer, written).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(digest = %self.digest, error = %e, "storing the verified blob failed; served without storing");
                false
            }
        }
    }

    /// Room for the blob: its whole announced size, or nothing yet for a body without a length.
    /// `None`: it can't be stored (larger than `max_size`, or no room among the temporaries or on
    /// the disk); it is passed through to the readers.
    fn reserve(&self, total: Option<u64>) -> Option<Reservation> {
        let size = total.unwrap_or(0);
        if let Some(max) = self.sink.max_size().filter(|max| size > *max) {
            tracing::warn!(digest = %self.digest, size, max_size = max, "blob larger than max_size; passing it through without storing");
            return None;
        }
        match self.sink.reserve(size) {
            Ok(r) => Some(r),
            Err(why) => {
                tracing::warn!(digest = %self.digest, size, reason = %why, "no room to store the blob; passing it through without storing");
                None
            }
        }
    }

    /// Room for `len` more bytes of a body without a length, `written` already stored; false: the
    /// budget is spent, stop storing.
    fn grow(&self, r: &mut Reservation, written: u64, len: u64) -> bool {
        let size = written.saturating_add(len);
        if let Some(max) = self.sink.max_size().filter(|max| size > *max) {
            tracing::warn!(digest = %self.digest, size, max_size = max, "blob grew larger than max_size; passing the rest through without storing");
            return false;
        }
        match self.sink.grow(r, len) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(digest = %self.digest, size, reason = %why, "no room to store more of the blob; passing the rest through without storing");
                false
            }
        }
    }
}

/// Sleep until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Feed `batch` to `hasher` off the async threads.
async fn hash_batch(batch: &[Bytes], mut hasher: Hasher) -> Result<Hasher, FillError> {
    let batch = batch.to_vec();
    tokio::task::spawn_blocking(move || {
        for b in &batch {
            hasher.update(b);
        }
        hasher
    })
    .await
    .map_err(|e| FillError::Disk(e.to_string()))
}
