//! The `Range` request header: one `bytes=` range, or nothing.

use crate::cache::RangeRequest;

/// The single byte range asked for. Anything else — several ranges, other units, garbage — is
/// ignored, as RFC 9110 allows, and the whole blob is served.
pub fn parse_range(value: &str) -> Option<RangeRequest> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, false) => Some(RangeRequest::Suffix(num(b)?)),
        (false, true) => Some(RangeRequest::From(num(a)?, None)),
        (false, false) => {
            let (start, end) = (num(a)?, num(b)?);
            (start <= end).then_some(RangeRequest::From(start, Some(end)))
        }
        (true, true) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        let cases = [
            ("bytes=0-99", Some(RangeRequest::From(0, Some(99)))),
            ("bytes=100-", Some(RangeRequest::From(100, None))),
            ("bytes=-500", Some(RangeRequest::Suffix(500))),
            (" bytes= 5 - 9 ", Some(RangeRequest::From(5, Some(9)))),
            ("bytes=9-5", None),
            ("bytes=0-1,4-5", None),
            ("bytes=-", None),
            ("bytes=a-b", None),
            ("bytes=+1-2", None),
            ("items=0-1", None),
            ("", None),
            ("bytes=99999999999999999999999-", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_range(input), want, "{input:?}");
        }
    }
}
