"""The status page in a real headless browser (Debian `chromium`): while the CDN trickles the
128 MiB layer (nginx limit_rate), the page a browser renders (no script in it) lists the fill
with a progress bar, and once the layer is stored it lists none and counts the blob.  A
screenshot of the page mid-fill is saved in the work dir (and, with E2E_STATUS_SCREENSHOT=PATH,
there too: docs/status.png in the README is made so)."""
import json
import os
import re
import shutil
import struct

import pytest

from e2elib.images import big_blob
from e2elib.net import BlobDownload
from e2elib.upstream import REGCACHE_PASSWORD, REGCACHE_USER
from e2elib.util import http_request, require_tool, run, wait_until

pytestmark = pytest.mark.needs_regcache

WINDOW = (1100, 1000)


def status(rc):
    code, headers, body = http_request("127.0.0.1", rc.port, "GET", "/status.json", timeout=10)
    assert code == 200 and headers["content-type"] == "application/json", (code, headers)
    return json.loads(body)


def chromium(workdir, *args):
    """chromium headless, its profile in the work dir. (JavaScript stays on: --dump-dom serializes the
    DOM with it; the page has none, see the test.)"""
    exe = require_tool("chromium", "chromium")
    profile = os.path.join(workdir, "chromium-profile")
    argv = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
            *args]
    return run(argv, timeout=120)


def dump_dom(workdir, url):
    return chromium(workdir, "--dump-dom", url).out


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_the_status_page_renders_and_shows_a_fill_while_it_runs(start_regcache, upstream, catalog, workdir):
    img = catalog["big"]
    big = big_blob(catalog)
    rc = start_regcache("regcache-status")
    url = f"http://127.0.0.1:{rc.port}/status"

    # The page needs no JavaScript: it has none, and refreshes itself.
    code, headers, raw = http_request("127.0.0.1", rc.port, "GET", "/status", timeout=10)
    assert code == 200 and headers["content-type"] == "text/html; charset=utf-8", (code, headers)
    assert b"<script" not in raw and b'<meta http-equiv="refresh" content="5">' in raw, raw

    # Before any pull: the page renders its sections and the one upstream, up.
    dom = dump_dom(workdir, url)
    for text in ("<title>regcache status</title>", "<h2>Cache</h2>", "<h2>Upstreams</h2>",
                 "Fills in progress (0)", "No blob is being fetched.", "docker.io", '<td class="up">up</td>'):
        assert text in dom, f"{text!r} not in the rendered page:\n{dom}"

    upstream.set_cdn_slow(True)
    dl = BlobDownload("127.0.0.1", rc.port, f"/v2/{img.repo}/blobs/{big.digest}", timeout=300).start()
    try:
        wait_until(lambda: any(f["digest"] == big.digest and f["bytes_done"] > 0 for f in status(rc)["fills"]),
                   60, "the big layer's fill to show in /status.json")
        dom = dump_dom(workdir, url)
        shot = os.path.join(workdir, "status.png")
        chromium(workdir, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}", url)
        during = status(rc)
    finally:
        upstream.set_cdn_slow(False)
    fill = next(f for f in during["fills"] if f["digest"] == big.digest)
    assert fill["bytes_done"] < big.size, "the layer was complete already: the CDN is not slow enough"
    assert (fill["upstream"], fill["repository"], fill["bytes_total"], fill["clients"]) == \
        ("docker.io", img.repo, big.size, 1), fill

    # The rendered page shows the fill: its repository, its digest, a progress bar with its size.
    assert "Fills in progress (1)" in dom, dom
    row = re.search(r'<tr class="fill">(.*?)</tr>', dom, re.S)
    assert row, f"no fill row in the rendered page:\n{dom}"
    row = row.group(1)
    assert img.repo in row and f'title="{big.digest}"' in row, row
    bar = re.search(r'<progress value="(\d+)" max="(\d+)"></progress>', row)
    assert bar and int(bar.group(2)) == big.size and 0 < int(bar.group(1)) < big.size, row
    assert png_size(shot) == WINDOW, "the screenshot has the window's size"
    assert os.path.getsize(shot) > 10_000, "the screenshot is not blank"
    keep = os.environ.get("E2E_STATUS_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)

    dl.join(300)
    assert (dl.status, dl.error, dl.sha256) == (200, None, big.digest), "the client got the layer"

    # Once stored: no fill, the blob counted, the repository among the top ones.
    wait_until(lambda: not status(rc)["fills"], 30, "the fill to end")
    after = status(rc)
    assert after["cache"]["blobs"] >= 1 and after["cache"]["size_bytes"] >= big.size, after["cache"]
    assert after["top_repositories"][0]["repository"] == img.repo, after["top_repositories"]
    dom = dump_dom(workdir, url)
    assert "Fills in progress (0)" in dom and img.repo in dom, dom
    for secret in (REGCACHE_PASSWORD, f"{REGCACHE_USER}:", "Bearer", "Authorization"):
        assert secret not in dom, f"{secret!r} on the page"
