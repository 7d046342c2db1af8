"""The Docker-Hub stand-in itself works (no regcache involved): token auth,
redirects to the CDN, the CDN's Authorization rule, and every client pulling
straight from the registry.  If these fail, the harness is broken, not regcache."""
import json

import pytest

from e2elib import upstream as U
from e2elib.checks import pull_and_check
from e2elib.images import MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST
from e2elib.util import https_request, run, sha256_bytes
from conftest import Target

ACCEPT = ", ".join([MT_DOCKER_MANIFEST, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_OCI_INDEX])
PROBE_UA = "regcache-e2e-probe"


def _token(upstream, repo, basic=None):
    h = {"User-Agent": PROBE_UA}
    if basic:
        import base64
        h["Authorization"] = "Basic " + base64.b64encode(basic.encode()).decode()
    st, _h, body = https_request("127.0.0.1", upstream.token_port, "GET",
                                 f"/token?service={U.SERVICE}&scope=repository:{repo}:pull",
                                 upstream.pki.ca_cert, headers=h)
    return st, (json.loads(body)["token"] if st == 200 else None)


def test_registry_serves_pushed_images(upstream, catalog):
    for img in catalog.values():
        creds = f"{U.REGCACHE_USER}:{U.REGCACHE_PASSWORD}" if img.repo.startswith("private/") else None
        st, tok = _token(upstream, img.repo, creds)
        assert st == 200
        st, h, body = https_request("127.0.0.1", upstream.reg_port, "GET", f"/v2/{img.repo}/manifests/{img.tag}",
                                    upstream.pki.ca_cert, headers={"Authorization": f"Bearer {tok}",
                                                                   "Accept": ACCEPT, "User-Agent": PROBE_UA})
        assert st == 200, f"{img.repo}:{img.tag}: {st} {body[:300]!r}"
        assert sha256_bytes(body) == img.digest
        assert h.get("docker-content-digest") == img.digest


def test_registry_wants_token_and_redirects_blobs_to_cdn(upstream, catalog):
    img = catalog["alpine"]
    layer = img.blobs[img.amd64.layer_digests[0]]
    path = f"/v2/{img.repo}/blobs/{layer.digest}"
    ca = upstream.pki.ca_cert
    st, h, _ = https_request("127.0.0.1", upstream.reg_port, "GET", path, ca, headers={"User-Agent": PROBE_UA})
    assert st == 401 and h["www-authenticate"].startswith(f'Bearer realm="{upstream.realm}"'), h
    _, tok = _token(upstream, img.repo)
    st, h, _ = https_request("127.0.0.1", upstream.reg_port, "GET", path, ca,
                             headers={"Authorization": f"Bearer {tok}", "User-Agent": PROBE_UA})
    assert st == 307, f"registry answered {st}, want a 307 to the CDN"
    loc = h["location"]
    prefix = f"https://{U.CDN_HOST}:{upstream.cdn_port}/"
    assert loc.startswith(prefix), loc
    cdn_path = "/" + loc[len(prefix):]
    st, _h, body = https_request(U.CDN_HOST, upstream.cdn_port, "GET", cdn_path, ca, headers={"User-Agent": PROBE_UA})
    assert st == 200 and sha256_bytes(body) == layer.digest
    # like a presigned S3 URL: Authorization is refused
    st, _h, _ = https_request(U.CDN_HOST, upstream.cdn_port, "GET", cdn_path, ca,
                              headers={"Authorization": f"Bearer {tok}", "User-Agent": PROBE_UA})
    assert st == 400


def test_token_server_policy(upstream):
    st, tok = _token(upstream, "private/app")          # anonymous: a token without access
    import base64
    claims = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
    assert claims["access"] == [{"type": "repository", "name": "private/app", "actions": []}]
    st, _ = _token(upstream, "private/app", "ci:wrong-password")
    assert st == 401
    st, tok = _token(upstream, "private/app", f"{U.REGCACHE_USER}:{U.REGCACHE_PASSWORD}")
    claims = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))
    assert claims["access"][0]["actions"] == ["pull"]


@pytest.mark.parametrize("client", ["docker", "containerd", "skopeo"])
def test_client_pulls_straight_from_registry(client, make_clients, direct_mirror, upstream, catalog):
    """The harness drives each real client correctly (registry as the docker.io mirror)."""
    c = make_clients(direct_mirror)[client]
    pull_and_check(c, catalog["multiarch" if client == "skopeo" else "alpine"], Target(direct_mirror), upstream)


def test_private_image_needs_credentials_upstream(make_clients, direct_mirror, upstream, catalog, pki):
    """A client without regcache's credentials cannot get the private image from the upstream."""
    sk = make_clients(direct_mirror)["skopeo"]
    img = catalog["private"]
    r = run(sk.base_argv() + ["inspect", "--raw", "--no-creds", "--cert-dir", pki.cert_dir,
                              f"docker://127.0.0.1:{upstream.reg_port}/{img.repo}:{img.tag}"],
            env=sk.env, check=False, timeout=60)
    assert r.rc != 0, f"private manifest was readable without credentials: {r!r}"
    assert "unauthorized" in r.err or "denied" in r.err, r
    r = run(sk.base_argv() + ["copy", "--src-no-creds", "--src-cert-dir", pki.cert_dir,
                              f"docker://127.0.0.1:{upstream.reg_port}/{img.repo}:{img.tag}",
                              f"oci:{sk.dir}/private-direct:1"], env=sk.env, check=False, timeout=60)
    assert r.rc != 0 and ("unauthorized" in r.err or "denied" in r.err), r
