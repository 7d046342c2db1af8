//! How the cache answered a request: the cache's outcome, which the metrics count (the `outcome`
//! label) and the request log names, and where the bytes of the answer came from (the `source`
//! label of the bytes served).

use std::sync::Arc;

use crate::fill::Fill;

/// How the cache answered a request: the `outcome` label, and the word in the request log.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Answered {
    /// From the cache, upstream not asked (or only asked to revalidate).
    Hit,
    /// Fetched from upstream.
    Miss,
    /// Fetched from upstream by a fill another request started, which this one joined.
    Coalesced,
    /// From the cache because upstream was unavailable.
    Stale,
    /// Passed through from upstream, nothing cached.
    Pass,
}

impl Answered {
    /// The word used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Answered::Hit => "hit",
            Answered::Miss => "miss",
            Answered::Coalesced => "coalesced",
            Answered::Stale => "stale",
            Answered::Pass => "pass",
        }
    }
}

/// Where the bytes of a response's body came from: the `source` label of
/// `regcache_served_bytes_total`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ServedFrom {
    /// This node's hot tier (its disk and index).
    Hot,
    /// The shared bucket.
    Shared,
    /// Another member of the fleet (its bytes verified by this node's fill).
    Peer,
    /// The upstream registry.
    Upstream,
}

impl ServedFrom {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ServedFrom::Hot => "hot",
            ServedFrom::Shared => "bucket",
            ServedFrom::Peer => "peer",
            ServedFrom::Upstream => "upstream",
        }
    }

    /// Where a body answered with `outcome` came from when nothing more precise is known (tag
    /// lists and referrers lists): remembered here, or from the upstream.
    pub fn of(outcome: Answered) -> ServedFrom {
        match outcome {
            Answered::Hit | Answered::Stale => ServedFrom::Hot,
            Answered::Miss | Answered::Coalesced | Answered::Pass => ServedFrom::Upstream,
        }
    }
}

/// Where the bytes of a response's body come from, counted by source once they are sent.
#[derive(Clone)]
pub enum BodyFrom {
    /// One tier or the upstream.
    One(ServedFrom),
    /// A fill, read from this byte of the blob on: its bytes came from the bucket, or from
    /// members of the fleet and then the upstream ([`Fill::sources`]).
    Fill(Arc<Fill>, u64),
}

impl BodyFrom {
    /// `sent` bytes of the body, by source (each with its part of them).
    pub fn sources(&self, sent: u64) -> [(ServedFrom, u64); 2] {
        match self {
            BodyFrom::One(from) => [(*from, sent), (ServedFrom::Upstream, 0)],
            BodyFrom::Fill(fill, start) => fill.sources(*start, sent),
        }
    }
}
