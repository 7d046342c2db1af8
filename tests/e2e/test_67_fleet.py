"""A fleet of regcache processes (`[fleet] peers`, local storage only, each on its own port):

- 48 concurrent clients spread over three nodes pull one cold 128 MiB blob: the CDN sees one GET of
  it, and every client gets the whole blob, verified here;
- the blob's owner SIGKILLed while the other two nodes' clients stream it from the owner (the CDN
  trickling it): every one of them still gets the whole verified blob;
- a listed member that never started owns a blob: pulls through the others finish promptly and
  the blob is fetched from the upstream once;
- `/_fleet/` without the fleet's secret (401) or with a wrong one (403): an OCI error body and no
  content;
- clients of all three nodes resolving one tag once its `tag_ttl` is over: the registry's access
  log shows one manifest request for it (the tag's owner revalidating it), not one per node.

Ownership is computed here as the issue pins it: the first 8 bytes, big-endian, of
sha256(member ‖ 0x00 ‖ digest); the highest-scoring member owns."""
import hashlib
import json
import os
import threading
import time

import pytest

from e2elib.images import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, big_blob
from e2elib.net import BlobDownload
from e2elib.util import free_port, http_request, wait_until

pytestmark = pytest.mark.needs_regcache

SECRET = "e2e-fleet-" + "5" * 32


def score(member, digest):
    return int.from_bytes(hashlib.sha256(member.encode() + b"\0" + digest.encode()).digest()[:8], "big")


def ranked(members, digest):
    """`members` in their order for `digest`, the owner first."""
    return sorted(members, key=lambda m: (-score(m, digest), m))


class Fleet:
    """`n` regcache nodes listing each other (and `absent` members that never start) in `[fleet]`."""

    def __init__(self, start_regcache, workdir, name, n, absent=0, tag_ttl=None):
        secret_file = os.path.join(workdir, f"{name}.secret")
        with open(secret_file, "w") as f:
            f.write(SECRET + "\n")
        ports = [free_port() for _ in range(n + absent)]
        self.members = [f"http://127.0.0.1:{p}" for p in ports]
        peers = ", ".join(f'"{m}"' for m in self.members)
        self.nodes = {}
        for i, port in enumerate(ports[:n]):
            table = f'[fleet]\nnode = "{self.members[i]}"\npeers = [{peers}]\nsecret_file = "{secret_file}"\n'
            self.nodes[self.members[i]] = start_regcache(f"{name}-{i}", port=port, extra=table, tag_ttl=tag_ttl)

    def order(self, digest):
        return ranked(self.members, digest)


def pulls(nodes, path, per_node):
    return [BlobDownload("127.0.0.1", rc.port, path, timeout=300).start() for rc in nodes for _ in range(per_node)]


def assert_whole_and_verified(downloads, blob):
    for dl in downloads:
        dl.join(300)
        assert (dl.status, dl.error, dl.received, dl.sha256) == (200, None, blob.size, blob.digest), \
            f"a client got status {dl.status}, {dl.received} of {blob.size} bytes ({dl.error!r})"


def registry_gets(delta, digest):
    """The registry's answered GETs of `digest` (its redirects to the CDN; not the 401 challenges)."""
    return [r for r in delta.registry_blob if r["ref"] == digest and r["method"] == "GET" and r["status"] != 401]


def cdn_gets(delta, digest):
    return [r for r in delta.cdn if r["digest"] == digest and r["method"] == "GET"]


def test_48_clients_on_three_nodes_make_one_upstream_get(start_regcache, workdir, upstream, catalog):
    big = big_blob(catalog)
    fleet = Fleet(start_regcache, workdir, "fleet-48", 3)
    before = upstream.counters()
    downloads = pulls(fleet.nodes.values(), f"/v2/library/big/blobs/{big.digest}", 16)
    assert_whole_and_verified(downloads, big)
    gets = cdn_gets(before.delta(), big.digest)
    assert len(gets) == 1, f"{len(gets)} upstream GETs of the blob for the fleet: {gets}"


def test_the_owner_sigkilled_mid_stream_fails_no_pull(start_regcache, workdir, upstream, catalog):
    big = big_blob(catalog)
    fleet = Fleet(start_regcache, workdir, "fleet-kill", 3)
    owner, *others = fleet.order(big.digest)
    before = upstream.counters()
    upstream.set_cdn_slow(True)
    try:
        downloads = pulls([fleet.nodes[m] for m in others], f"/v2/library/big/blobs/{big.digest}", 8)
        wait_until(lambda: all(dl.received >= 8 << 20 for dl in downloads), 60,
                   "every client to receive 8 MiB streamed from the owner")
        # The CDN logs a request when it ends; the registry's redirect to it ends at once.
        fetches = registry_gets(before.delta(), big.digest)
        assert len(fetches) == 1, f"only the owner fetches, the others stream from it: {fetches}"
        fleet.nodes[owner].kill9()
    finally:
        upstream.set_cdn_slow(False)
    assert_whole_and_verified(downloads, big)
    # The owner's fetch, and the next member's from where its stream broke off (the third member
    # streams from the second).
    gets = cdn_gets(before.delta(), big.digest)
    assert len(gets) == 2, gets


def test_a_member_that_never_started_holds_up_no_pull(start_regcache, workdir, upstream, catalog):
    fleet = Fleet(start_regcache, workdir, "fleet-absent", 2, absent=1)
    absent = fleet.members[2]
    img = catalog["layers30"]
    blob = next(b for b in img.blobs.values() if fleet.order(b.digest)[0] == absent)
    before = upstream.counters()
    started = time.monotonic()
    downloads = pulls(fleet.nodes.values(), f"/v2/{img.repo}/blobs/{blob.digest}", 8)
    assert_whole_and_verified(downloads, blob)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"the pulls took {elapsed:.1f} s: a refused member must be skipped at once"
    gets = cdn_gets(before.delta(), blob.digest)
    assert len(gets) == 1, gets


def test_the_member_api_needs_the_secret(start_regcache, workdir, upstream, catalog):
    fleet = Fleet(start_regcache, workdir, "fleet-secret", 1)
    rc = next(iter(fleet.nodes.values()))
    blob = next(iter(catalog["alpine"].blobs.values()))
    path = f"/_fleet/v1/blobs/{blob.digest}"
    ask = {"x-regcache-upstream": "docker.io", "x-regcache-repository": "library/alpine"}
    before = upstream.counters()
    for secret, want, code in [(None, 401, "UNAUTHORIZED"), ("wrong", 403, "DENIED")]:
        headers = dict(ask, **({"x-regcache-fleet-secret": secret} if secret else {}))
        status, hdrs, body = http_request("127.0.0.1", rc.port, "GET", path, headers=headers)
        assert status == want, (status, body[:200])
        assert hdrs.get("content-type") == "application/json"
        assert json.loads(body)["errors"][0]["code"] == code
    delta = before.delta()
    assert not (delta.registry or delta.cdn), "a refused request reached the upstream"
    status, _, body = http_request("127.0.0.1", rc.port, "GET", path, headers=dict(ask, **{"x-regcache-fleet-secret": SECRET}))
    assert status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == blob.digest


def get_tag(rc, img):
    """`GET` `img`'s tag through `rc` as Docker asks for it: (status, digest, whether the body hashed
    to that digest)."""
    accept = ", ".join([MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_INDEX, MT_OCI_MANIFEST])
    status, headers, body = http_request("127.0.0.1", rc.port, "GET", f"/v2/{img.repo}/manifests/{img.tag}",
                                         headers={"accept": accept})
    digest = headers.get("docker-content-digest", "")
    return status, digest, "sha256:" + hashlib.sha256(body).hexdigest() == digest


def test_clients_of_three_nodes_revalidate_a_tag_with_one_upstream_request(start_regcache, workdir, upstream, catalog):
    ttl = 4
    img = catalog["alpine"]
    fleet = Fleet(start_regcache, workdir, "fleet-tag", 3, tag_ttl=f"{ttl}s")
    nodes = list(fleet.nodes.values())
    for rc in nodes:
        assert get_tag(rc, img) == (200, img.digest, True)
    # Every node's answer, and the owner's, is now older than tag_ttl: each must be revalidated.
    # (The time passing is the condition waited for.)
    time.sleep(ttl + 1)
    before = upstream.counters()
    results = []
    clients = [threading.Thread(target=lambda rc=rc: results.append(get_tag(rc, img))) for rc in nodes for _ in range(4)]
    for c in clients:
        c.start()
    for c in clients:
        c.join(60)
    assert results == [(200, img.digest, True)] * len(clients), results
    delta = before.delta()
    asked = [r for r in delta.registry_manifest if r["repo"] == img.repo and r["ref"] == img.tag and r["status"] != 401]
    assert len(asked) == 1, f"one upstream request for the tag, the owner's: {delta.summary()}"
