"""regcache nodes on one S3 bucket (`[storage] backend = "s3"`, a real SeaweedFS); each node's
data_dir is its hot tier.

- every client pulls through a node: cold, warm, and (last in this module) with the upstream
  stopped, from the node's hot tier and from a new node that has only the bucket;
- a second node with an empty hot tier pulls what the first one fetched without a single request
  to the upstream (registry, token server, CDN);
- a node SIGKILLed in the middle of a blob's upload: the bucket holds only objects whose bytes
  hash to their key, and the restarted node aborts the multipart upload it left behind;
- the bucket server SIGKILLed in the middle of an upload: the client still gets the verified blob;
- the bucket server gone: the hot tier still serves, a new image comes from the upstream, and
  `regcache_bucket_down` is 1.

The bucket is listed and read through SeaweedFS's filer HTTP API (`/buckets/<bucket>/...`, JSON
listings), independently of regcache and of S3.
"""
import glob
import hashlib
import os
import re

import pytest

from conftest import Target
from e2elib.checks import pull_and_check
from e2elib.clients import Mirror
from e2elib.images import big_blob
from e2elib.net import BlobDownload, SlowPort
from e2elib.util import wait_until

pytestmark = pytest.mark.needs_regcache

BUCKET = "regcache"
UPLOADING = "regcache_bucket_uploads_in_progress"
OPS = "regcache_bucket_operations_total"
S3_REQUESTS = "regcache_bucket_requests_total"
DOWN = "regcache_bucket_down"
ABORTED_AT_START = "aborted the bucket uploads a previous run left unfinished"


class Node:
    """A regcache node on `prefix` of the bucket in `weed`, with its clients; `rc.fetched` is the
    model of the blobs it fetched from the upstream (and so uploaded)."""

    def __init__(self, start_regcache, make_clients, weed, name, prefix, endpoint=None):
        self.weed, self.prefix = weed, prefix
        storage = weed.storage_toml(BUCKET, weed.secret_file(), prefix=prefix, endpoint=endpoint)
        self.rc = start_regcache(name, storage=storage, tag_ttl="10m")
        self.mirror = Mirror(name, "127.0.0.1", self.rc.port, "http")
        self.target = Target(self.mirror, self.rc)
        self.clients = make_clients(self.mirror)

    def objects(self, under=""):
        """{key below the prefix: size} in the bucket."""
        start = len(self.prefix) + 1
        return {k[start:]: n for k, n in self.weed.list_objects(BUCKET, f"{self.prefix}/{under}").items()}

    def big_blob_path(self, big):
        return f"/v2/library/big/blobs/{big.digest}"

    def upload_records(self):
        return glob.glob(os.path.join(self.rc.data_dir, "uploads", "*.upload"))


def assert_true_bytes(dl, blob):
    """What the client got is the blob, or a cut-off beginning of it: never other bytes."""
    h, left = hashlib.sha256(), dl.received
    with open(blob.path, "rb") as f:
        while left:
            chunk = f.read(min(left, 4 << 20))
            assert chunk, f"the client got {dl.received} bytes, more than the blob's {blob.size}"
            h.update(chunk)
            left -= len(chunk)
    assert dl.sha256 == "sha256:" + h.hexdigest(), (
        f"the client's {dl.received} bytes (status {dl.status}, error {dl.error!r}) are not "
        f"{'the blob' if dl.received == blob.size else 'a beginning of the blob'}")


def verify_bucket_blobs(weed, prefix):
    """Re-hash every object under <prefix>/blobs/ as the filer serves it: (digests, problems)."""
    digests, bad = set(), []
    for key, size in sorted(weed.list_objects(BUCKET, f"{prefix}/blobs").items()):
        m = re.fullmatch(re.escape(prefix) + r"/blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})", key)
        if not m or not m[2].startswith(m[1]):
            bad.append(f"unexpected object {key}")
            continue
        got, n = weed.object_sha256(BUCKET, key)
        if got != m[2] or n != size:
            bad.append(f"{key}: {n} bytes (listed {size}) hashing to {got}")
        digests.add("sha256:" + m[2])
    return digests, bad


def bucket_records(img, delta):
    """The records a node writes for what it fetched in `delta`: a manifest record per manifest
    GET the upstream answered (by digest, or by tag: the image's digest), and a tag record (of
    some kind: `*`) when it fetched the manifest by tag."""
    out = set()
    for r in delta.registry_manifest:
        if r["method"] == "GET" and r["status"] == 200:
            by_tag = not r["ref"].startswith("sha256:")
            digest = img.digest if by_tag else r["ref"]
            out.add(f"manifests/sha256/{digest.split(':')[1]}")
            if by_tag:
                out.add(f"tags/docker.io/{img.repo}/{img.tag}/*")
    return out


def wait_for_bucket_writes(node, img=None, delta=None):
    """Wait (deadline, no fixed sleep) until `node` has uploaded every blob it fetched from the
    upstream (none still running, one completed upload each, no failure) and the bucket holds the
    manifest and tag records of `img` that the pull in `delta` made."""
    records = bucket_records(img, delta) if delta else set()
    state = {}

    def done():
        s = node.rc.metrics()
        state.update(running=node.rc.metric(UPLOADING, s),
                     uploaded=node.rc.metric(OPS, s, op="upload", result="ok"),
                     failed=node.rc.metric(OPS, s, result="error"),
                     records=node.rc.metric(OPS, s, op="put_record", result="ok"))
        assert state["failed"] == 0, f"{node.rc.name}: bucket operations failed: {state}"
        listed = set(node.objects())
        listed |= {k.rsplit("/", 1)[0] + "/*" for k in listed if k.startswith("tags/")}
        state["missing"] = sorted(records - listed)
        return (state["running"] == 0 and state["uploaded"] == len(node.rc.fetched)
                and not state["missing"])
    try:
        wait_until(done, 30, f"{node.rc.name} to upload {len(node.rc.fetched)} blobs and {len(records)} records",
                   interval=0.2)
    except TimeoutError as e:
        raise AssertionError(f"{e}: {state}\n{node.rc.proc.log_tail(20)}") from None


@pytest.fixture(scope="module")
def node_a(start_regcache, make_clients, seaweedfs):
    return Node(start_regcache, make_clients, seaweedfs, "s3-node-a", "fleet-matrix")


# --------------------------------------------------------------- 1. every client, cold then warm

MATRIX = [
    ("alpine", ["docker", "containerd", "skopeo"]),
    ("multiarch", ["skopeo", "docker", "containerd"]),      # skopeo --all: every platform cold
    ("buildx", ["containerd", "skopeo", "docker"]),         # then skopeo --all needs the rest
]


@pytest.mark.parametrize("image,client", [
    pytest.param(img, cl, id=f"{img}-{cl}-{'cold' if i == 0 else 'warm'}")
    for img, order in MATRIX for i, cl in enumerate(order)])
def test_pull_through_an_s3_node(image, client, node_a, upstream, catalog):
    img = catalog[image]
    _, delta = pull_and_check(node_a.clients[client], img, node_a.target, upstream)
    wait_for_bucket_writes(node_a, img, delta)
    digests, bad = verify_bucket_blobs(node_a.weed, node_a.prefix)
    assert not bad, "\n".join(bad)
    assert node_a.rc.fetched <= digests, f"not in the bucket: {sorted(node_a.rc.fetched - digests)}"


# --------------------------------------------------------------- 2. a second node: the bucket only

FLEET = [("docker", "alpine"), ("containerd", "buildx"), ("skopeo", "multiarch")]


@pytest.mark.parametrize("client,image", [pytest.param(c, i, id=f"{c}-{i}") for c, i in FLEET])
def test_a_second_node_pulls_from_the_bucket_alone(client, image, start_regcache, make_clients,
                                                   seaweedfs, upstream, catalog):
    img = catalog[image]
    prefix = f"fleet-{client}"
    a = Node(start_regcache, make_clients, seaweedfs, f"s3-{client}-a", prefix)
    _, delta = pull_and_check(a.clients[client], img, a.target, upstream)
    wait_for_bucket_writes(a, img, delta)

    b = Node(start_regcache, make_clients, seaweedfs, f"s3-{client}-b", prefix)
    assert not b.rc.blob_files(), "node B's hot tier is not empty"
    before = upstream.counters()
    c = b.clients[client]
    c.check(c.pull(img), img)
    delta = before.delta()
    assert not (delta.registry or delta.cdn or delta.tokens), (
        f"node B asked the upstream ({len(delta.registry)} registry, {len(delta.cdn)} CDN, "
        f"{len(delta.tokens)} token requests):\n{delta.summary()}")
    needed = c.needed_blobs(img)
    got = b.rc.metric(OPS, op="get", result="ok")
    assert got == len(needed), f"node B read {got} blobs from the bucket, the client needed {len(needed)}"
    digests, bad = b.rc.verify_blob_store()
    assert not bad and needed <= digests, f"node B's hot tier: {bad} missing {sorted(needed - digests)}"


# --------------------------------------------------------------- 4. a node SIGKILLed mid-upload

def big_upload_under_way(node, big):
    """A client GETs the big blob through `node` (whole: the node uploads a blob once its fill has
    verified it); returns the download once the node is uploading it to the bucket (through a
    relay that holds it to a crawl) and at least one part has arrived."""
    dl = BlobDownload("127.0.0.1", node.rc.port, node.big_blob_path(big)).start().join(120)
    assert_true_bytes(dl, big)
    assert dl.received == big.size, f"the client got {dl.received} of {big.size} bytes"
    state = {}

    def uploading():
        s = node.rc.metrics()
        state.update(running=node.rc.metric(UPLOADING, s),
                     parts=node.rc.metric(S3_REQUESTS, s, op="put_part", outcome="ok"))
        return state["running"] == 1 and state["parts"] >= 1
    try:
        wait_until(uploading, 60, f"{node.rc.name} to upload parts of the big blob", interval=0.2)
    except TimeoutError as e:
        raise AssertionError(f"{e}: {state}\n{node.rc.proc.log_tail(20)}") from None
    return dl


# 8 MiB parts reach the bucket through the relay at 4 MiB/s: the 128 MiB upload takes half a minute.
UPLOAD_CRAWL = 4 << 20


def test_a_node_killed_mid_upload_leaves_only_verified_objects(start_regcache, make_clients, seaweedfs,
                                                               upstream, catalog, request):
    big = big_blob(catalog)
    slow = SlowPort(seaweedfs.s3_port, UPLOAD_CRAWL)
    request.addfinalizer(slow.close)
    node = Node(start_regcache, make_clients, seaweedfs, "s3-crash", "fleet-crash", endpoint=f"http://127.0.0.1:{slow.port}")
    big_upload_under_way(node, big)
    records = node.upload_records()
    open_uploads = seaweedfs.unfinished_uploads(BUCKET)
    node.rc.kill9()
    slow.rate = None                         # the restarted node uploads at full speed
    assert len(records) == 1, f"upload records in data_dir/uploads while uploading: {records}"
    assert open_uploads, "SeaweedFS shows no multipart upload in progress"

    # every object in the bucket hashes to its key; the interrupted blob has no object at all
    digests, bad = verify_bucket_blobs(seaweedfs, node.prefix)
    assert not bad, "after SIGKILL:\n" + "\n".join(bad)
    assert big.digest not in digests, "the interrupted blob has an object at its final key"

    # same data dir: the start-up aborts the upload the killed run left
    node.rc.start()
    assert ABORTED_AT_START in node.rc.proc.log_tail(200), node.rc.proc.log_tail(30)
    assert not node.upload_records(), f"upload records left: {node.upload_records()}"
    left = open_uploads & seaweedfs.unfinished_uploads(BUCKET)
    assert not left, f"multipart uploads still open in SeaweedFS after the restart: {left}"

    # the restarted node serves the blob from its hot tier (it was verified and kept before the
    # upload began); another node, finding it neither here nor in the bucket, fetches it from the
    # upstream and uploads it whole
    dl = BlobDownload("127.0.0.1", node.rc.port, node.big_blob_path(big)).start().join(120)
    assert (dl.status, dl.received, dl.sha256) == (200, big.size, big.digest), vars(dl)
    other = Node(start_regcache, make_clients, seaweedfs, "s3-crash-other", "fleet-crash")
    dl = BlobDownload("127.0.0.1", other.rc.port, other.big_blob_path(big)).start().join(120)
    assert (dl.status, dl.received, dl.sha256) == (200, big.size, big.digest), vars(dl)
    other.rc.fetched = {big.digest}          # this run's metrics: one upload
    wait_for_bucket_writes(other)
    digests, bad = verify_bucket_blobs(seaweedfs, node.prefix)
    assert not bad and big.digest in digests, f"after the restart: {bad}, {sorted(digests)}"


# --------------------------------------------------------------- 5. the bucket SIGKILLed mid-upload

def test_the_bucket_killed_mid_upload_the_client_gets_verified_bytes(start_regcache, make_clients,
                                                                    start_seaweedfs, upstream, catalog, request):
    big = big_blob(catalog)
    weed = start_seaweedfs("seaweedfs-killed")
    slow = SlowPort(weed.s3_port, UPLOAD_CRAWL)
    request.addfinalizer(slow.close)
    node = Node(start_regcache, make_clients, weed, "s3-bucket-killed", "fleet", endpoint=f"http://127.0.0.1:{slow.port}")
    # the client has the verified blob before the upload begins; the bucket dies under the upload
    dl = big_upload_under_way(node, big)
    weed.kill9()
    assert (dl.status, dl.error, dl.received, dl.sha256) == (200, None, big.size, big.digest), vars(dl)
    wait_until(lambda: node.rc.metric(DOWN) == 1 and node.rc.metric(UPLOADING) == 0, 30,
               "the node to give up the upload and mark the bucket down", interval=0.2)
    assert node.rc.metric(OPS, op="upload", result="ok") == 0
    # the client may have its last byte before the fill has committed the blob
    hexd = big.digest.split(":")[1]
    wait_until(lambda: f"{hexd[:2]}/{hexd}" in node.rc.blob_files(), 30, "the big blob in the hot tier", interval=0.2)
    digests, bad = node.rc.verify_blob_store()
    assert not bad and big.digest in digests, f"hot tier: {bad}"


def test_the_bucket_killed_mid_read_the_client_gets_true_bytes(start_regcache, make_clients,
                                                               start_seaweedfs, upstream, catalog):
    big = big_blob(catalog)
    weed = start_seaweedfs("seaweedfs-killed-mid-read")
    a = Node(start_regcache, make_clients, weed, "s3-read-a", "fleet")
    dl = BlobDownload("127.0.0.1", a.rc.port, a.big_blob_path(big)).start().join(120)
    assert (dl.status, dl.received, dl.sha256) == (200, big.size, big.digest), vars(dl)
    a.rc.fetched.add(big.digest)
    wait_for_bucket_writes(a)

    # node B reads the blob from the bucket into its hot tier, the client following
    b = Node(start_regcache, make_clients, weed, "s3-read-b", "fleet")
    before = upstream.counters()
    dl = BlobDownload("127.0.0.1", b.rc.port, b.big_blob_path(big)).start()
    wait_until(lambda: b.rc.metric(OPS, op="get", result="ok") == 1 and dl.received >= 4 << 20, 30,
               "node B to stream the blob from the bucket")
    weed.kill9()
    at_kill = dl.received
    dl.join(120)
    assert at_kill < big.size, "the client had the whole blob before the bucket was killed"
    assert_true_bytes(dl, big)
    print(f"bucket killed at {at_kill} bytes; the client got {dl.received} bytes, error {dl.error!r}, "
          f"headers {dl.headers}")
    assert dl.received == big.size or dl.error, "a cut body that looks complete to the client"
    # nothing unverified is kept; the next request is served (from the upstream) whole
    digests, bad = b.rc.verify_blob_store()
    assert not bad, bad
    dl = BlobDownload("127.0.0.1", b.rc.port, b.big_blob_path(big)).start().join(120)
    assert (dl.status, dl.received, dl.sha256) == (200, big.size, big.digest), vars(dl)
    assert before.delta().cdn_gets(big.digest), "the second request did not come from the upstream"


# --------------------------------------------------------------- 3. the bucket server gone

def test_with_the_bucket_down_the_hot_tier_and_the_upstream_still_serve(start_regcache, make_clients,
                                                                        start_seaweedfs, upstream, catalog):
    weed = start_seaweedfs("seaweedfs-down")
    node = Node(start_regcache, make_clients, weed, "s3-bucket-down", "fleet")
    img = catalog["alpine"]
    _, delta = pull_and_check(node.clients["docker"], img, node.target, upstream)
    wait_for_bucket_writes(node, img, delta)
    assert node.rc.metric(DOWN) == 0
    weed.kill9()
    # held in the hot tier: warm, no blob request upstream
    for client in ("containerd", "skopeo"):
        pull_and_check(node.clients[client], img, node.target, upstream)
    # not held anywhere the node can reach but the upstream: cold, once per blob
    pull_and_check(node.clients["containerd"], catalog["layers30"], node.target, upstream)
    assert node.rc.metric(DOWN) == 1, "regcache_bucket_down is not 1 with the bucket server killed"
    assert node.rc.metric(UPLOADING) == 0


# --------------------------------------------------------------- 1b. the upstream stopped (last)

DOWN_CASES = [("alpine", "docker", False), ("alpine", "containerd", True), ("alpine", "skopeo", False),
              ("multiarch", "docker", True), ("buildx", "containerd", False), ("buildx", "skopeo", True)]


@pytest.mark.parametrize("tier", ["hot", "bucket"])
@pytest.mark.parametrize("image,client,by_digest", [
    pytest.param(i, c, d, id=f"{i}-{c}-{'digest' if d else 'tag'}") for i, c, d in DOWN_CASES])
def test_pull_with_the_upstream_stopped(image, client, by_digest, tier, node_a, upstream_stopped,
                                        start_regcache, make_clients, catalog, request):
    """hot: node A, which pulled everything in test_pull_through_an_s3_node; bucket: a new node
    on A's prefix with an empty hot tier, so everything comes from the bucket."""
    img = catalog[image]
    missing = node_a.clients[client].needed_blobs(img) - node_a.rc.fetched
    assert not missing, f"precondition: {img.repo} is not in node A / the bucket; missing {sorted(missing)}"
    assert not upstream_stopped.running()
    node = node_a
    if tier == "bucket":
        name = "s3-new-" + re.sub(r"[^a-z0-9]+", "-", request.node.callspec.id)
        node = Node(start_regcache, make_clients, node_a.weed, name, node_a.prefix)
    c = node.clients[client]
    c.check(c.pull(img, by_digest), img)
