//! What a [`super::Bucket`] tells its observer of every request (for metrics).

use std::fmt;
use std::sync::Arc;

/// A bucket request, as the [`Observer`] hears of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Which operation.
    pub op: Op,
    /// How it ended.
    pub outcome: Outcome,
    /// Bytes sent (puts, parts) or asked for (ranged gets).
    pub bytes: u64,
}

/// A kind of bucket request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// A single PUT.
    Put,
    /// Starting a multipart upload.
    CreateUpload,
    /// One part of a multipart upload.
    PutPart,
    /// Completing a multipart upload.
    CompleteUpload,
    /// Aborting a multipart upload.
    AbortUpload,
    /// A (ranged) GET.
    Get,
    /// A HEAD.
    Head,
    /// Listing keys.
    List,
    /// A DELETE.
    Delete,
}

impl Op {
    /// Its name, for metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Put => "put",
            Op::CreateUpload => "create_upload",
            Op::PutPart => "put_part",
            Op::CompleteUpload => "complete_upload",
            Op::AbortUpload => "abort_upload",
            Op::Get => "get",
            Op::Head => "head",
            Op::List => "list",
            Op::Delete => "delete",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a bucket request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Ok,
    /// The object (or upload) wasn't there.
    NotFound,
    /// It failed.
    Failed,
}

impl Outcome {
    /// Its name, for metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::NotFound => "not_found",
            Outcome::Failed => "failed",
        }
    }
}

/// Told of every bucket request (for metrics).
pub type Observer = Arc<dyn Fn(&Request) + Send + Sync>;
