"""Every image through every client, via regcache (or the registry with E2E_VIA=direct).

For each image the first client listed pulls cold (each needed blob must cross
from the upstream exactly once: one CDN GET per blob); the later clients are
fresh clients pulling warm (no blob request may reach the registry or the CDN).
The accounting is per blob, so a client needing more blobs than an earlier one
(skopeo --all after a single-platform pull) is cold exactly for the new ones.
"""
import pytest

from e2elib.checks import pull_and_check

# image key -> client order (first = cold)
MATRIX = [
    ("alpine", ["docker", "containerd", "skopeo"]),
    ("multiarch", ["skopeo", "docker", "containerd"]),     # skopeo --all: every platform cold at once
    ("buildx", ["containerd", "skopeo", "docker"]),        # skopeo --all then needs arm64 + attestations
    ("layers30", ["containerd", "docker", "skopeo"]),
    ("big", ["docker", "skopeo", "containerd"]),
    ("private", ["skopeo", "docker", "containerd"]),
]
CASES = [pytest.param(img, cl, id=f"{img}-{cl}-{'cold' if i == 0 else 'warm'}")
         for img, order in MATRIX for i, cl in enumerate(order)]


@pytest.mark.parametrize("image,client", CASES)
def test_pull(image, client, clients, target, upstream, catalog, request):
    if image == "private" and not target.caches:
        pytest.skip("E2E_VIA=direct: the private image needs regcache's credentials")
    pull_and_check(clients[client], catalog[image], target, upstream)
