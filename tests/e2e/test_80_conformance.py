"""The official OCI distribution-spec conformance suite (v1.1.1: pull + content discovery, pull-only
mode) run through regcache against the real upstream: cold (nothing cached), warm (everything
cached), and with the whole upstream stopped (cached content only).

The suite is the prebuilt binary in `../shared/tools/` next to the repository (see its README); a
missing suite fails the test. Every spec must pass except the three referrers specs that compare
against content only the suite's push-mode setup creates; with the upstream stopped, also the three
that ask about content regcache never saw (it can't know it doesn't exist upstream).
"""
import json
import os
import subprocess
import xml.etree.ElementTree as ET

import pytest

from conftest import LOG_SOURCES
from e2elib import upstream as U
from e2elib.images import MT_OCI_MANIFEST, Pusher, _single, _Store
from e2elib.regcache import REPO_ROOT, Regcache
from e2elib.util import http_request

pytestmark = pytest.mark.needs_regcache

SUITE = os.path.join(REPO_ROOT, "..", "shared", "tools", "oci-conformance-v1.1.1")
REPO = "conformance/test"
TAGS = ["latest", "v1", "v1.0", "v2"]
# Referrers specs that need the artifacts the suite's push-mode setup uploads: no read-only registry
# can pass them (distribution itself fails them the same way in pull-only mode).
PUSH_ONLY = ("listing references) GET request to existing blob should yield 200",
             "listing references) GET request to existing blob with filter should yield 200",
             "listing references) GET request to missing manifest should yield 200")
# With the upstream stopped, regcache can't know that content it never saw doesn't exist: it answers
# these 502 (upstream unavailable), not 404 / an empty list.
UNKNOWABLE_OFFLINE = ("Pull blobs HEAD request to nonexistent blob should result in 404 response",
                      "Pull blobs GET nonexistent blob should result in 404 response",
                      "listing references) GET request to nonexistent blob should result in empty 200 response")
RUNNABLE = 22
SPEC_PREFIX = "OCI Distribution Conformance Tests "


@pytest.fixture(scope="module")
def image(workdir, upstream, pki):
    """A small OCI image in `conformance/test`, tagged several times."""
    store = _Store(os.path.join(workdir, "images", "conformance"))
    img = _single("conformance", REPO, TAGS[0], store, "conformance", True,
                  [[("etc", None, 0o755), ("etc/conformance", b"pulled through regcache\n", 0o644)]])
    assert img.media_type == MT_OCI_MANIFEST
    pusher = Pusher("127.0.0.1", upstream.reg_port, pki.ca_cert, "127.0.0.1", upstream.token_port,
                    U.SERVICE, U.PUSH_USER, U.PUSH_PASSWORD)
    pusher.push_image(img)
    mt, data = img.manifests[img.digest]
    for tag in TAGS[1:]:
        pusher.push_manifest(REPO, tag, mt, data)
    return img


@pytest.fixture(scope="module")
def regcache(workdir, upstream, pki):
    rc = Regcache("regcache-conformance", workdir, upstream, pki)
    LOG_SOURCES.append((f"{rc.name} log (tail)", lambda: rc.proc.log_tail(60)))
    rc.start()
    yield rc
    rc.stop()


def _suite():
    if not os.access(SUITE, os.X_OK):
        pytest.fail(f"OCI conformance suite not found at {os.path.normpath(SUITE)} "
                    f"(see ../shared/tools/README.md)", pytrace=False)
    return SUITE


def _run_suite(rc, img, name, workdir):
    """Run the suite against `rc`; returns {spec name: "passed" | "failed" | "skipped"}."""
    out = os.path.join(workdir, f"conformance-{name}")
    os.makedirs(out, exist_ok=True)
    blob = img.amd64.layer_digests[0]
    env = dict(os.environ,
               OCI_ROOT_URL=f"http://127.0.0.1:{rc.port}", OCI_NAMESPACE=REPO,
               OCI_TEST_PULL="1", OCI_TEST_PUSH="0", OCI_TEST_CONTENT_DISCOVERY="1",
               OCI_TEST_CONTENT_MANAGEMENT="0", OCI_BLOB_DIGEST=blob, OCI_MANIFEST_DIGEST=img.digest,
               OCI_TAG_NAME=TAGS[0], OCI_TAG_LIST=",".join(TAGS), OCI_HIDE_SKIPPED_WORKFLOWS="0",
               OCI_DEBUG="1")
    # The suite exits non-zero when any spec fails; the verdict is read from junit.xml. Its debug
    # output (every request and response, bodies included) goes to a file in the work directory.
    log = os.path.join(out, "suite-output.txt")
    with open(log, "wb") as f:
        rc = subprocess.run([_suite()], env=env, cwd=out, stdin=subprocess.DEVNULL, stdout=f,
                            stderr=subprocess.STDOUT, timeout=600).returncode
    junit = os.path.join(out, "junit.xml")
    assert os.path.exists(junit), f"the suite (exit {rc}) wrote no junit.xml; its output is in {log}"
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        if not case.get("name", "").startswith(SPEC_PREFIX):
            continue  # the suite's own reporter is listed as a test case too
        if case.find("skipped") is not None:
            status = "skipped"
        elif case.find("failure") is not None or case.find("error") is not None:
            status = "failed"
        else:
            status = "passed"
        results[case.get("name")] = status
    return results


def _check(results, phase, allowed=PUSH_ONLY):
    ran = {n: s for n, s in results.items() if s != "skipped"}
    failed = sorted(n for n, s in ran.items() if s == "failed")
    unexpected = [n for n in failed if not n.endswith(allowed)]
    assert len(ran) == RUNNABLE, f"{phase}: {len(ran)} specs ran, expected {RUNNABLE}: {sorted(ran)}"
    assert not unexpected, f"{phase}: specs failed: {unexpected} (all failures: {failed})"


def test_conformance_cold_warm_and_upstream_down(image, regcache, upstream, workdir):
    _check(_run_suite(regcache, image, "cold", workdir), "cold")
    _check(_run_suite(regcache, image, "warm", workdir), "warm")
    # No tag is resolved here beyond what the suite asked: offline, `tags/list` (and its `n` / `last`
    # pagination spec) is answered from the list the upstream last gave.
    online = http_request("127.0.0.1", regcache.port, "GET", f"/v2/{REPO}/tags/list")
    assert online[0] == 200 and json.loads(online[2])["tags"] == sorted(TAGS), online
    upstream.stop()
    try:
        _check(_run_suite(regcache, image, "upstream-down", workdir), "upstream down", PUSH_ONLY + UNKNOWABLE_OFFLINE)
        offline = http_request("127.0.0.1", regcache.port, "GET", f"/v2/{REPO}/tags/list")
        assert (offline[0], json.loads(offline[2])) == (200, json.loads(online[2])), (online, offline)
    finally:
        upstream.start()
