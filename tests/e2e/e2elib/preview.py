"""A static preview of a Grafana dashboard: its panels laid out by their gridPos, each with its
title and an inline SVG line chart (or, for a stat panel, its last value) of the query results
Prometheus gave for its targets.  Hand-written HTML and SVG, no script: chromium screenshots it.
It is not Grafana, and does not try to look exactly like it."""
import html
import math

COL = 50          # px per grid column (24 columns)
ROW = 26          # px per grid row
PALETTE = ["#73bf69", "#f2cc0c", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]


def human(value, unit):
    """`value` as the panel's unit says it should be read."""
    if value is None or math.isnan(value):
        return "–"
    if unit == "percentunit":
        return f"{value * 100:.0f}%"
    if unit in ("bytes", "Bps"):
        suffix = "/s" if unit == "Bps" else ""
        for word in ["B", "KiB", "MiB", "GiB", "TiB"]:
            if abs(value) < 1024 or word == "TiB":
                return (f"{value:.0f} {word}" if word == "B" else f"{value:.1f} {word}") + suffix
            value /= 1024
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    suffix = {"reqps": " req/s", "ops": " ops/s"}.get(unit, "")
    if abs(value) >= 1000:
        return f"{value / 1000:.1f}k{suffix}"
    return f"{value:.2f}".rstrip("0").rstrip(".") + suffix


def legend(fmt, labels):
    """Grafana's legendFormat: `{{label}}` replaced by the series' label."""
    out = fmt or ""
    for k, v in labels.items():
        out = out.replace("{{" + k + "}}", v)
    while "{{" in out:
        start = out.index("{{")
        end = out.find("}}", start)
        out = out[:start] + (out[end + 2:] if end >= 0 else "")
    return out.strip() or ", ".join(f"{k}={v}" for k, v in labels.items() if k != "__name__") or "value"


def chart(series, width, height, t0, t1, unit):
    """An SVG of `series` ([(name, [(t, value)])]) over [t0, t1]."""
    values = [v for _, pts in series for _, v in pts if not math.isnan(v) and not math.isinf(v)]
    if not values:
        return (f'<svg width="{width}" height="{height}"><text x="{width / 2}" y="{height / 2}" '
                f'class="nodata" text-anchor="middle">No data</text></svg>')
    lo, hi = min(0.0, min(values)), max(values)
    if unit == "percentunit":
        lo, hi = 0.0, max(1.0, hi)
    if hi == lo:
        hi = lo + 1
    left, bottom = 70, 14
    w, h = width - left - 6, height - bottom - 4

    def x(t):
        return left + (t - t0) / max(t1 - t0, 1e-9) * w

    def y(v):
        return 4 + h - (v - lo) / (hi - lo) * h
    parts = [f'<svg width="{width}" height="{height}">']
    for frac in (0, 0.5, 1):
        v = lo + (hi - lo) * frac
        parts.append(f'<line x1="{left}" x2="{left + w}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 4}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">'
                     f'{html.escape(human(v, unit))}</text>')
    for i, (name, pts) in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        runs, run = [], []
        for t, v in pts:
            if math.isnan(v) or math.isinf(v):
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(t):.1f},{y(v):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                px, py = r[0].split(",")
                parts.append(f'<circle cx="{px}" cy="{py}" r="2" fill="{colour}"/>')
            else:
                parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{" ".join(r)}"/>')
    parts.append("</svg>")
    return "".join(parts)


def panel_html(panel, series, t0, t1):
    """One panel as a positioned <div>: `series` is [(name, [(t, value)])] of all its targets."""
    g = panel["gridPos"]
    left, top, width, height = g["x"] * COL, g["y"] * ROW, g["w"] * COL, g["h"] * ROW
    style = f"left:{left}px;top:{top}px;width:{width - 6}px;height:{height - 6}px"
    title = html.escape(panel["title"])
    if panel["type"] == "row":
        return f'<div class="row" style="{style}">{title}</div>'
    unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "short")
    body_h = height - 6 - 24
    if panel["type"] == "stat":
        last = next((v for _, pts in series for _, v in reversed(pts) if not math.isnan(v)), None)
        spark = chart(series[:1], width - 6, max(body_h - 60, 20), t0, t1, unit) if series else ""
        body = f'<div class="stat">{html.escape(human(last, unit))}</div>{spark}'
    else:
        legend_h = 16 * min(len(series), 3)
        body = chart(series, width - 6, body_h - legend_h, t0, t1, unit)
        items = [f'<span><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(name)}</span>'
                 for i, (name, _) in enumerate(series)]
        body += f'<div class="legend">{"".join(items)}</div>'
    return f'<div class="panel" style="{style}"><div class="title">{title}</div>{body}</div>'


def page(dashboard, results, t0, t1, note):
    """The whole preview: `results` maps a panel id to its series."""
    panels = dashboard["panels"]
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    divs = "\n".join(panel_html(p, results.get(p["id"], []), t0, t1) for p in panels)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(dashboard['title'])} (preview)</title>
<style>
body {{ margin: 0; background: #111217; color: #ccccdc; font: 12px sans-serif; }}
header {{ height: 34px; padding: 8px 12px 0; font-size: 16px; }}
header small {{ color: #8e8e99; font-size: 11px; margin-left: 10px; }}
main {{ position: relative; height: {bottom * ROW}px; margin: 0 6px; }}
.panel {{ position: absolute; background: #181b1f; border: 1px solid #2c3235; border-radius: 2px; overflow: hidden; }}
.row {{ position: absolute; font-size: 14px; font-weight: bold; padding-top: 4px; }}
.title {{ height: 20px; padding: 4px 8px 0; font-weight: bold; white-space: nowrap; overflow: hidden; }}
.stat {{ font-size: 30px; font-weight: bold; color: #73bf69; text-align: center; padding: 10px 0; }}
.legend {{ padding: 0 8px; height: 48px; overflow: hidden; font-size: 11px; }}
.legend span {{ margin-right: 10px; white-space: nowrap; display: inline-block; }}
.legend i {{ display: inline-block; width: 10px; height: 3px; margin: 0 4px 3px 0; }}
.grid {{ stroke: #2c3235; }} .axis {{ fill: #8e8e99; font-size: 10px; }} .nodata {{ fill: #8e8e99; font-size: 13px; }}
</style></head>
<body><header>{html.escape(dashboard['title'])}<small>{html.escape(note)}</small></header>
<main>
{divs}
</main></body></html>
"""
