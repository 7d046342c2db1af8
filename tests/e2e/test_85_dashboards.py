"""deploy/grafana/regcache-dashboard.json and deploy/prometheus/regcache-rules.yaml work as shipped:
every metric name in every panel, template variable and rule expression is one a running regcache
exports on /metrics (counters as `_total`, histograms as `_bucket`/`_sum`/`_count`), every exported
metric has HELP text, the dashboard has the panels operators ask for, and `promtool check rules`
passes.  Only a regcache with no upstream reachable is started: what it exports does not depend on
traffic (every metric family is listed, with HELP and TYPE, before its first sample; a
`label_values(metric, label)` variable is checked by its metric)."""
import json
import os
import re

import pytest
import yaml

from e2elib.procs import ManagedProcess
from e2elib.regcache import REPO_ROOT, regcache_bin
from e2elib.util import free_port, http_request, require_tool, run, wait_until

DASHBOARD = os.path.join(REPO_ROOT, "deploy", "grafana", "regcache-dashboard.json")
RULES = os.path.join(REPO_ROOT, "deploy", "prometheus", "regcache-rules.yaml")

# PromQL's words that are not metric names: aggregations, functions, operators and modifiers
FUNCTIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "predict_linear", "histogram_quantile",
    "clamp_min", "clamp_max", "clamp", "abs", "ceil", "floor", "round", "absent", "absent_over_time",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "label_replace", "label_join", "vector", "scalar", "time", "timestamp", "sort", "sort_desc", "changes", "resets",
}
KEYWORDS = {"and", "or", "unless", "offset", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"}


@pytest.fixture(scope="module")
def exported(workdir):
    """{sample name: HELP text} of what a running regcache exports (suffixes included)."""
    d = os.path.join(workdir, "dashboards")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    config = os.path.join(d, "regcache.toml")
    with open(config, "w") as f:
        f.write(f'listen = "127.0.0.1:{port}"\ndata_dir = "{d}/data"\nmax_size = "1GiB"\n\n'
                '[[upstream]]\nname = "docker.io"\nurl = "http://127.0.0.1:9"\n')
    proc = ManagedProcess("regcache-dashboards", [regcache_bin(), "serve", "--config", config],
                          os.path.join(d, "regcache.log"))
    proc.start()
    try:
        def scraped():
            proc.check_alive()
            status, _, body = http_request("127.0.0.1", port, "GET", "/metrics", timeout=5)
            return status == 200 and body.decode()
        text = wait_until(scraped, 30, "regcache's /metrics")
    finally:
        proc.stop()
    helps, types = {}, {}
    for line in text.splitlines():
        m = re.match(r"# (HELP|TYPE) (\S+) ?(.*)$", line)
        if m:
            (helps if m[1] == "HELP" else types)[m[2]] = m[3]
    assert types, text
    names = {}
    for family, kind in types.items():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        for s in suffixes:
            names[family + s] = helps.get(family, "")
    return names


def metric_names(expr):
    """The metric names a PromQL expression reads; fails on a word that is neither a metric nor
    PromQL's own."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # strings (label values, regexes)
    e = re.sub(r"\{[^}]*\}", "", e)                        # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                       # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    e = re.sub(r"\$\w+", "", e)                            # Grafana's variables
    names = set()
    for m in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        word = m[0]
        if word in KEYWORDS:
            continue
        if re.match(r"\s*\(", e[m.end():]):
            assert word in FUNCTIONS, f"unknown PromQL function {word!r} in {expr}"
        else:
            names.add(word)
    return names


def dashboard_queries():
    """(where, expression) of every query of the dashboard: panels (rows' too) and variables."""
    with open(DASHBOARD) as f:
        dash = json.load(f)
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((f"panel {p['title']!r}", t["expr"]))
            walk(p.get("panels", []))
    walk(dash["panels"])
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            # label_values(<series selector>, <label>): the selector is PromQL, the label is not
            m = re.fullmatch(r"\s*label_values\((.*),\s*[a-zA-Z_]\w*\s*\)\s*", q)
            out.append((f"variable {v['name']!r}", m[1] if m else q))
    return dash, out


def rule_queries():
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    return [(f"rule {r.get('alert') or r.get('record')!r}", r["expr"])
            for g in rules["groups"] for r in g["rules"]]


def test_every_metric_has_help_text(exported):
    missing = sorted(n for n, h in exported.items() if not h.strip())
    assert not missing, f"metrics without HELP text: {missing}"


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_metric_used_is_exported(exported, source):
    queries = dashboard_queries()[1] if source == "dashboard" else rule_queries()
    assert queries
    unknown = []
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        unknown += [f"{where}: {n}" for n in sorted(names) if n not in exported]
    assert not unknown, "not exported by regcache:\n" + "\n".join(unknown) + \
        "\nexported: " + ", ".join(sorted(exported))


def test_the_name_check_can_fail():
    assert metric_names('sum by (le) (rate(regcache_x_bucket{a="b"}[5m])) / on (i) regcache_y offset 1d') == \
        {"regcache_x_bucket", "regcache_y"}
    assert metric_names("(regcache_a > 0) and (regcache_b < 1) unless on (x) regcache_c") == \
        {"regcache_a", "regcache_b", "regcache_c"}
    with pytest.raises(AssertionError):
        metric_names("rat(regcache_x[5m])")


def test_the_dashboard_answers_the_operators_questions():
    dash, queries = dashboard_queries()
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for words in ["hit ratio by requests", "hit ratio by bytes", "bytes saved", "upstream requests by status",
                  "upstream latency", "429", "rate limit remaining", "fills in progress", "coalesced",
                  "max_size", "evictions", "bucket down"]:
        assert words in titles, f"no panel about {words!r}: {titles}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
        assert p.get("description"), f"panel {p['title']!r} says what it shows"
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "instance"}
    assert all('instance=~"$instance"' in e for w, e in queries if w.startswith("panel")), \
        "every panel follows the instance variable"


def test_rules_cover_the_alerts_and_promtool_accepts_them(workdir):
    promtool = require_tool("promtool", "prometheus")
    alerts = {w.split("'")[1] for w, _ in rule_queries()}
    for a in ["RegcacheUpstreamDown", "RegcacheRateLimitNearlySpent", "RegcacheDiskNearlyFull",
              "RegcacheHitRatioCollapsed"]:
        assert a in alerts, alerts
    res = run([promtool, "check", "rules", RULES], check=False, timeout=60)
    assert res.rc == 0 and "SUCCESS" in res.out, res
