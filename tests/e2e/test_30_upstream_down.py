"""With the whole upstream (registry, token server, CDN) stopped, images regcache
already holds still pull, by tag and by digest, through every client."""
import socket

import pytest

from e2elib import upstream as U
from e2elib.util import wait_until

pytestmark = pytest.mark.needs_regcache

CASES = [("alpine", "docker", False), ("alpine", "docker", True),
         ("alpine", "containerd", False), ("alpine", "containerd", True),
         ("alpine", "skopeo", False), ("alpine", "skopeo", True),
         ("multiarch", "docker", False), ("buildx", "containerd", True),
         ("private", "skopeo", False), ("layers30", "docker", True)]


def _refused(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return False
    except OSError:
        return True


@pytest.fixture(scope="module")
def upstream_down(upstream, target):
    upstream.stop()
    wait_until(lambda: _refused("127.0.0.1", upstream.reg_port) and _refused("127.0.0.1", upstream.token_port)
               and _refused(U.CDN_HOST, upstream.cdn_port), 30, "upstream ports to close")
    try:
        yield upstream
    finally:
        upstream.start()


@pytest.mark.parametrize("image,client,by_digest", [
    pytest.param(i, c, d, id=f"{i}-{c}-{'digest' if d else 'tag'}") for i, c, d in CASES])
def test_pull_with_upstream_down(image, client, by_digest, upstream_down, clients, target, catalog):
    img = catalog[image]
    missing = clients[client].needed_blobs(img) - target.fetched
    assert not missing, (f"precondition: {img.repo} is not fully cached (its pull in test_10 failed?); "
                         f"missing {sorted(missing)}")
    assert not upstream_down.running()
    c = clients[client]
    res = c.pull(img, by_digest)
    c.check(res, img)
