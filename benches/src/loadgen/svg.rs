//! A hand-written SVG line chart of latency by percentile, one line per arm (and
//! one for all answers), HdrHistogram-plotter style: the x axis is
//! `log10(1 / (1 - q))`, so 90%, 99%, 99.9%, 99.99% are evenly spaced.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;
/// Furthest percentile plotted: 99.999%.
const MAX_NINES: f64 = 5.0;
const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Points `(x, latency µs)` of one histogram, x = log10(1/(1-q)) from 0 up to the
/// resolution its sample count supports (at most 99.999%).
pub fn curve(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let x_max = (h.len() as f64).log10().clamp(0.0, MAX_NINES);
    let steps = (x_max / 0.05).ceil() as u32;
    (0..=steps)
        .map(|i| {
            let x = (f64::from(i) * 0.05).min(x_max);
            let q = 1.0 - 10f64.powf(-x);
            (x, h.value_at_quantile(q))
        })
        .collect()
}

/// A "nice" tick step (1, 2 or 5 × 10^k) giving about `target` ticks up to `max`.
fn nice_step(max: f64, target: f64) -> f64 {
    let raw = (max / target).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Renders `series` (name, histogram in µs) as an SVG document titled `title`.
pub fn render(title: &str, series: &[(&str, &Histogram<u64>)]) -> String {
    let curves: Vec<(&str, Vec<(f64, u64)>)> = series.iter().map(|(n, h)| (*n, curve(h))).collect();
    let x_max = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max_ms = curves
        .iter()
        .flat_map(|(_, c)| c.iter().map(|p| p.1 as f64 / 1000.0))
        .fold(0.0f64, f64::max);
    let step = nice_step(y_max_ms.max(0.001), 6.0);
    let y_top = ((y_max_ms / step).ceil() * step).max(step);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_max * plot_w;
    let py = |ms: f64| TOP + plot_h - ms / y_top * plot_h;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="25" font-size="15" text-anchor="middle">{}</text>"#,
        LEFT + plot_w / 2.0,
        escape(title)
    );
    // Y grid and labels.
    let mut y = 0.0;
    while y <= y_top + step / 2.0 {
        let yy = py(y);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            yy + 4.0,
            trim_float(y)
        );
        y += step;
    }
    // X grid: 0%, 90%, 99%, ...
    for nines in 0..=(x_max as u32) {
        let xx = px(f64::from(nines));
        let label = match nines {
            0 => "0%".to_string(),
            n => format!("{}%", trim_float(100.0 - 100.0 * 10f64.powi(-(n as i32)))),
        };
        let _ = writeln!(
            s,
            r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            TOP + plot_h,
            TOP + plot_h + 18.0
        );
    }
    let _ = writeln!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 15.0
    );
    let _ = writeln!(
        s,
        r#"<text transform="translate(20 {:.1}) rotate(-90)" text-anchor="middle">latency (ms)</text>"#,
        TOP + plot_h / 2.0
    );
    for (i, (name, c)) in curves.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points = c
            .iter()
            .map(|(x, us)| format!("{:.1},{:.1}", px(*x), py(*us as f64 / 1000.0)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>"#
        );
        let ly = TOP + 10.0 + 20.0 * i as f64;
        let lx = LEFT + plot_w + 15.0;
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::stats::{new_histogram, record_us};

    #[test]
    fn svg_has_one_line_per_series() {
        let mut a = new_histogram().unwrap_or_else(|e| panic!("{e}"));
        let mut b = new_histogram().unwrap_or_else(|e| panic!("{e}"));
        for v in 1..=10_000u64 {
            record_us(&mut a, v);
            record_us(&mut b, 2 * v);
        }
        let svg = render("t <&>", &[("best_model", &a), ("candidate_model", &b)]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("t &lt;&amp;&gt;"));
        assert!(svg.contains("99.9%"));
        // 10,000 samples support 4 nines, not 5.
        assert!(!svg.contains("99.999%"));
    }

    #[test]
    fn curve_is_monotone() {
        let mut h = new_histogram().unwrap_or_else(|e| panic!("{e}"));
        for v in 1..=1000u64 {
            record_us(&mut h, v * v);
        }
        let c = curve(&h);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert!((c.last().map_or(0.0, |p| p.0) - 3.0).abs() < 1e-9);
        assert!(curve(&new_histogram().unwrap_or_else(|e| panic!("{e}"))).is_empty());
    }
}
