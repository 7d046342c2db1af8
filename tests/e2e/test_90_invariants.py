"""Whole-run invariants, checked after every pull above."""
import pytest

from e2elib import upstream as U

PROBE_UA = "regcache-e2e-probe"     # test_00's deliberate Authorization probe


def test_cdn_never_saw_authorization(upstream):
    reqs = [r for r in U.cdn_requests(upstream.cdn_access_log) if r.get("ua") != PROBE_UA]
    blob_gets = [r for r in reqs if r["digest"] and r["method"] == "GET"]
    assert blob_gets, "the CDN served no blob at all: redirects were never followed"
    with_auth = [r for r in reqs if r["auth"] != "0"]
    rejected = [r for r in reqs if r["status"] == 400]
    assert not with_auth and not rejected, (
        f"{len(with_auth)} CDN requests carried Authorization, {len(rejected)} got 400:\n"
        + "\n".join(str(r) for r in (with_auth + rejected)[:20]))


@pytest.mark.needs_regcache
def test_regcache_blob_store_verifies(target, catalog):
    """Every file under data_dir/blobs/sha256/ hashes to its name, and everything the
    clients pulled is there."""
    digests, bad = target.regcache.verify_blob_store()
    assert not bad, "\n".join(bad)
    missing = target.fetched - digests
    assert not missing, f"blobs pulled through regcache but not in its store: {sorted(missing)}"
