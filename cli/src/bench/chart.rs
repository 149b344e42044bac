//! Samples of the gateway over time, written as CSV and drawn as an SVG chart: resident
//! memory on the left axis, live sessions on the right, time along the bottom.

use std::fmt::Write as _;

/// One reading of the gateway's metrics during a run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample {
    /// Seconds since the run started.
    pub t: f64,
    /// `meshgate_resident_memory_bytes`.
    pub resident: u64,
    /// `meshgate_clients`.
    pub clients: u64,
    /// Work done so far (cycles, messages), for the CSV.
    pub done: u64,
}

const WIDTH: f64 = 820.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 50.0;
const MEMORY_COLOR: &str = "#1f77b4";
const SESSIONS_COLOR: &str = "#e6550d";
const MIB: f64 = 1024.0 * 1024.0;

/// The samples as CSV: `t_s,resident_bytes,clients,DONE`, one line each.
pub fn csv(samples: &[Sample], done: &str) -> String {
    let mut out = format!("t_s,resident_bytes,clients,{done}\n");
    for s in samples {
        let _ = writeln!(out, "{:.3},{},{},{}", s.t, s.resident, s.clients, s.done);
    }
    out
}

/// The chart, a self-contained SVG document.
pub fn svg(samples: &[Sample], title: &str) -> String {
    let t_max = samples.iter().map(|s| s.t).fold(0.0, f64::max).max(1e-3);
    let mem: Vec<f64> = samples.iter().map(|s| s.resident as f64 / MIB).collect();
    let mem_lo = mem.iter().copied().fold(f64::INFINITY, f64::min);
    let mem_hi = mem.iter().copied().fold(0.0, f64::max);
    let (mem_lo, mem_hi) = if mem.is_empty() {
        (0.0, 1.0)
    } else {
        let pad = ((mem_hi - mem_lo) * 0.1).max(1.0);
        ((mem_lo - pad).max(0.0), mem_hi + pad)
    };
    let sessions_hi = samples.iter().map(|s| s.clients).max().unwrap_or(0).max(1) as f64 * 1.1;

    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |t: f64| LEFT + t / t_max * plot_w;
    let y = |v: f64, lo: f64, hi: f64| TOP + plot_h - (v - lo) / (hi - lo) * plot_h;

    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        out,
        r##"<rect width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        out,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888888"/>"##
    );
    for tick in ticks(0.0, t_max) {
        let px = x(tick);
        let _ = writeln!(
            out,
            r##"<line x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{}" stroke="#eeeeee"/><text x="{px:.1}" y="{}" text-anchor="middle">{}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 16.0,
            label(tick)
        );
    }
    for tick in ticks(mem_lo, mem_hi) {
        let py = y(tick, mem_lo, mem_hi);
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{}" y2="{py:.1}" stroke="#eeeeee"/><text x="{}" y="{:.1}" text-anchor="end" fill="{MEMORY_COLOR}">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            py + 4.0,
            label(tick)
        );
    }
    for tick in ticks(0.0, sessions_hi) {
        let py = y(tick, 0.0, sessions_hi);
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{:.1}" text-anchor="start" fill="{SESSIONS_COLOR}">{}</text>"#,
            LEFT + plot_w + 6.0,
            py + 4.0,
            label(tick)
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 10.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle" fill="{MEMORY_COLOR}">resident memory (MiB)</text>"#,
        TOP + plot_h / 2.0
    );
    let _ = writeln!(
        out,
        r#"<text transform="translate({} {}) rotate(90)" text-anchor="middle" fill="{SESSIONS_COLOR}">live sessions</text>"#,
        WIDTH - 16.0,
        TOP + plot_h / 2.0
    );
    // The two series.
    let points = |f: &dyn Fn(&Sample) -> f64| -> String {
        samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.t), f(s)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mem_points = points(&|s| y(s.resident as f64 / MIB, mem_lo, mem_hi));
    let session_points = points(&|s| y(s.clients as f64, 0.0, sessions_hi));
    let _ = writeln!(
        out,
        r#"<polyline points="{session_points}" fill="none" stroke="{SESSIONS_COLOR}" stroke-width="1.5"/>"#
    );
    let _ = writeln!(
        out,
        r#"<polyline points="{mem_points}" fill="none" stroke="{MEMORY_COLOR}" stroke-width="2"/>"#
    );
    // Legend.
    let _ = writeln!(
        out,
        r#"<g transform="translate({} {})"><line x1="0" y1="0" x2="20" y2="0" stroke="{MEMORY_COLOR}" stroke-width="2"/><text x="26" y="4">resident memory</text><line x1="150" y1="0" x2="170" y2="0" stroke="{SESSIONS_COLOR}" stroke-width="1.5"/><text x="176" y="4">live sessions</text></g>"#,
        LEFT + 10.0,
        TOP - 12.0
    );
    out.push_str("</svg>\n");
    out
}

/// About five round tick values from `lo` to `hi`: steps of 1, 2 or 5 times a power of ten.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = hi - lo;
    if !(span > 0.0 && span.is_finite()) {
        return vec![lo];
    }
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let mut out = Vec::new();
    let mut v = (lo / step).ceil() * step;
    while v <= hi + step * 1e-9 {
        out.push(v);
        v += step;
    }
    out
}

fn label(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else if (v * 10.0).fract().abs() < 1e-9 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Sample> {
        (0..5u32)
            .map(|i| Sample {
                t: f64::from(i),
                resident: 20_000_000 + u64::from(i) * 1_000_000,
                clients: u64::from(i) * 10,
                done: u64::from(i) * 100,
            })
            .collect()
    }

    #[test]
    fn the_chart_is_one_svg_document_with_both_series() {
        let svg = svg(&samples(), "churn <test>");
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("churn &lt;test&gt;"));
    }

    #[test]
    fn a_chart_of_no_samples_is_still_a_document() {
        let svg = svg(&[], "empty");
        assert!(svg.starts_with("<svg") && svg.contains("</svg>"));
    }

    #[test]
    fn the_csv_has_a_header_and_a_line_per_sample() {
        let csv = csv(&samples(), "cycles");
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines[0], "t_s,resident_bytes,clients,cycles");
        assert_eq!(lines.len(), 6);
        assert_eq!(lines[2], "1.000,21000000,10,100");
    }

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        assert_eq!(ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let labels: Vec<String> = ticks(0.0, 1.0).into_iter().map(label).collect();
        assert_eq!(labels, ["0", "0.2", "0.4", "0.6", "0.8", "1"]);
        assert_eq!(ticks(13.0, 47.0).first(), Some(&20.0));
        assert_eq!(ticks(3.0, 3.0), vec![3.0]);
        assert_eq!(label(0.4), "0.4");
        assert_eq!(label(25.0), "25");
    }
}
