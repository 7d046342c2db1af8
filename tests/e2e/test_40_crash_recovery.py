"""regcache killed with SIGKILL in the middle of the 128 MiB layer, then started
again on the same data dir: the next pull succeeds and every stored blob verifies."""
import os
import time

import pytest

from e2elib.checks import pull_and_check
from e2elib.clients import Mirror, SkopeoClient
from e2elib.images import big_blob
from e2elib.procs import ManagedProcess
from e2elib.util import dir_size, wait_until
from conftest import Target

pytestmark = pytest.mark.needs_regcache

KILL_AT = 24 * 1024 * 1024      # bytes of the big layer in data_dir/tmp when we pull the plug


def test_sigkill_mid_blob_then_restart(start_regcache, make_clients, upstream, catalog, pki, workdir):
    img = catalog["big"]
    big = big_blob(catalog)
    rc = start_regcache("regcache-crash")
    mirror = Mirror("regcache-crash", "127.0.0.1", rc.port, "http")
    cl = make_clients(mirror)
    tmp_dir = os.path.join(rc.data_dir, "tmp")

    # 1. a client pulls the big image while the CDN trickles that one file (nginx limit_rate)
    upstream.set_cdn_slow(True)
    sk: SkopeoClient = cl["skopeo"]
    puller = ManagedProcess("skopeo-crash-pull", sk.copy_argv(img, os.path.join(sk.dir, "crash-pull")),
                            os.path.join(sk.dir, "crash-pull.log"), env=sk.env)
    try:
        puller.start()
        t0 = time.monotonic()
        try:
            wait_until(lambda: os.path.isdir(tmp_dir) and dir_size(tmp_dir) >= KILL_AT, 90,
                       f"regcache to write {KILL_AT} bytes of the big layer into data_dir/tmp")
        except TimeoutError as e:
            raise AssertionError(f"{e}; tmp holds {dir_size(tmp_dir) if os.path.isdir(tmp_dir) else 0} bytes; "
                                 f"puller: {puller.log_tail(10)}") from None
        partial = dir_size(tmp_dir)
        rc.kill9()
        assert partial < big.size, "the big layer was complete before the kill; the CDN is not slow enough"
        elapsed = time.monotonic() - t0
        # the client must notice the mirror died (it gets an error, not a hang)
        wait_until(lambda: not puller.alive(), 120, "the interrupted client to give up")
        assert puller.proc.returncode != 0, "pull 'succeeded' although regcache was killed mid-layer"
    finally:
        puller.stop()
        upstream.set_cdn_slow(False)
    print(f"killed regcache after {elapsed:.1f}s with {partial} bytes in data_dir/tmp")

    # 2. nothing half-written is visible as a blob
    digests, bad = rc.verify_blob_store()
    assert not bad, "after SIGKILL:\n" + "\n".join(bad)
    assert big.digest not in digests, "the interrupted layer is stored as a complete blob"

    # 3. same data dir, same port: the next pull (fresh docker daemon) succeeds
    rc.start()
    rc.fetched = set(digests)          # what it kept is cached; the big layer must be fetched again
    pull_and_check(cl["docker"], img, Target(mirror, rc), upstream)
    digests, bad = rc.verify_blob_store()
    assert not bad, "after restart and pull:\n" + "\n".join(bad)
    missing = img.amd64.blobs - digests
    assert not missing, f"blobs of {img.repo} not in the store after the pull: {sorted(missing)}"

    # 4. and it serves them warm to another fresh client
    pull_and_check(cl["containerd"], img, Target(mirror, rc), upstream)
