//! Self-contained HTML reports: one file each, no scripts, no network (inline CSS and SVG),
//! so a report opens offline, from a CI artifact, years later.
//!
//! This module holds the page frame and the drawing helpers the reports share; [`run`]
//! renders one scenario run, [`suite`] a suite's grid. `cargo xtask bench` draws its page with
//! the same helpers.
//!
//! Elements carry `class` and `data-*` attributes naming what they show (`data-stage`,
//! `data-verdict`, …): the tests read the page through a browser's DOM by those names, and a
//! reader's own tools can too.

use std::fmt::Write as _;

pub mod browser;
pub mod run;
pub mod suite;

/// Escapes text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:1200px;padding:0 1em;color:#1d1d1f}
h1{font-size:1.5em;margin:.2em 0}h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
h3{font-size:1em;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f4f4f6}td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7d27;font-weight:600}.fail{color:#c0142b;font-weight:600}.na{color:#777}
.badge{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.badge.pass{background:#0a7d27;color:#fff}.badge.fail{background:#c0142b;color:#fff}
pre,code{font:12px/1.4 ui-monospace,monospace}pre{background:#f7f7f9;padding:6px;overflow-x:auto;margin:.3em 0}
.add{color:#0a7d27}.del{color:#c0142b}.same{color:#555}
.muted{color:#666}svg{display:block;margin:.3em 0}
.hists{display:flex;flex-wrap:wrap;gap:10px}
td.cell{min-width:9em}td.cell.pass{background:#e3f5e6}td.cell.fail{background:#fbe1e4}td.cell.error{background:#fde9c8}
td.cell a{color:inherit}
";

/// A whole page: title, inline style, body.
pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\"><title>{}</title>\
         <style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n",
        esc(title)
    )
}

/// `PASS`/`FAIL` as a coloured word.
pub fn verdict(passed: bool) -> &'static str {
    if passed {
        "<span class=\"pass\">PASS</span>"
    } else {
        "<span class=\"fail\">FAIL</span>"
    }
}

/// A duration in ns, with a unit a person reads (`850 ns`, `12.3 µs`, `4.1 ms`).
pub fn fmt_ns(ns: f64) -> String {
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A table from a header and rows of already-escaped cells.
pub fn table(class: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("<table class=\"{class}\"><tr>");
    for h in head {
        let _ = write!(s, "<th>{}</th>", esc(h));
    }
    s.push_str("</tr>\n");
    for r in rows {
        s.push_str("<tr>");
        for c in r {
            s.push_str(c);
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

/// A cell of text.
pub fn td(text: &str) -> String {
    format!("<td>{}</td>", esc(text))
}

/// A right-aligned number cell.
pub fn td_num(text: &str) -> String {
    format!("<td class=\"num\">{}</td>", esc(text))
}

/// One row of a bar chart: a label, every measured value, and the value the bar shows.
#[derive(Clone, Debug)]
pub struct BarRow {
    /// What was measured.
    pub label: String,
    /// Every repetition (drawn as dots on the bar).
    pub values: Vec<f64>,
    /// The bar's length (the median, usually).
    pub bar: f64,
}

/// A horizontal bar chart: one bar per row at its median, every repetition as a dot, the
/// median as a tick; the figure written beside the bar.
pub fn bar_chart(class: &str, rows: &[BarRow], unit: &str) -> String {
    const LABEL_W: f64 = 290.0;
    const PLOT_W: f64 = 560.0;
    const ROW_H: f64 = 26.0;
    let max = rows
        .iter()
        .flat_map(|r| r.values.iter().chain([&r.bar]))
        .copied()
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let scale = if max > 0.0 { PLOT_W / max } else { 0.0 };
    let h = ROW_H * rows.len() as f64 + 24.0;
    let mut s = format!(
        "<svg class=\"{class}\" width=\"{}\" height=\"{h}\" viewBox=\"0 0 {} {h}\" role=\"img\">",
        LABEL_W + PLOT_W + 110.0,
        LABEL_W + PLOT_W + 110.0
    );
    for (i, r) in rows.iter().enumerate() {
        let y = i as f64 * ROW_H + 4.0;
        let w = if r.bar.is_finite() {
            r.bar * scale
        } else {
            0.0
        };
        let _ = write!(
            s,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"12\">{}</text>\
             <rect class=\"bar\" data-label=\"{}\" data-value=\"{:.4}\" x=\"{LABEL_W}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{:.1}\" fill=\"#6a9fd8\"/>\
             <line class=\"median\" x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{y:.1}\" y2=\"{:.1}\" stroke=\"#123\" stroke-width=\"2\"/>",
            LABEL_W - 8.0,
            y + ROW_H * 0.6,
            esc(&r.label),
            esc(&r.label),
            r.bar,
            ROW_H - 8.0,
            y + ROW_H - 8.0,
            x = LABEL_W + w,
        );
        for v in r.values.iter().filter(|v| v.is_finite()) {
            let _ = write!(
                s,
                "<circle class=\"rep\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"3.5\" fill=\"#fff\" stroke=\"#123\"/>",
                LABEL_W + v * scale,
                y + (ROW_H - 8.0) / 2.0
            );
        }
        let _ = write!(
            s,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\">{:.3} {}</text>",
            LABEL_W + PLOT_W + 6.0,
            y + ROW_H * 0.6,
            r.bar,
            esc(unit)
        );
    }
    let _ = write!(
        s,
        "<text x=\"{LABEL_W}\" y=\"{:.1}\" font-size=\"11\" fill=\"#666\">0</text>\
         <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"11\" fill=\"#666\" text-anchor=\"end\">{max:.3} {}</text></svg>",
        h - 4.0,
        LABEL_W + PLOT_W,
        h - 4.0,
        esc(unit)
    );
    s
}

/// A latency histogram from power-of-two buckets `(upper bound ns, count)`: one column per
/// bucket from the lowest to the highest that holds packets, empty ones included.
pub fn histogram(title: &str, stage: &str, buckets: &[(u64, u64)]) -> String {
    const W: f64 = 260.0;
    const H: f64 = 110.0;
    let (Some(lo), Some(hi)) = (
        buckets.iter().map(|b| b.0).min(),
        buckets.iter().map(|b| b.0).max(),
    ) else {
        return format!(
            "<div class=\"hist empty\" data-stage=\"{}\"><h3>{}</h3><p class=\"na\">no packets</p></div>",
            esc(stage),
            esc(title)
        );
    };
    let mut cols = vec![];
    let mut b = lo.max(1);
    while b <= hi {
        cols.push((
            b,
            buckets
                .iter()
                .filter(|x| x.0 == b)
                .map(|x| x.1)
                .sum::<u64>(),
        ));
        b = b.saturating_mul(2);
        if b == u64::MAX {
            break;
        }
    }
    let max = cols.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
    let cw = W / cols.len() as f64;
    let mut s = format!(
        "<div class=\"hist\" data-stage=\"{}\"><h3>{}</h3><svg class=\"histogram\" width=\"{W}\" height=\"{}\" viewBox=\"0 0 {W} {}\" role=\"img\">",
        esc(stage),
        esc(title),
        H + 18.0,
        H + 18.0
    );
    for (i, (upper, n)) in cols.iter().enumerate() {
        let h = (*n as f64 / max * (H - 4.0)).max(if *n > 0 { 1.0 } else { 0.0 });
        let _ = write!(
            s,
            "<rect class=\"bucket\" data-le-ns=\"{upper}\" data-count=\"{n}\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{h:.1}\" fill=\"#6a9fd8\"><title>≤ {}: {n} packets</title></rect>",
            i as f64 * cw + 1.0,
            H - h,
            (cw - 2.0).max(1.0),
            fmt_ns(*upper as f64)
        );
    }
    let _ = write!(
        s,
        "<text x=\"0\" y=\"{:.0}\" font-size=\"10\" fill=\"#666\">≤{}</text><text x=\"{W}\" y=\"{:.0}\" font-size=\"10\" fill=\"#666\" text-anchor=\"end\">≤{}</text></svg></div>",
        H + 14.0,
        fmt_ns(lo as f64),
        H + 14.0,
        fmt_ns(hi as f64)
    );
    s
}

/// Two states of a list as one listing: lines only in `a` marked `-`, only in `b` marked
/// `+`, the rest plain, in `b`'s order with `a`'s removed lines where they stood.
pub fn line_diff(a: &[String], b: &[String]) -> String {
    let mut s = String::from("<pre class=\"diff\">");
    let mut rows: Vec<(char, &str)> = vec![];
    let mut bi = 0;
    for l in a {
        if b.contains(l) {
            // Lines of `b` before this shared one that `a` lacks come first.
            while bi < b.len() && &b[bi] != l {
                if !a.contains(&b[bi]) {
                    rows.push(('+', &b[bi]));
                }
                bi += 1;
            }
            rows.push((' ', l));
            bi += 1;
        } else {
            rows.push(('-', l));
        }
    }
    for l in b.iter().skip(bi) {
        if !a.contains(l) {
            rows.push(('+', l));
        }
    }
    if rows.is_empty() {
        s.push_str("<span class=\"na\">(none)</span>");
    }
    for (m, l) in rows {
        let class = match m {
            '+' => "add",
            '-' => "del",
            _ => "same",
        };
        let _ = writeln!(s, "<span class=\"{class}\">{m} {}</span>", esc(l));
    }
    s.push_str("</pre>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_diff_marks_what_came_and_went() {
        let d = line_diff(
            &lines(&["default via 1", "198.18.1.0/24 dev eth0"]),
            &lines(&["0.0.0.0/1 dev tun0", "198.18.1.0/24 dev eth0", "x"]),
        );
        assert!(
            d.contains("<span class=\"del\">- default via 1</span>"),
            "{d}"
        );
        assert!(d.contains("<span class=\"add\">+ 0.0.0.0/1 dev tun0</span>"));
        assert!(d.contains("<span class=\"same\">  198.18.1.0/24 dev eth0</span>"));
        assert!(d.contains("<span class=\"add\">+ x</span>"));
        assert!(line_diff(&[], &[]).contains("(none)"));
    }

    #[test]
    fn text_is_escaped_and_buckets_fill_the_range() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        let h = histogram("decrypt", "decrypt", &[(512, 3), (4096, 10)]);
        // 512, 1024, 2048, 4096: four columns, two of them empty.
        assert_eq!(h.matches("class=\"bucket\"").count(), 4);
        assert!(h.contains("data-le-ns=\"2048\" data-count=\"0\""));
        assert!(histogram("x", "x", &[]).contains("no packets"));
        let c = bar_chart(
            "t",
            &[BarRow {
                label: "a<b".into(),
                values: vec![1.0, 2.0, 3.0],
                bar: 2.0,
            }],
            "Gbit/s",
        );
        assert_eq!(c.matches("class=\"rep\"").count(), 3);
        assert!(c.contains("a&lt;b"));
    }
}
