//! Why a fill failed, and who is to blame.

use crate::upstream::UpstreamError;

/// Why a fill failed. A fill that died without a result (it panicked or its task was cancelled)
/// fails with `Upstream(UpstreamError::Interrupted(_))`, like any coalesced call.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FillError {
    /// The upstream refused or failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The bytes were wrong: digest or size mismatch.
    #[error("{0}")]
    Corrupt(String),
    /// The local disk failed.
    #[error("storing the blob failed: {0}")]
    Disk(String),
    /// The shared bucket failed while the blob was read from it.
    #[error("reading the blob from the bucket failed: {0}")]
    Shared(String),
}

impl FillError {
    /// Whether the upstream refused this fill's repository (404, 401, 403): an answer about that
    /// repository, which says nothing about the same blob in another repository.
    pub fn is_refusal(&self) -> bool {
        matches!(self, FillError::Upstream(UpstreamError::Status { status, .. }) if matches!(status.as_u16(), 401 | 403 | 404))
    }

    /// Who is to blame: as the upstream error says, the upstream for wrong bytes, regcache for
    /// its disk.
    pub fn blame(&self) -> crate::oci::Blame {
        use crate::oci::Blame;
        match self {
            FillError::Upstream(u) => u.blame(),
            FillError::Corrupt(_) => Blame::Upstream,
            FillError::Disk(_) | FillError::Shared(_) => Blame::Internal,
        }
    }
}
