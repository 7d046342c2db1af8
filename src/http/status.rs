//! `/status.json` and `/status`: the status page, served where `/metrics` is. The snapshot is made
//! from the board of tallies (`status::Board`), the store and the running fills; the page is plain
//! HTML that refreshes itself, so it works with JavaScript off, every value in it escaped.

use std::fmt::Write as _;
use std::time::Duration;

use crate::status::{FillStatus, FleetMember, FleetStatus, SharedStatus, Snapshot, Stored};

use super::App;

impl App {
    /// What `/status.json` answers, read now.
    pub fn status(&self) -> Snapshot {
        let store = self.cache.store();
        let board = self.metrics.board();
        let (blobs, manifests) = store.index().counts();
        let stored = Stored { size_bytes: store.index().used_bytes(), max_size_bytes: store.max_size(), blobs, manifests };
        let fills = self.cache.fills().running().into_iter().map(|(upstream, fill)| {
            let (bytes_done, bytes_total) = fill.progress();
            FillStatus {
                upstream: upstream.to_string(),
                repository: fill.repository().to_string(),
                digest: fill.digest().to_string(),
                bytes_done,
                bytes_total,
                clients: fill.readers(),
            }
        });
        let mut fills: Vec<_> = fills.collect();
        fills.sort_by(|a, b| (&a.upstream, &a.repository, &a.digest).cmp(&(&b.upstream, &b.repository, &b.digest)));
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: board.uptime_seconds(),
            cache: board.cache(stored),
            upstreams: self.cache.upstreams().iter().map(|u| board.upstream(u.config().name.as_str(), &u.config().url)).collect(),
            fills,
            top_repositories: board.top_repositories(),
            shared: store.shared_state().map(|b| SharedStatus { state: if b.down { "down" } else { "up" }, size_bytes: b.known_bytes }),
            fleet: self.fleet.as_ref().map(|fleet| fleet_status(fleet.members())),
        }
    }
}

/// The fleet's members and their states now.
fn fleet_status(members: &crate::fleet::Members) -> FleetStatus {
    let state = |up: bool| if up { "up" } else { "down" }.to_owned();
    FleetStatus {
        node: members.node().to_string(),
        members: members.states().into_iter().map(|(m, up)| FleetMember { node: m.to_string(), state: state(up) }).collect(),
    }
}

/// The snapshot as JSON.
pub fn json(snapshot: &Snapshot) -> String {
    // Serializing plain structs of strings and numbers into a String cannot fail; a NaN ratio
    // cannot occur (0 before the first request).
    serde_json::to_string_pretty(snapshot).unwrap_or_else(|_| "{}".to_owned())
}

/// The snapshot as an HTML page that refreshes itself every 5 seconds.
pub fn html(s: &Snapshot) -> String {
    let mut o = String::with_capacity(8192);
    // Writing into a String cannot fail.
    let _ = write_page(&mut o, s);
    o
}

fn write_page(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    write_head(o, s)?;
    write_cache(o, s)?;
    write_upstreams(o, s)?;
    write_fills(o, s)?;
    write_repositories(o, s)?;
    write_shared(o, s)?;
    write_fleet(o, s)?;
    o.push_str("</body></html>\n");
    Ok(())
}

/// The page's head and style, the version and the uptime.
fn write_head(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    o.push_str(concat!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta http-equiv=\"refresh\" content=\"5\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        "<title>regcache status</title><style>",
        "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}",
        "h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}",
        "table{border-collapse:collapse;background:#fff}th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}",
        "th{background:#f0f0f0}td.n{text-align:right;font-variant-numeric:tabular-nums}",
        "code{font-size:.9em}progress{width:14em}.up{color:#176f2c}.down{color:#b00020}.rate_limited{color:#a05a00}",
        ".none{color:#777}</style></head><body>\n",
    ));
    writeln!(
        o,
        "<h1>regcache {}</h1><p>up <span id=\"uptime\">{}</span> &middot; refreshes every 5 s &middot; <a href=\"status.json\">status.json</a></p>",
        esc(s.version),
        esc(&humantime::format_duration(Duration::from_secs(s.uptime_seconds)).to_string())
    )?;
    Ok(())
}

/// The cache: its size, what it holds, requests, hits and bytes.
fn write_cache(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    let c = &s.cache;
    o.push_str("<h2>Cache</h2><table id=\"cache\">\n");
    let max = c.max_size_bytes.map_or_else(|| "unlimited".to_owned(), human);
    let rows = [
        ("Size", format!("{} of {}", human(c.size_bytes), max)),
        ("Blobs", c.blobs.to_string()),
        ("Manifests", c.manifests.to_string()),
        ("Requests (blobs and manifests)", c.requests.to_string()),
        ("Hits", c.hits.to_string()),
        ("Hit ratio", format!("{:.1} %", c.hit_ratio * 100.0)),
        ("Served", human(c.bytes_served)),
        ("From upstream", human(c.bytes_from_upstream)),
    ];
    for (k, v) in rows {
        writeln!(o, "<tr><th>{}</th><td class=\"n\">{}</td></tr>", esc(k), esc(&v))?;
    }
    o.push_str("</table>\n");
    Ok(())
}

/// Each upstream: its state, last error and the rate limit it announced.
fn write_upstreams(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    o.push_str("<h2>Upstreams</h2><table id=\"upstreams\"><tr><th>Name</th><th>URL</th><th>State</th><th>Last error</th><th>Rate limit remaining</th></tr>\n");
    for u in &s.upstreams {
        let err = match &u.last_error {
            Some(e) => format!("{} {}", esc(&e.at), esc(&e.message)),
            None => "<span class=\"none\">none</span>".to_owned(),
        };
        let remaining = u.ratelimit_remaining.map_or_else(|| "<span class=\"none\">unknown</span>".to_owned(), |r| r.to_string());
        let state = u.state.as_str();
        writeln!(
            o,
            "<tr><td>{}</td><td><code>{}</code></td><td class=\"{state}\">{state}</td><td>{err}</td><td class=\"n\">{remaining}</td></tr>",
            esc(&u.name),
            esc(&u.url)
        )?;
    }
    o.push_str("</table>\n");
    Ok(())
}

/// The fills in progress, a progress bar each.
fn write_fills(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    writeln!(o, "<h2>Fills in progress ({})</h2>", s.fills.len())?;
    if s.fills.is_empty() {
        o.push_str("<p id=\"fills\" class=\"none\">No blob is being fetched.</p>\n");
    } else {
        o.push_str("<table id=\"fills\"><tr><th>Upstream</th><th>Repository</th><th>Digest</th><th>Progress</th><th>Clients</th></tr>\n");
        for f in &s.fills {
            let progress = match f.bytes_total {
                Some(total) => format!(
                    "<progress value=\"{}\" max=\"{}\"></progress> {} of {}",
                    f.bytes_done.min(total),
                    total,
                    human(f.bytes_done),
                    human(total)
                ),
                // Without a max, the bar shows that something happens, not how much.
                None => format!("<progress></progress> {}", human(f.bytes_done)),
            };
            writeln!(
                o,
                "<tr class=\"fill\"><td>{}</td><td>{}</td><td><code title=\"{}\">{}</code></td><td>{progress}</td><td class=\"n\">{}</td></tr>",
                esc(&f.upstream),
                esc(&f.repository),
                esc(&f.digest),
                esc(short_digest(&f.digest)),
                f.clients
            )?;
        }
        o.push_str("</table>\n");
    }
    Ok(())
}

/// The most requested repositories.
fn write_repositories(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    o.push_str("<h2>Top repositories</h2>");
    if s.top_repositories.is_empty() {
        o.push_str("<p id=\"repositories\" class=\"none\">No repository requested yet.</p>\n");
    } else {
        o.push_str("<table id=\"repositories\"><tr><th>Upstream</th><th>Repository</th><th>Requests</th><th>Served</th></tr>\n");
        for r in &s.top_repositories {
            writeln!(
                o,
                "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                esc(&r.upstream),
                esc(&r.repository),
                r.requests,
                esc(&human(r.bytes_served))
            )?;
        }
        o.push_str("</table>\n");
    }
    Ok(())
}

/// The shared bucket.
fn write_shared(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    o.push_str("<h2>Bucket</h2>");
    match &s.shared {
        Some(b) => writeln!(
            o,
            "<p id=\"bucket\"><span class=\"{0}\">{0}</span> &middot; {1} known to be in it</p>",
            esc(b.state),
            esc(&human(b.size_bytes))
        )?,
        None => o.push_str("<p id=\"bucket\" class=\"none\">No shared bucket configured.</p>\n"),
    }
    Ok(())
}

/// The fleet's members.
fn write_fleet(o: &mut String, s: &Snapshot) -> std::fmt::Result {
    o.push_str("<h2>Fleet</h2>");
    match &s.fleet {
        Some(f) => {
            writeln!(o, "<p>This node: <code>{}</code></p><table id=\"fleet\"><tr><th>Node</th><th>State</th></tr>", esc(&f.node))?;
            for m in &f.members {
                writeln!(o, "<tr><td><code>{}</code></td><td>{}</td></tr>", esc(&m.node), esc(&m.state))?;
            }
            o.push_str("</table>\n");
        }
        None => o.push_str("<p id=\"fleet\" class=\"none\">Not in a fleet.</p>\n"),
    }
    Ok(())
}

/// `sha256:0123456789ab…`: enough to tell blobs apart on the page (the whole digest is its title).
fn short_digest(d: &str) -> &str {
    let end = d.find(':').map_or(0, |i| i + 1).saturating_add(12);
    d.get(..end).unwrap_or(d)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `s` safe in HTML text and in a quoted attribute.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{CacheStatus, LastError, RepositoryStatus, UpstreamState, UpstreamStatus};

    #[test]
    fn sizes_read_in_binary_units() {
        let cases = [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (5 << 20, "5.0 MiB"), (u64::MAX, "16.0 EiB")];
        for (n, want) in cases {
            assert_eq!(human(n), want, "{n}");
        }
    }

    #[test]
    fn digests_are_shortened_on_the_page() {
        let cases = [("sha256:0123456789abcdef", "sha256:0123456789ab"), ("short", "short"), ("sha256:01", "sha256:01")];
        for (d, want) in cases {
            assert_eq!(short_digest(d), want);
        }
    }

    #[test]
    fn everything_on_the_page_is_escaped() {
        let evil = "<script>alert('x')</script>&\"";
        let s = Snapshot {
            version: "1.0",
            uptime_seconds: 3661,
            cache: CacheStatus {
                size_bytes: 2048,
                max_size_bytes: None,
                blobs: 1,
                manifests: 2,
                requests: 4,
                hits: 3,
                hit_ratio: 0.75,
                bytes_served: 1,
                bytes_from_upstream: 0,
            },
            upstreams: vec![UpstreamStatus {
                name: evil.into(),
                url: evil.into(),
                state: UpstreamState::Down,
                last_error: Some(LastError { at: evil.into(), message: evil.into() }),
                ratelimit_remaining: Some(3),
            }],
            fills: vec![FillStatus {
                upstream: evil.into(),
                repository: evil.into(),
                digest: evil.into(),
                bytes_done: 10,
                bytes_total: Some(100),
                clients: 2,
            }],
            top_repositories: vec![RepositoryStatus { upstream: evil.into(), repository: evil.into(), requests: 1, bytes_served: 1 }],
            shared: None,
            fleet: None,
        };
        let page = html(&s);
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("'x'"), "{page}");
        assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"), "{page}");
        assert!(page.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(page.contains("<progress value=\"10\" max=\"100\"></progress> 10 B of 100 B"), "{page}");
        assert!(page.contains("75.0 %") && page.contains("1h 1m 1s") && page.contains("2.0 KiB of unlimited"), "{page}");

        // The shared tier keeps its operator-visible name, in the JSON as on the page.
        let s = Snapshot { shared: Some(SharedStatus { state: "up", size_bytes: 5 }), ..s };
        let v: serde_json::Value = serde_json::from_str(&json(&s)).unwrap();
        assert_eq!(v["bucket"], serde_json::json!({"state": "up", "size_bytes": 5}));
        assert!(html(&s).contains("<p id=\"bucket\"><span class=\"up\">up</span> &middot; 5 B known to be in it</p>"));
    }
}
