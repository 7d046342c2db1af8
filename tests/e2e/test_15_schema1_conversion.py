"""distribution 2.x converts a Docker v2 image to signed schema1 on the fly for a client whose
Accept names no v2 type; the conversion is re-signed on every answer and can't be fetched by
its digest. regcache must GET it by the tag the client asked for and check the bytes against
the digest the HEAD announced (the JWS payload's sha256), then serve it by tag and by digest."""
import base64
import hashlib
import json

import pytest

from e2elib import upstream as U
from e2elib.images import Pusher
from e2elib.util import http_request

pytestmark = pytest.mark.needs_regcache

SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"


def _b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def _payload(signed):
    """libtrust: the bytes up to formatLength plus formatTail of the first signature."""
    protected = json.loads(_b64url(json.loads(signed)["signatures"][0]["protected"]))
    return signed[:protected["formatLength"]] + _b64url(protected["formatTail"])


def test_schema1_conversion_is_fetched_by_tag(start_regcache, upstream, pki, catalog):
    img = catalog["alpine"]
    assert img.media_type == "application/vnd.docker.distribution.manifest.v2+json"
    rc = start_regcache("regcache-schema1")
    path = f"/v2/{img.short}/manifests/{img.tag}"
    st, h, body = http_request("127.0.0.1", rc.port, "GET", path, headers={"Accept": SCHEMA1_SIGNED})
    assert st == 200, body[:500]
    assert h["content-type"] == SCHEMA1_SIGNED
    payload = _payload(body)
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    assert h["docker-content-digest"] == digest
    assert json.loads(payload)["schemaVersion"] == 1

    # The upstream itself can't answer the conversion by digest: only regcache's copy can.
    pusher = Pusher("127.0.0.1", upstream.reg_port, pki.ca_cert, "127.0.0.1", upstream.token_port,
                    U.SERVICE, U.PUSH_USER, U.PUSH_PASSWORD)
    st, _h, _b = pusher._req("GET", f"/v2/{img.repo}/manifests/{digest}", img.repo,
                             {"Accept": SCHEMA1_SIGNED})
    assert st == 404, "precondition: distribution serves its conversions only by tag"
    for reference in (digest, img.tag):
        st, h, again = http_request("127.0.0.1", rc.port, "GET", f"/v2/{img.short}/manifests/{reference}",
                                    headers={"Accept": SCHEMA1_SIGNED})
        assert (st, h["docker-content-digest"]) == (200, digest), reference
        assert _payload(again) == payload, reference
    # A Docker v2 client still gets the image as pushed.
    st, h, _b = http_request("127.0.0.1", rc.port, "GET", path,
                             headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert (st, h["docker-content-digest"]) == (200, img.digest)
