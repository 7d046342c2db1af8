"""With the whole upstream (registry, token server, CDN) stopped, images regcache
already holds still pull, by tag and by digest, through every client."""

import pytest


pytestmark = pytest.mark.needs_regcache

CASES = [("alpine", "docker", False), ("alpine", "docker", True),
         ("alpine", "containerd", False), ("alpine", "containerd", True),
         ("alpine", "skopeo", False), ("alpine", "skopeo", True),
         ("multiarch", "docker", False), ("buildx", "containerd", True),
         ("private", "skopeo", False), ("layers30", "docker", True)]


@pytest.fixture(scope="module")
def upstream_down(target, upstream_stopped):
    return upstream_stopped     # regcache-a started (and filled by test_10) before


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
