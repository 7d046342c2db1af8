//! regcache's one integration-test binary: regcache in-process against the fake upstream in `support`.
//!
//! - `it::access`: who may use the mirror: htpasswd Basic credentials and an address allow list.
//! - `it::api`: the API's edges: validation, errors, ranges, tag lists, writes.
//! - `it::backlog`: what a node kept while the bucket was down reaches it when it answers again, across a restart too.
//! - `it::bucket`: the S3 bucket backend against a real SeaweedFS: parts, ranges, probe, clean-up, failures.
//! - `it::bucket_admin`: `ls`, `gc` and `verify` on the shared bucket as the real binary, against SeaweedFS.
//! - `it::budgets`: fills keep to their disk and time budgets; referrers lists count in `max_size`.
//! - `it::cli`: the `regcache` binary: configuration errors, start-up, graceful shutdown.
//! - `it::coalescing`: concurrent requests share one upstream fetch (gated, exact counts); fills never hurt each other.
//! - `it::commands`: `warm`, `ls`, `verify`, `gc`, `check-config` as the real binary, with and without a server running.
//! - `it::connections`: header, keep-alive and write-stall timeouts; `max_connections`.
//! - `it::eviction`: `max_size`: least recently used content goes, content in use stays.
//! - `it::faults`: wrong bytes, cuts, outages, timeouts, 429, token revocation and expiry: nothing bad is stored or served as good.
//! - `it::fleet`: three nodes in a fleet: one upstream fetch of a cold blob for all their clients; the owner stopped mid-stream, a member never started; the member API's secret; one upstream request per tag revalidation, an owner's answer verified, stale tags; a cold blob's HEAD.
//! - `it::freshness`: `tag_ttl`, stale-if-error within and beyond `stale_max`.
//! - `it::head`: `HEAD` on every route and error, over HTTP/2 and HTTP/1.1: headers only.
//! - `it::healthcheck`: `regcache healthcheck` as the real binary: healthy, refused, 500, no answer.
//! - `it::logs`: the request log as the real binary writes it, JSON and text: fields, request ids, no credentials.
//! - `it::mirror`: start regcache on port 0 against a fake upstream (helpers, no tests).
//! - `it::pull`: cold and warm pulls of every manifest format; what the upstream and CDN saw.
//! - `it::redirects`: redirects of a public upstream stay out of the operator's network.
//! - `it::routing`: several upstreams behind one mirror; the referrers API and its fallback.
//! - `it::shared`: mirrors sharing one bucket behind their hot tiers; a corrupt or failing bucket.
//! - `it::status`: the status page: `/status.json`'s fields, a fill shown while it runs, served where `/metrics` is, no credential in it.
//! - `it::tags`: a tag per kind of answer; upstreams without HEAD or converting on the fly.
//! - `it::trust`: manifests verified by regcache: digests, schema1 payloads, types, poisoning.
//! - `support::fake_registry`: the fake upstream (registry + CDN) and its misbehaviour switches, `Fault`.
//! - `support::images`: builders that push realistic images, lists and indexes into the fake.
//! - `support::s3`: a real S3 server (SeaweedFS) on free loopback ports, credentials checked.
//! - `support::schema1`: signed schema1 manifests as distribution 2.x makes them.
//! - `support::selftest`: the fake upstream behaves as documented.

mod it;
mod support;
