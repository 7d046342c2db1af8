"""Pull + assert: digests as the upstream holds them, and upstream request
accounting (cold: each blob crosses from the upstream once; warm: no blob
request reaches the upstream registry or the CDN)."""
from collections import Counter

from .util import wait_until


def pull_and_check(client, img, target, upstream, by_digest=False):
    before = upstream.counters()
    res = client.pull(img, by_digest)
    client.check(res, img)
    needed = client.needed_blobs(img)
    fetched = target.fetched
    cold = needed - fetched
    if not target.caches:
        cold = needed          # direct: the client itself fetches every blob, once
    # nginx logs a request when it completes; the cache may still be finishing a write
    try:
        wait_until(lambda: all(before.delta().cdn_gets(d) for d in cold), 20,
                   "CDN log to show every cold blob")
    except TimeoutError:
        pass                    # reported precisely below
    delta = before.delta()
    cdn_get = Counter(r["digest"] for r in delta.cdn if r["method"] == "GET")
    cdn_any = Counter(r["digest"] for r in delta.cdn)
    reg_blob = Counter(r["ref"] for r in delta.registry_blob)
    problems = []
    for d in sorted(cold):
        if cdn_get[d] != 1:
            problems.append(f"cold blob {d}: {cdn_get[d]} CDN GETs (want exactly 1)")
    if target.caches:
        for d in sorted(set(cdn_any) | set(reg_blob)):
            if d in cold:
                continue
            if d in fetched:
                problems.append(f"already-cached blob {d}: {reg_blob[d]} registry blob requests, "
                                f"{cdn_any[d]} CDN requests (want 0)")
            elif d in img.blobs:
                if cdn_get[d] > 1:   # fetched ahead of need (e.g. other platforms): still at most once
                    problems.append(f"blob {d} (not needed by this client) fetched {cdn_get[d]} times")
            else:
                problems.append(f"request for blob {d} that is not part of {img.repo}")
        if not cold and (delta.registry_blob or delta.cdn):
            problems.append("warm pull: blob requests reached the upstream")
    if problems:
        raise AssertionError(
            f"{client.name} pull of {res.ref} ({'warm' if not cold else f'{len(cold)} cold blobs'}):\n  "
            + "\n  ".join(problems) + "\n" + delta.summary())
    if target.caches:
        fetched |= needed
        fetched |= {d for d in img.blobs if cdn_get[d] == 1}
    return res, delta
