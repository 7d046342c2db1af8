"""One regcache in front of TWO real registries: docker.io (the suite's registry) and ghcr.io (a
second distribution with its own storage, token server and CDN). Both hold a different image
under the same repository names (library/alpine:3, org/app:1.0), so a request routed to the
wrong registry gets the wrong digest rather than an error.

* containerd (one hosts.toml per registry, so it sends ?ns=) pulls from both;
* skopeo with registries.conf mirrors "<regcache>/docker.io" and "<regcache>/ghcr.io" (path prefix);
* ns / prefix / default routing and OCI-Namespace, checked with curl;
* a registry that isn't configured is 404 NAME_UNKNOWN and causes no connection at all
  (a decoy listener, both upstreams' logs);
* admin_listen: /metrics there, 404 on the main listener.
"""
import os
import re
import socket

import pytest

from conftest import LOG_SOURCES, Target
from e2elib import upstream as U
from e2elib.checks import pull_and_check
from e2elib.clients import ContainerdClient, Mirror, SkopeoClient
from e2elib.images import (MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, Pusher,
                           build_second_catalog)
from e2elib.net import DecoyListener, curl
from e2elib.regcache import Regcache
from e2elib.util import sha256_bytes, wait_until

pytestmark = pytest.mark.needs_regcache

SECOND = "ghcr.io"
SECOND_SERVICE = "ghcr.e2e.test"
ACCEPT = ", ".join([MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX])


@pytest.fixture(scope="module")
def second_catalog(workdir):
    return build_second_catalog(os.path.join(workdir, "images-second"), SECOND)


@pytest.fixture(scope="module")
def second_upstream(workdir, pki, upstream, second_catalog):
    """The second registry (token server + distribution + CDN of its own) with ghcr.io's images;
    the first registry additionally gets docker.io/org/app:1.0."""
    app = second_catalog["app"]
    up = U.Upstream(workdir, pki, max(app.blobs.values(), key=lambda b: b.size).digest,
                    name="upstream-ghcr", service=SECOND_SERVICE)
    LOG_SOURCES.append(("second upstream (ghcr.io) logs", up.log_tails))
    try:
        up.start()
        p2 = Pusher("127.0.0.1", up.reg_port, pki.ca_cert, "127.0.0.1", up.token_port, SECOND_SERVICE,
                    U.PUSH_USER, U.PUSH_PASSWORD)
        p2.push_image(second_catalog["alpine"])
        p2.push_image(second_catalog["app"])
        p1 = Pusher("127.0.0.1", upstream.reg_port, pki.ca_cert, "127.0.0.1", upstream.token_port, U.SERVICE,
                    U.PUSH_USER, U.PUSH_PASSWORD)
        p1.push_image(second_catalog["hub-app"])
        yield up
    finally:
        up.stop()


@pytest.fixture(scope="module")
def rc_multi(workdir, pki, upstream, second_upstream):
    rc = Regcache("regcache-multi", workdir, upstream, pki,
                  upstreams=[("docker.io", upstream), (SECOND, second_upstream)], admin=True)
    LOG_SOURCES.append(("regcache-multi log (tail)", lambda: rc.proc.log_tail(60)))
    try:
        rc.start()
        yield rc
    finally:
        rc.stop()


@pytest.fixture(scope="module")
def multi_target(rc_multi):
    return Target(Mirror("regcache-multi", "127.0.0.1", rc_multi.port, "http"), rc_multi)


def _quiet(*deltas):
    """Descriptions of any request a Delta shows (registry, CDN, token server)."""
    out = []
    for name, d in deltas:
        out += [f"{name} registry: {r}" for r in d.registry]
        out += [f"{name} CDN: {r['method']} {r['uri']}" for r in d.cdn]
        out += [f"{name} token: {r['path']}" for r in d.tokens]
    return out


def test_containerd_pulls_from_two_registries(containerd_daemon, workdir, multi_target, upstream,
                                              second_upstream, catalog, second_catalog):
    """hosts.toml for docker.io and ghcr.io, both naming regcache: each image comes from its own
    registry (digest as that registry holds it; the other registry sees no request)."""
    ctr = ContainerdClient(workdir, Mirror("regcache-multi-ctr", "127.0.0.1", multi_target.regcache.port, "http"),
                           containerd_daemon, registries=("docker.io", SECOND))
    for img, up, other in [(catalog["alpine"], upstream, second_upstream),
                           (second_catalog["alpine"], second_upstream, upstream),
                           (second_catalog["app"], second_upstream, upstream)]:
        other_before = other.counters()
        res, _delta = pull_and_check(ctr, img, multi_target, up, by_digest=(img.key == "app"))
        stray = _quiet((other.name, other_before.delta()))
        assert not stray, f"pulling {res.ref} reached the other registry:\n" + "\n".join(stray)
    assert catalog["alpine"].digest != second_catalog["alpine"].digest


def test_skopeo_path_prefix_mirrors(workdir, pki, multi_target, upstream, second_upstream, second_catalog):
    """registries.conf: docker.io -> "<regcache>/docker.io", ghcr.io -> "<regcache>/ghcr.io";
    skopeo sends /v2/<registry>/<name>/... and gets each registry's own digests."""
    port = multi_target.regcache.port
    sk = SkopeoClient(workdir, Mirror("regcache-multi-prefix", "127.0.0.1", port, "http"), pki,
                      registries=("docker.io", SECOND), path_prefix=True)
    with open(sk.conf) as f:
        conf = f.read()
    assert f'location = "127.0.0.1:{port}/{SECOND}"' in conf, conf
    for img, up, other in [(second_catalog["app"], second_upstream, upstream),       # OCI index, --all
                           (second_catalog["hub-app"], upstream, second_upstream),
                           (second_catalog["alpine"], second_upstream, upstream)]:
        other_before = other.counters()
        res, _ = pull_and_check(sk, img, multi_target, up)
        stray = _quiet((other.name, other_before.delta()))
        assert not stray, f"pulling {res.ref} reached the other registry:\n" + "\n".join(stray)
    log = open(multi_target.regcache.log, errors="replace").read()
    for path in (f"/v2/{SECOND}/org/app/manifests/1.0", "/v2/docker.io/org/app/manifests/1.0",
                 f"/v2/{SECOND}/library/alpine/manifests/3"):
        assert path in log, f"regcache's log shows no request for {path}: skopeo did not use the prefix"


@pytest.mark.parametrize("path,want,ns_header", [
    ("/v2/org/app/manifests/1.0", "hub-app", None),                             # default: first upstream
    ("/v2/org/app/manifests/1.0?ns=docker.io", "hub-app", "docker.io"),
    ("/v2/org/app/manifests/1.0?ns=registry-1.docker.io", "hub-app", "docker.io"),
    ("/v2/org/app/manifests/1.0?ns=index.docker.io", "hub-app", "docker.io"),
    (f"/v2/org/app/manifests/1.0?ns={SECOND}", "app", SECOND),
    (f"/v2/{SECOND}/org/app/manifests/1.0", "app", None),
    ("/v2/docker.io/org/app/manifests/1.0", "hub-app", None),
    ("/v2/index.docker.io/org/app/manifests/1.0", "hub-app", None),
    ("/v2/alpine/manifests/3", "hub-alpine", None),                             # library/ added
    (f"/v2/library/alpine/manifests/3?ns={SECOND}", "alpine", SECOND),
    (f"/v2/{SECOND}/library/alpine/manifests/3", "alpine", None),
])
def test_routing(path, want, ns_header, rc_multi, catalog, second_catalog):
    img = catalog["alpine"] if want == "hub-alpine" else second_catalog[want]
    r = curl(f"http://127.0.0.1:{rc_multi.port}{path}", headers={"Accept": ACCEPT})
    assert r.status == 200, r
    assert sha256_bytes(r.body) == img.digest and r.headers.get("docker-content-digest") == img.digest, \
        f"{path}: got {sha256_bytes(r.body)}, want {img.full_ref()} = {img.digest}\n{r!r}"
    if ns_header:
        assert r.headers.get("oci-namespace") == ns_header, f"{path}: OCI-Namespace {r.headers}"


UNKNOWN = [
    "/v2/x/manifests/1?ns=127.0.0.1:{decoy}",
    "/v2/library/alpine/manifests/3?ns=127.0.0.1:{decoy}",     # exists on the first upstream
    "/v2/library/alpine/blobs/{blob}?ns=127.0.0.1:{decoy}",
    "/v2/library/alpine/tags/list?ns=127.0.0.1:{decoy}",
    "/v2/library/alpine/manifests/3?ns=localhost:{decoy}",
    "/v2/library/alpine/manifests/3?ns=169.254.169.254",
    "/v2/library/alpine/manifests/3?ns=evil.example",
    "/v2/org/app/manifests/1.0?ns=quay.io",                       # a real registry, not configured here
    "/v2/evil.example/x/manifests/1",
    "/v2/evil.example/library/alpine/manifests/3",
    "/v2/127.0.0.1/library/alpine/manifests/3",
    "/v2/localhost/library/alpine/manifests/3",
    "/v2/quay.io/org/app/manifests/1.0",
    "/v2/169.254.169.254/latest/blobs/{blob}",
]


def test_unknown_registry_is_404_without_any_connection(rc_multi, upstream, second_upstream, catalog):
    blob = catalog["alpine"].amd64.layer_digests[0]
    decoy = DecoyListener()
    try:
        before = [(u.name, u, u.counters()) for u in (upstream, second_upstream)]
        bad = []
        for tmpl in UNKNOWN:
            path = tmpl.format(decoy=decoy.port, blob=blob)
            for head in (False, True):
                r = curl(f"http://127.0.0.1:{rc_multi.port}{path}", head=head, headers={"Accept": ACCEPT})
                if r.status != 404 or (not head and r.oci_codes() != ["NAME_UNKNOWN"]):
                    bad.append(f"{'HEAD' if head else 'GET'} {path}: {r.status} {r.body[:200]!r}")
        assert not bad, "unconfigured registries were not 404 NAME_UNKNOWN:\n" + "\n".join(bad)
        assert decoy.connections == 0, f"regcache connected to the decoy 127.0.0.1:{decoy.port}: {decoy.peers}"
        stray = _quiet(*[(n, c.delta()) for n, _u, c in before])
        assert not stray, "requests for unconfigured registries reached an upstream:\n" + "\n".join(stray)
        # the decoy does count connections (control)
        socket.create_connection(("127.0.0.1", decoy.port), timeout=5).close()
        wait_until(lambda: decoy.connections == 1, 10, "the decoy to count the control connection")
    finally:
        decoy.close()
    rc_multi.proc.check_alive()


def _metric(text, name, **labels):
    """Sum of the samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if not m:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m[1] or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m[2])
            found = True
    return total if found else None


def test_admin_listen_serves_metrics_main_does_not(rc_multi):
    main = f"http://127.0.0.1:{rc_multi.port}"
    admin = f"http://127.0.0.1:{rc_multi.admin_port}"
    # something for the metrics to count: one request through each upstream
    for path in ("/v2/org/app/manifests/1.0", f"/v2/org/app/manifests/1.0?ns={SECOND}"):
        assert curl(main + path, headers={"Accept": ACCEPT}).status == 200
    r = curl(admin + "/metrics")
    assert r.status == 200, r
    text = r.body.decode()
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    for up in ("docker.io", SECOND):
        n = _metric(text, "regcache_upstream_requests_total", upstream=up)
        assert n and n > 0, f"no regcache_upstream_requests_total for upstream={up}:\n{text[:3000]}"
    ok = _metric(text, "regcache_http_requests_total", route="manifest", status="200")
    assert ok and ok >= 2, f"regcache_http_requests_total{{route=manifest,status=200}} = {ok}\n{text[:3000]}"
    assert curl(admin + "/healthz").status == 200
    assert curl(admin + "/v2/").status == 404, "the admin listener serves the registry API"

    r = curl(main + "/metrics")
    assert r.status == 404 and r.oci_codes() == ["NAME_UNKNOWN"], f"/metrics on the main listener: {r!r}"
    assert "regcache_" not in r.body.decode(errors="replace")
    assert curl(main + "/healthz").status == 200, "/healthz must stay on the main listener"


def test_second_cdn_never_saw_authorization(second_upstream):
    reqs = U.cdn_requests(second_upstream.cdn_access_log)
    assert any(r["digest"] and r["method"] == "GET" for r in reqs), "the second CDN served no blob"
    bad = [r for r in reqs if r["auth"] != "0" or r["status"] == 400]
    assert not bad, "second CDN got Authorization:\n" + "\n".join(map(str, bad[:20]))
