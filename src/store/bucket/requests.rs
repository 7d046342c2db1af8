//! What a [`super::Bucket`]'s requests report: to its observer, every request (for metrics); in
//! messages, a failed one's error on one line.

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

/// An object store error on one line.
pub(super) fn one_line(e: &dyn std::error::Error) -> String {
    // The causes too: "error sending request" alone doesn't say that the connection was refused.
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    // An S3 error body: its code and message first, the request after.
    if let Some(code) = xml_field(&text, "Code") {
        let message = xml_field(&text, "Message").unwrap_or_default();
        let request = text.split("<?xml").next().unwrap_or_default().trim_end_matches([' ', ':']);
        text = format!("{code}: {message} ({request})");
    }
    // Error bodies can be long; what matters comes first.
    match text.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// The text of the first `<tag>…</tag>` in `text`.
fn xml_field<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let len = text[start..].find(&format!("</{tag}>"))?;
    Some(&text[start..start + len])
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn s3_error_bodies_read_on_one_line() {
        let e = io::Error::other(
            "Error performing GET http://h/b?list-type=2 in 2ms - Server returned non-2xx status code: 404 Not Found: \
             <?xml version=\"1.0\"?>\n<Error><Code>NoSuchBucket</Code><Message>The specified bucket does not exist</Message></Error>",
        );
        assert_eq!(
            one_line(&e),
            "NoSuchBucket: The specified bucket does not exist (Error performing GET http://h/b?list-type=2 in 2ms - \
             Server returned non-2xx status code: 404 Not Found)"
        );
        assert_eq!(one_line(&io::Error::other("plain\n cause")), "plain cause");
    }
}
