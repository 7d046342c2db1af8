//! How the cache answered a request: the cache's outcome, which the metrics count (the `outcome`
//! label) and the request log names.

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
