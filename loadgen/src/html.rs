//! A self-contained HTML report: the latency percentile distribution of one
//! or more runs plotted as inline SVG (x: percentile on a "nines" scale,
//! y: latency on a log scale), and a table of their figures. No script, no
//! external resource: the file renders offline in any browser.

use std::fmt::Write as _;

use serde_json::Value;

const W: f64 = 900.0;
const H: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 60.0;
const COLORS: [&str; 8] = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
/// The x axis ends at five nines; the max is drawn at its right edge.
const MAX_NINES: f64 = 5.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Quantile → x in "nines" (0.9 → 1, 0.99 → 2, …), capped.
fn nines(q: f64) -> f64 {
    if q >= 1.0 {
        MAX_NINES
    } else {
        (-(1.0 - q).log10()).clamp(0.0, MAX_NINES)
    }
}

/// The page for `runs` (JSON reports of the loadgen).
pub fn page(title: &str, runs: &[Value]) -> String {
    let curves: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .map(|r| {
            let label = r["label"].as_str().unwrap_or("run").to_string();
            let pts = r["latency_us"]["curve"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?.max(1.0))))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            (label, pts)
        })
        .collect();
    let all = curves.iter().flat_map(|(_, p)| p.iter().map(|&(_, v)| v));
    let (lo, hi) = all.fold((f64::MAX, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo_exp, hi_exp) = (lo.min(hi).log10().floor(), hi.log10().ceil().max(lo.log10().floor() + 1.0));
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |q: f64| LEFT + nines(q) / MAX_NINES * pw;
    let y = |v: f64| TOP + ph - (v.log10() - lo_exp) / (hi_exp - lo_exp) * ph;

    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(svg, r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#999"/>"##);
    for (q, name) in
        [(0.0, "p0"), (0.5, "p50"), (0.9, "p90"), (0.99, "p99"), (0.999, "p99.9"), (0.9999, "p99.99"), (1.0, "max")]
    {
        let xv = if q == 0.0 { LEFT } else { x(q) };
        let _ = write!(
            svg,
            r##"<line x1="{xv:.1}" y1="{TOP}" x2="{xv:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{name}</text>"##,
            TOP + ph,
            TOP + ph + 18.0
        );
    }
    let mut e = lo_exp;
    while e <= hi_exp {
        let yv = y(10f64.powf(e));
        let label = match 10f64.powf(e) {
            v if v >= 1e6 => format!("{} s", v / 1e6),
            v if v >= 1e3 => format!("{} ms", v / 1e3),
            v => format!("{v} µs"),
        };
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" y1="{yv:.1}" x2="{:.1}" y2="{yv:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            yv + 4.0
        );
        e += 1.0;
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile (publish → deliver latency, log "nines" scale)</text>"#,
        LEFT + pw / 2.0,
        H - 15.0
    );
    for (k, (label, pts)) in curves.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        let path: Vec<String> = pts.iter().map(|&(q, v)| format!("{:.1},{:.1}", x(q), y(v))).collect();
        let _ = write!(svg, r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#, path.join(" "));
        let ly = TOP + 16.0 + 18.0 * k as f64;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="3"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            LEFT + pw + 12.0,
            LEFT + pw + 32.0,
            LEFT + pw + 38.0,
            ly + 4.0,
            esc(label)
        );
    }
    svg.push_str("</svg>");

    let mut rows = String::new();
    for r in runs {
        let l = &r["latency_us"];
        let f = |v: &Value| v.as_f64().map(|x| format!("{x:.0}")).unwrap_or_default();
        let cpu = r["server"]["cpu_us_per_delivery"].as_f64().map(|x| format!("{x:.3}")).unwrap_or_default();
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(r["label"].as_str().unwrap_or("")),
            esc(r["config"]["scenario"].as_str().unwrap_or("")),
            f(&r["deliveries_per_sec"]),
            f(&l["p50"]),
            f(&l["p90"]),
            f(&l["p99"]),
            f(&l["p999"]),
            f(&l["max"]),
            l["samples"],
            cpu,
            if r["verify"]["ok"].as_bool() == Some(true) { "OK".to_string() } else { format!("lost {}", r["verify"]["lost"]) },
        );
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:sans-serif;margin:24px}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}</style>
</head><body>
<h1>{t}</h1>
<p>Publish → deliver latency measured by shardcast-loadgen (hdrhistogram, µs) on one machine; the loadgen and the servers share its cores, so compare runs within one report.</p>
{svg}
<table><tr><th>system</th><th>scenario</th><th>deliveries/s</th><th>p50 µs</th><th>p90 µs</th><th>p99 µs</th><th>p99.9 µs</th><th>max µs</th><th>samples</th><th>server CPU µs/delivery</th><th>verify</th></tr>
{rows}</table>
</body></html>
"#,
        t = esc(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_every_run_and_escapes_labels() {
        let run = |label: &str, scale: u64| {
            serde_json::json!({
                "label": label, "config": {"scenario": "fanout"}, "deliveries_per_sec": 1000.0,
                "latency_us": {"p50": 10 * scale, "p90": 20 * scale, "p99": 40 * scale, "p999": 80 * scale, "max": 90 * scale,
                               "samples": 100, "curve": [[0.0, scale], [0.5, 10 * scale], [0.99, 40 * scale], [1.0, 90 * scale]]},
                "verify": {"ok": true, "lost": 0}, "server": null,
            })
        };
        let html = page("t", &[run("a<b", 1), run("redis", 100)]);
        assert_eq!(html.matches("<polyline").count(), 2);
        assert!(html.contains("a&lt;b") && !html.contains("a<b"));
        assert!(html.contains("ms") && html.contains("µs"));
        assert!(html.trim_end().ends_with("</html>"));
    }

    #[test]
    fn nines_scale() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(0.99) - 2.0).abs() < 1e-9);
        assert_eq!(nines(1.0), MAX_NINES);
    }
}
