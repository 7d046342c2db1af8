"""The shipped dashboard and alerting rules against a real Prometheus (Debian `prometheus`) that
scrapes a real regcache every second while clients pull through it (misses, then hits, and
requests for a second upstream that refuses connections):

- every query of every panel of deploy/grafana/regcache-dashboard.json, its Grafana variables
  given concrete values, is evaluated by Prometheus (`/api/v1/query_range`): each must be a valid
  query, and the panels this traffic fills must return data that says what happened (hits and
  misses, bytes by source, upstream errors);
- a static preview of the dashboard (its panels laid out by gridPos, each with its title and an
  SVG chart of its query results: e2elib/preview.py, no Grafana) is screenshot by headless
  chromium;
- deploy/prometheus/regcache-rules.yaml is loaded into that Prometheus, which must report the
  rules healthy and the upstream that refuses connections as a pending `RegcacheUpstreamDown`;
  its own alerts page (`/classic/alerts`, the page Debian's Prometheus serves) is screenshot.

The screenshots are kept in the work dir; with E2E_DOCS_SCREENSHOTS=DIR they are copied there
too (docs/dashboard.png and docs/alerts.png in the README are made so)."""
import json
import os
import re
import shutil
import time
import urllib.parse

import pytest

from e2elib import preview
from e2elib.procs import ManagedProcess
from e2elib.regcache import REPO_ROOT
from e2elib.util import free_port, http_request, require_tool, wait_until
from test_55_status_page import chromium, png_size

pytestmark = pytest.mark.needs_regcache

DASHBOARD = os.path.join(REPO_ROOT, "deploy", "grafana", "regcache-dashboard.json")
RULES = os.path.join(REPO_ROOT, "deploy", "prometheus", "regcache-rules.yaml")
RATE_INTERVAL = "4s"       # Grafana's $__rate_interval for a 1 s scrape interval: 4 scrapes
ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json"])

# Panels that stay empty with this traffic, and why: nothing else may.
EMPTY = {
    "429 Too Many Requests from upstreams": "the suite's registry never answers 429",
    "Rate limit remaining": "the suite's registry sends no RateLimit headers",
    "Bucket requests by outcome": "no bucket configured",
    "Bucket operations failing": "no bucket configured",
    "Bucket bytes": "no bucket configured",
}


class Prometheus:
    """One Prometheus with its own storage, scraping `target` every second, with `rules`."""

    def __init__(self, workdir, target, rules):
        self.dir = os.path.join(workdir, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        config = os.path.join(self.dir, "prometheus.yml")
        with open(config, "w") as f:
            f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [{json.dumps(rules)}]
scrape_configs:
  - job_name: regcache
    static_configs:
      - targets: [{json.dumps(target)}]
""")
        exe = require_tool("prometheus", "prometheus")
        self.proc = ManagedProcess("prometheus", [
            exe, f"--config.file={config}", f"--storage.tsdb.path={self.dir}/data",
            f"--web.listen-address=127.0.0.1:{self.port}"], os.path.join(self.dir, "prometheus.log"))

    def start(self):
        self.proc.start()
        wait_until(lambda: self.proc.check_alive() or self.get("/-/ready")[0] == 200, 60, "Prometheus ready")
        return self

    def stop(self):
        self.proc.stop()

    def get(self, path):
        status, _, body = http_request("127.0.0.1", self.port, "GET", path, timeout=30)
        return status, body

    def api(self, path, **params):
        """An API answer's `data`; fails with Prometheus's error for a bad query."""
        status, body = self.get(f"/api/v1/{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", (path, params, status, answer)
        return answer["data"]


@pytest.fixture(scope="module")
def observed(start_regcache, catalog, workdir):
    """A regcache, a Prometheus scraping it, and the traffic of this module, done: (regcache,
    Prometheus, start and end of the traffic)."""
    dead = free_port()    # nothing listens: every request to this upstream is refused
    rc = start_regcache("regcache-dashboard", extra=f'[[upstream]]\nname = "ghcr.io"\nurl = "http://127.0.0.1:{dead}"\n')
    prom = Prometheus(workdir, f"127.0.0.1:{rc.port}", RULES).start()
    try:
        wait_until(lambda: prom.api("query", query="up")["result"], 30, "the first scrape of regcache")
        t0 = time.time()
        time.sleep(3)
        imgs = [catalog[k] for k in ("alpine", "multiarch", "layers30")]
        for round_ in range(8):
            for img in imgs[: 1 + round_ % 3]:
                pull(rc, img)
            status, _, _ = http_request("127.0.0.1", rc.port, "GET", "/v2/ghcr.io/org/app/manifests/1",
                                        headers={"Accept": ACCEPT}, timeout=30)
            assert status >= 500, status
            time.sleep(1)
        time.sleep(5)       # the last samples scraped, and rate windows past the traffic
        yield rc, prom, t0, time.time()
    finally:
        prom.stop()


def pull(rc, img):
    """What a client pulling `img` asks for: its manifests, then every blob."""
    for ref in [img.tag, *img.manifests]:
        status, _, _ = http_request("127.0.0.1", rc.port, "GET", f"/v2/{img.repo}/manifests/{ref}",
                                    headers={"Accept": ACCEPT}, timeout=60)
        assert status == 200, (img.repo, ref, status)
    for digest in img.blobs:
        status, _, _ = http_request("127.0.0.1", rc.port, "GET", f"/v2/{img.repo}/blobs/{digest}", timeout=120)
        assert status == 200, (img.repo, digest, status)


def concrete(expr, instance, t0, t1):
    """A panel's expression with Grafana's variables given the values Grafana would give them."""
    out = (expr.replace("$__rate_interval", RATE_INTERVAL)
               .replace("$__range", f"{int(t1 - t0)}s")
               .replace("$instance", instance))
    assert "$" not in out, f"a Grafana variable this test does not know: {expr}"
    return out


def evaluate(prom, dashboard, instance, t0, t1):
    """{panel id: [(legend, [(t, value)])]} of every panel with targets, each target evaluated
    over [t0, t1] in steps of a second."""
    results = {}
    for p in dashboard["panels"]:
        series = []
        for t in p.get("targets", []):
            data = prom.api("query_range", query=concrete(t["expr"], instance, t0, t1), start=t0, end=t1, step=1)
            assert data["resultType"] == "matrix", (p["title"], data)
            for s in data["result"]:
                pts = [(float(ts), float(v)) for ts, v in s["values"]]
                series.append((preview.legend(t.get("legendFormat"), s["metric"]), pts))
        results[p["id"]] = series
    return results


def last(series):
    """{legend: last value} of a panel's series."""
    return {name: pts[-1][1] for name, pts in series if pts}


def test_every_panel_query_runs_and_the_traffic_fills_the_panels(observed, workdir):
    rc, prom, t0, t1 = observed
    with open(DASHBOARD) as f:
        dashboard = json.load(f)
    results = evaluate(prom, dashboard, f"127.0.0.1:{rc.port}", t0, t1)
    by_title = {p["title"]: results[p["id"]] for p in dashboard["panels"] if p["type"] != "row"}
    assert set(EMPTY) <= set(by_title), "the panels expected empty are the dashboard's"
    empty = sorted(t for t, s in by_title.items() if not s and t not in EMPTY)
    assert not empty, f"panels without data after the traffic: {empty}"
    filled = sorted(t for t, s in by_title.items() if s and t in EMPTY)
    assert not filled, f"panels expected empty have data (update EMPTY): {filled}"

    # What the traffic did, as the panels show it.
    [(_, hit_ratio)] = last(by_title["Hit ratio (requests, time range)"]).items()
    assert 0.3 < hit_ratio < 1, hit_ratio
    [(_, byte_ratio)] = last(by_title["Hit ratio (bytes, time range)"]).items()
    assert 0.3 < byte_ratio < 1, byte_ratio
    [(_, saved)] = last(by_title["Bytes saved (time range)"]).items()
    served = rc.metric("regcache_served_bytes_total")
    from_upstream = rc.metric("regcache_served_bytes_total", source="upstream")
    assert saved == pytest.approx(served - from_upstream, rel=0.2), (saved, served, from_upstream)
    sources = {name for name, _ in by_title["Bytes served by source"]}
    assert sources == {"hot", "upstream"}, sources
    statuses = {name for name, _ in by_title["Upstream requests by status"]}
    assert any(name.startswith("ghcr.io") and "error" in name for name in statuses), statuses
    assert any(name.startswith("docker.io") and "200" in name for name in statuses), statuses
    answers = {name for name, _ in by_title["Cache answers"]}
    assert {"hit", "miss"} <= answers, answers

    # The preview, screenshot by chromium.
    note = (f"preview rendered by tests/e2e/{os.path.basename(__file__)} from the shipped dashboard's queries "
            f"against a live Prometheus (not Grafana), {int(t1 - t0)} s of test traffic")
    page = os.path.join(workdir, "dashboard-preview.html")
    with open(page, "w") as f:
        f.write(preview.page(dashboard, results, t0, t1, note))
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    size = (24 * preview.COL + 12, bottom * preview.ROW + 40)
    shot = os.path.join(workdir, "dashboard.png")
    chromium(workdir, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}", f"file://{page}")
    assert png_size(shot) == size
    assert 20_000 < os.path.getsize(shot) < 600_000, os.path.getsize(shot)
    keep(shot, "dashboard.png")


def test_the_rules_load_and_an_upstream_refusing_connections_is_pending(observed, workdir):
    rc, prom, _, _ = observed
    groups = prom.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert {r["name"] for r in rules} >= {"RegcacheUpstreamDown", "RegcacheDiskNearlyFull"}, rules
    unhealthy = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    assert not unhealthy, unhealthy

    def pending():
        alerts = prom.api("alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "RegcacheUpstreamDown"
                and a["labels"].get("upstream") == "ghcr.io" and a["state"] == "pending"]
    wait_until(pending, 30, "RegcacheUpstreamDown pending for ghcr.io")
    # The data directory's file system may really be nearly full on the machine running this.
    fs = os.statvfs(rc.data_dir)
    disk_full = fs.f_bavail / fs.f_blocks < 0.05
    firing = [a["labels"]["alertname"] for a in prom.api("alerts")["alerts"]
              if a["labels"].get("upstream") != "ghcr.io"]
    assert sorted(firing) == (["RegcacheDiskNearlyFull"] if disk_full else []), \
        f"alerts about what works (data_dir's file system {fs.f_bavail / fs.f_blocks:.1%} free): {firing}"

    shot = os.path.join(workdir, "alerts.png")
    size = (1200, 900)
    chromium(workdir, f"--screenshot={shot}", f"--window-size={size[0]},{size[1]}",
             f"http://127.0.0.1:{prom.port}/classic/alerts")
    assert png_size(shot) == size
    assert 20_000 < os.path.getsize(shot) < 600_000, os.path.getsize(shot)
    keep(shot, "alerts.png")


def keep(shot, name):
    out = os.environ.get("E2E_DOCS_SCREENSHOTS")
    if out:
        shutil.copyfile(shot, os.path.join(out, name))
