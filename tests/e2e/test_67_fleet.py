"""A fleet of regcache processes (`[fleet] peers`, each on its own port), with local storage only
and with one SeaweedFS bucket shared by the three nodes (`[storage] backend = "s3"`, one prefix):

- 48 concurrent clients spread over three nodes pull one cold 256 MiB blob: the upstream sees one
  GET of it (registry and CDN), every client gets the whole blob, verified here; with the bucket,
  the blob ends up in it once (one upload among the nodes, one object hashing to its key);
- the blob's owner SIGKILLed while the other two nodes' clients stream it from the owner (the CDN
  trickling it): every one of them still gets the whole verified blob; with the bucket, the member
  that finished the blob from the upstream uploads it, once;
- skopeo pulls the cold 30-layer image through each of the three nodes at once: one upstream GET
  per blob;
- a listed member that never started owns a blob: pulls through the others finish promptly and
  the blob is fetched from the upstream once;
- `/_fleet/` without the fleet's secret (401) or with a wrong one (403): an OCI error body and no
  content;
- clients of all three nodes resolving one tag once its `tag_ttl` is over: the registry's access
  log shows one manifest request for it (the tag's owner revalidating it), not one per node.

Ownership is computed here as the issue pins it: the first 8 bytes, big-endian, of
sha256(member ‖ 0x00 ‖ digest); the highest-scoring member owns."""
import hashlib
import itertools
import json
import os
import shutil
import threading
import time

import pytest

from e2elib.images import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, fleet_blob
from e2elib.clients import Mirror, SkopeoClient
from e2elib.net import BlobDownload
from e2elib.util import free_port, http_request, wait_until

pytestmark = pytest.mark.needs_regcache

SECRET = "e2e-fleet-" + "5" * 32
BUCKET = "regcache"
UPLOADS = "regcache_bucket_operations_total"
UPLOADING = "regcache_bucket_uploads_in_progress"
PREFIXES = itertools.count(1)      # a key prefix of its own for each fleet on the bucket


def score(member, digest):
    return int.from_bytes(hashlib.sha256(member.encode() + b"\0" + digest.encode()).digest()[:8], "big")


def ranked(members, digest):
    """`members` in their order for `digest`, the owner first."""
    return sorted(members, key=lambda m: (-score(m, digest), m))


class SharedBucket:
    """One prefix of the session's SeaweedFS bucket, shared by every node of a fleet."""

    def __init__(self, weed, prefix):
        self.weed, self.prefix = weed, prefix
        self.toml = weed.storage_toml(BUCKET, weed.secret_file(), prefix=prefix)

    def blobs(self):
        """{key: size} of every blob object under the prefix, listed through the filer."""
        return self.weed.list_objects(BUCKET, f"{self.prefix}/blobs")


@pytest.fixture(params=["local", "bucket"])
def storage(request):
    """`None` (local storage only) or a SharedBucket on a prefix of the test's own."""
    if request.param == "local":
        return None
    return SharedBucket(request.getfixturevalue("seaweedfs"), f"fleet67-{next(PREFIXES)}")


class Fleet:
    """`n` regcache nodes listing each other (and `absent` members that never start) in `[fleet]`,
    with `bucket` (a SharedBucket) as their `[storage]` if given."""

    def __init__(self, start_regcache, workdir, name, n, absent=0, bucket=None, tag_ttl=None):
        secret_file = os.path.join(workdir, f"{name}.secret")
        with open(secret_file, "w") as f:
            f.write(SECRET + "\n")
        ports = [free_port() for _ in range(n + absent)]
        self.members = [f"http://127.0.0.1:{p}" for p in ports]
        peers = ", ".join(f'"{m}"' for m in self.members)
        self.nodes = {}
        for i, port in enumerate(ports[:n]):
            table = f'[fleet]\nnode = "{self.members[i]}"\npeers = [{peers}]\nsecret_file = "{secret_file}"\n'
            self.nodes[self.members[i]] = start_regcache(f"{name}-{i}", port=port, extra=table,
                                                         storage=bucket.toml if bucket else None, tag_ttl=tag_ttl)

    def order(self, digest):
        return ranked(self.members, digest)

    def close(self):
        """Stop every node and remove its data dir (each holds the 256 MiB blob; the logs stay)."""
        for rc in self.nodes.values():
            rc.stop()
            shutil.rmtree(rc.data_dir, ignore_errors=True)


@pytest.fixture
def make_fleet(start_regcache, workdir):
    """Fleet(name, n, absent=0, bucket=None) for this test, closed when it ends."""
    made = []

    def make(name, n, **options):
        made.append(Fleet(start_regcache, workdir, name, n, **options))
        return made[-1]
    yield make
    for fleet in made:
        fleet.close()


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


def settled_cdn_gets(before, digests, at_least=1):
    """{digest: CDN GETs since `before`} once the CDN has logged `at_least` GETs of each (nginx logs
    a request when it ends, which may be after the last client had its last byte)."""
    try:
        wait_until(lambda: all(len(cdn_gets(before.delta(), d)) >= at_least for d in digests), 20,
                   "the CDN log to show the blobs' GETs")
    except TimeoutError:
        pass                    # reported precisely by the caller's assertion
    delta = before.delta()
    return {d: cdn_gets(delta, d) for d in digests}


def assert_in_bucket_once(bucket, nodes, blob):
    """Once every node has committed `blob` to its hot tier (so each fill has either handed the blob
    to an upload or not) and no upload runs: one upload among `nodes`, none failed, and the bucket
    holds the one object, whose bytes hash to its key."""
    hexd = blob.digest.split(":")[1]
    wait_until(lambda: all(f"{hexd[:2]}/{hexd}" in rc.blob_files() for rc in nodes), 60,
               "every node to keep the blob in its hot tier", interval=0.2)
    state = {}

    def settled():
        samples = [rc.metrics() for rc in nodes]
        state.update(running=sum(rc.metric(UPLOADING, s) for rc, s in zip(nodes, samples)),
                     ok=sum(rc.metric(UPLOADS, s, op="upload", result="ok") for rc, s in zip(nodes, samples)),
                     failed=sum(rc.metric(UPLOADS, s, op="upload", result="error") for rc, s in zip(nodes, samples)))
        return state["running"] == 0 and state["ok"] + state["failed"] >= 1
    try:
        wait_until(settled, 60, "an upload of the blob to end", interval=0.2)
    except TimeoutError as e:
        raise AssertionError(f"{e}: {state}") from None
    assert (state["ok"], state["failed"]) == (1, 0), f"uploads of the blob among the nodes: {state}"
    key = f"{bucket.prefix}/blobs/sha256/{hexd[:2]}/{hexd}"
    assert bucket.blobs() == {key: blob.size}, f"blob objects in the bucket: {bucket.blobs()}"
    assert bucket.weed.object_sha256(BUCKET, key) == (hexd, blob.size)


def test_48_clients_on_three_nodes_make_one_upstream_get(make_fleet, upstream, catalog, storage):
    blob = fleet_blob(catalog)
    fleet = make_fleet(f"fleet-48-{'bucket' if storage else 'local'}", 3, bucket=storage)
    before = upstream.counters()
    downloads = pulls(fleet.nodes.values(), f"/v2/library/fleet/blobs/{blob.digest}", 16)
    assert_whole_and_verified(downloads, blob)
    gets = settled_cdn_gets(before, [blob.digest])[blob.digest]
    assert len(gets) == 1, f"{len(gets)} CDN GETs of the blob for the fleet: {gets}"
    fetches = registry_gets(before.delta(), blob.digest)
    assert len(fetches) == 1, f"{len(fetches)} registry GETs of the blob for the fleet: {fetches}"
    if storage:
        assert_in_bucket_once(storage, list(fleet.nodes.values()), blob)


def test_the_owner_sigkilled_mid_stream_fails_no_pull(make_fleet, upstream, catalog, storage):
    blob = fleet_blob(catalog)
    fleet = make_fleet(f"fleet-kill-{'bucket' if storage else 'local'}", 3, bucket=storage)
    owner, *others = fleet.order(blob.digest)
    before = upstream.counters()
    upstream.set_cdn_slow(True)
    try:
        downloads = pulls([fleet.nodes[m] for m in others], f"/v2/library/fleet/blobs/{blob.digest}", 8)
        wait_until(lambda: all(dl.received >= 8 << 20 for dl in downloads), 60,
                   "every client to receive 8 MiB streamed from the owner")
        # The CDN logs a request when it ends; the registry's redirect to it ends at once.
        fetches = registry_gets(before.delta(), blob.digest)
        assert len(fetches) == 1, f"only the owner fetches, the others stream from it: {fetches}"
        fleet.nodes[owner].kill9()
    finally:
        upstream.set_cdn_slow(False)
    assert_whole_and_verified(downloads, blob)
    # The owner's fetch, and the next member's from where its stream broke off (the third member
    # streams from the second).
    gets = settled_cdn_gets(before, [blob.digest], at_least=2)[blob.digest]
    assert len(gets) == 2, gets
    if storage:
        assert_in_bucket_once(storage, [fleet.nodes[m] for m in others], blob)


def test_skopeo_through_each_node_at_once_makes_one_upstream_get_per_blob(make_fleet, workdir, upstream,
                                                                           catalog, pki):
    img = catalog["layers30"]
    fleet = make_fleet("fleet-skopeo", 3)
    clients = [SkopeoClient(workdir, Mirror(rc.name, "127.0.0.1", rc.port, "http"), pki) for rc in fleet.nodes.values()]
    before = upstream.counters()
    results = [None] * len(clients)

    def pull(i):
        results[i] = clients[i].pull(img)
    threads = [threading.Thread(target=pull, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for client, res in zip(clients, results):
        client.check(res, img)
        assert set(img.blobs) <= res.detail["blobs"], f"{client.mirror.name}: {res.detail}"
    gets = settled_cdn_gets(before, img.blobs)
    wrong = {d: len(g) for d, g in gets.items() if len(g) != 1}
    assert not wrong, f"CDN GETs per blob (want 1 each, {len(img.blobs)} blobs): {wrong}\n{before.delta().summary()}"
    delta = before.delta()
    wrong = {d: len(registry_gets(delta, d)) for d in img.blobs if len(registry_gets(delta, d)) != 1}
    assert not wrong, f"registry GETs per blob (want 1 each): {wrong}\n{delta.summary()}"


def test_a_member_that_never_started_holds_up_no_pull(make_fleet, upstream, catalog):
    fleet = make_fleet("fleet-absent", 2, absent=1)
    absent = fleet.members[2]
    img = catalog["layers30"]
    blob = next(b for b in img.blobs.values() if fleet.order(b.digest)[0] == absent)
    before = upstream.counters()
    started = time.monotonic()
    downloads = pulls(fleet.nodes.values(), f"/v2/{img.repo}/blobs/{blob.digest}", 8)
    assert_whole_and_verified(downloads, blob)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"the pulls took {elapsed:.1f} s: a refused member must be skipped at once"
    gets = settled_cdn_gets(before, [blob.digest])[blob.digest]
    assert len(gets) == 1, gets


def test_the_member_api_needs_the_secret(make_fleet, upstream, catalog):
    fleet = make_fleet("fleet-secret", 1)
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
