//! A fill's bytes from the fleet: the members ranked above this node for the blob, in order, then
//! the upstream. A member that is down, refuses, or whose stream breaks after N bytes is marked
//! down and the next is asked from byte N (`Range: bytes=N-`); when no member is left the upstream
//! is asked from byte N. The fill hashes every byte whatever its source, so a member is trusted no
//! more than an upstream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::member::MemberId;
use super::peer::{BlobAsk, PeerError};
use super::{Fleet, FleetOutcome};
use crate::upstream::{Upstream, UpstreamError};

/// Where the bytes come from now.
enum Current {
    /// A member's answer.
    Member(MemberId, Incoming),
    /// The upstream's, whose first `skip` bytes were had already (it ignored the range).
    Upstream { body: Incoming, skip: u64 },
    /// Nothing: the last source broke off.
    None,
}

/// A blob streamed from members, failing over to the next member, then to the upstream.
pub struct FleetStream {
    fleet: Arc<Fleet>,
    upstream: Arc<Upstream>,
    ask: BlobAsk,
    /// The members still to ask, in order.
    left: VecDeque<MemberId>,
    current: Current,
    /// Bytes handed to the fill so far.
    pos: u64,
    /// The blob's size, as the first source announced it.
    total: Option<u64>,
}

impl FleetStream {
    /// Ask the members ranked above this node for `ask`, in order: the stream of the first that
    /// answers, with the size it announced; `None` when none does (or this node owns the blob):
    /// the fill then asks the upstream as without a fleet.
    pub async fn open(fleet: &Arc<Fleet>, upstream: &Arc<Upstream>, ask: BlobAsk) -> Option<(FleetStream, Option<u64>)> {
        let left: VecDeque<MemberId> = fleet.members().sources(&ask.digest.to_string(), Instant::now()).into();
        if left.is_empty() {
            return None;
        }
        let mut stream = FleetStream { fleet: fleet.clone(), upstream: upstream.clone(), ask, left, current: Current::None, pos: 0, total: None };
        match stream.next_member().await {
            Ok(true) => {
                let total = stream.total;
                Some((stream, total))
            }
            // No member answered, or one answered about the blob itself (e.g. 404): the upstream
            // is asked from the start, as without a fleet.
            Ok(false) | Err(_) => {
                fleet.count(FleetOutcome::FellBackUpstream);
                None
            }
        }
    }

    /// The next chunk; `None` at the end. Cancel-safe (a fill polls it with `now_or_never`): a
    /// member is taken off the list only once its answer is in, and a source only replaced
    /// once the next has answered.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, UpstreamError> {
        loop {
            if matches!(self.current, Current::None) && !self.next_member().await.unwrap_or(false) {
                self.upstream_from_here().await?;
            }
            match self.read().await {
                Ok(Some(chunk)) => {
                    self.pos += chunk.len() as u64;
                    return Ok(Some(chunk));
                }
                Ok(None) => return Ok(None),
                Err(Broke::Upstream(e)) => return Err(e),
                Err(Broke::Member(member, why)) => {
                    tracing::warn!(%member, digest = %self.ask.digest, at = self.pos, error = %why, "a member's stream broke off; asking the next");
                    self.fleet.members().failed(&member, Instant::now());
                    self.fleet.count(FleetOutcome::OwnerDown);
                    self.current = Current::None;
                }
            }
        }
    }

    /// The next chunk of the current source.
    async fn read(&mut self) -> Result<Option<Bytes>, Broke> {
        let idle = self.upstream.config().idle_timeout;
        match &mut self.current {
            Current::Member(member, body) => match next_frame(body, idle).await {
                Ok(Some(chunk)) => Ok(Some(chunk)),
                // A member's answer ends early only when it broke off.
                Ok(None) if self.total.is_some_and(|t| self.pos < t) => Err(Broke::Member(member.clone(), "ended early".into())),
                Ok(None) => Ok(None),
                Err(why) => Err(Broke::Member(member.clone(), why)),
            },
            Current::Upstream { body, skip } => loop {
                let Some(mut chunk) = self.upstream.transport().next_chunk(body).await.map_err(Broke::Upstream)? else {
                    return Ok(None);
                };
                let dropped = (*skip).min(chunk.len() as u64);
                *skip -= dropped;
                // `dropped` is at most the chunk's length.
                let _ = chunk.split_to(dropped as usize);
                if !chunk.is_empty() {
                    return Ok(Some(chunk));
                }
            },
            Current::None => Err(Broke::Upstream(UpstreamError::Protocol("no source left".into()))),
        }
    }

    /// Ask the next members from `pos` until one answers: whether one did; `Err` when one
    /// answered about the blob itself.
    async fn next_member(&mut self) -> Result<bool, PeerError> {
        let header_timeout = self.upstream.config().response_timeout.saturating_add(super::peer::CONNECT_TIMEOUT);
        while let Some(member) = self.left.front().cloned() {
            if !self.fleet.members().is_up(&member, Instant::now()) {
                self.left.pop_front();
                continue;
            }
            let answer = self.fleet.client().get(&member, &self.ask, self.pos, header_timeout).await;
            self.left.pop_front();
            match answer {
                Ok(blob) => {
                    if self.total.is_some() && blob.total.is_some() && blob.total != self.total {
                        tracing::warn!(%member, digest = %self.ask.digest, "a member announced another size; asking the next");
                        continue;
                    }
                    self.fleet.members().answered(&member);
                    self.fleet.count(if blob.stored { FleetOutcome::PeerHit } else { FleetOutcome::PeerFill });
                    self.total = self.total.or(blob.total);
                    tracing::debug!(%member, digest = %self.ask.digest, from = self.pos, "streaming the blob from a member");
                    self.current = Current::Member(member, blob.body);
                    return Ok(true);
                }
                Err(PeerError::Answered(status)) => {
                    tracing::debug!(%member, digest = %self.ask.digest, %status, "a member answered about the blob; asking the upstream");
                    self.fleet.members().answered(&member);
                    return Err(PeerError::Answered(status));
                }
                Err(PeerError::Down(why)) => {
                    tracing::warn!(%member, digest = %self.ask.digest, error = %why, "a member did not answer; it is taken for down for a while");
                    self.fleet.members().failed(&member, Instant::now());
                    self.fleet.count(FleetOutcome::OwnerDown);
                }
            }
        }
        Ok(false)
    }

    /// No member is left: ask the upstream from `pos`.
    async fn upstream_from_here(&mut self) -> Result<(), UpstreamError> {
        tracing::info!(digest = %self.ask.digest, from = self.pos, "no member can stream the blob; asking the upstream");
        self.fleet.count(FleetOutcome::FellBackUpstream);
        let (head, start, body) = self.upstream.get_blob_from(&self.ask.repo, &self.ask.digest, self.pos).await?;
        if self.total.is_some() && head.size.is_some() && head.size != self.total {
            return Err(UpstreamError::Protocol("the upstream announced another size than the member".into()));
        }
        if start > self.pos {
            return Err(UpstreamError::Protocol(format!("the upstream answered from byte {start}, not {}", self.pos)));
        }
        self.current = Current::Upstream { body, skip: self.pos - start };
        Ok(())
    }
}

/// Why the current source gave no chunk.
enum Broke {
    /// A member's stream broke off: ask the next.
    Member(MemberId, String),
    /// The upstream failed: the fill fails.
    Upstream(UpstreamError),
}

/// The next data of a member's body, within `idle`.
async fn next_frame(body: &mut Incoming, idle: Duration) -> Result<Option<Bytes>, String> {
    loop {
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return Err(format!("idle for {idle:?}")),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

/// The size of `ask`'s blob for a `HEAD` this node can't answer itself: from the members ranked
/// above this node for the blob, in order (the owner answers from its store, its fill, or its own
/// upstream `HEAD`); `None` when none answers or this node owns the blob (the caller asks the
/// upstream). A member that fails to answer is taken for down; one that answered about the blob
/// (e.g. 404) leaves the answer to the upstream. Only a size is taken from a member, as from an
/// upstream's `HEAD`: its bytes are verified when they are fetched.
pub async fn head(fleet: &Fleet, upstream: &Upstream, ask: &BlobAsk) -> Option<u64> {
    let header_timeout = upstream.config().response_timeout.saturating_add(super::peer::CONNECT_TIMEOUT);
    for member in fleet.members().sources(&ask.digest.to_string(), Instant::now()) {
        match fleet.client().head(&member, ask, header_timeout).await {
            Ok(size) => {
                fleet.members().answered(&member);
                return Some(size);
            }
            Err(PeerError::Answered(status)) => {
                tracing::debug!(%member, digest = %ask.digest, %status, "a member answered about the blob; asking the upstream");
                fleet.members().answered(&member);
                return None;
            }
            Err(PeerError::Down(why)) => {
                tracing::warn!(%member, digest = %ask.digest, error = %why, "a member did not answer; it is taken for down for a while");
                fleet.members().failed(&member, Instant::now());
                fleet.count(FleetOutcome::OwnerDown);
            }
        }
    }
    None
}
