//! regcache's one integration-test binary: regcache in-process against the fake upstream in `support`.
//!
//! - `it::mirror`: start regcache on port 0 against a fake upstream.
//! - `it::pull`: cold and warm pulls of every manifest format; what the upstream and CDN saw.
//! - `it::faults`: wrong bytes, cuts, outages, timeouts, 429: nothing bad is stored or served as good.
//! - `it::api`: the API's edges: validation, errors, ranges, tag lists, writes.
//! - `it::coalescing`: concurrent requests share one upstream fetch.
//! - `it::trust`: manifests verified by regcache: digests, schema1 payloads, types, poisoning.
//! - `it::tags`: a tag per kind of answer; upstreams without HEAD or converting on the fly.
//! - `it::redirects`: redirects of a public upstream stay out of the operator's network.
//! - `it::head`: `HEAD` on every route and error, over HTTP/2 and HTTP/1.1: headers only.
//! - `it::budgets`: fills keep to their disk and time budgets; referrers lists count in `max_size`.

mod it;
mod support;
