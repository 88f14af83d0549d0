//! The report's charts as inline SVG (no script, no CDN: the page is one file that opens
//! anywhere): bars, lines on linear or logarithmic axes with a legend, and histograms. Each
//! path keeps one colour in every chart.

use std::fmt::Write as _;

use super::row::BenchPath;

/// One colour per row of [`BenchPath::all`], in order, told apart on a white page.
const COLORS: &[&str] = &[
    "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#1f78b4",
    "#b15928", "#6a3d9a", "#fb9a99", "#444444", "#bcbd22", "#17becf", "#8c564b",
];

/// The colour of a path, the same in every chart.
pub fn color(path: BenchPath) -> &'static str {
    let index = BenchPath::all()
        .iter()
        .position(|p| *p == path)
        .unwrap_or(COLORS.len() - 1);
    COLORS[index % COLORS.len()]
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Horizontal bars, one per path.
pub fn bars(title: &str, unit: &str, rows: &[(BenchPath, f64)]) -> String {
    let (width, label_w, row_h) = (760.0, 120.0, 22.0);
    let max = rows
        .iter()
        .map(|(_, v)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let height = row_h * rows.len() as f64 + 34.0;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img"><title>{0}</title><text x="0" y="16" font-weight="bold">{0}</text>"#,
        escape(title)
    );
    for (i, (path, value)) in rows.iter().enumerate() {
        let y = 26.0 + i as f64 * row_h;
        let w = (width - label_w - 130.0) * value / max;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text><rect x="{label_w}" y="{y}" width="{w:.1}" height="{}" fill="{}"/><text x="{}" y="{}">{value:.1} {}</text>"#,
            label_w - 6.0,
            y + 14.0,
            escape(path.as_str()),
            row_h - 5.0,
            color(*path),
            label_w + w + 6.0,
            y + 14.0,
            escape(unit)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// An axis of a line chart.
pub struct Axis {
    pub label: &'static str,
    pub log: bool,
}

/// One line: a path's points, drawn with a dot at each when `dots`.
pub struct Series {
    pub path: BenchPath,
    pub points: Vec<(f64, f64)>,
    pub dots: bool,
}

/// The span an axis shows and how a value maps into it (0 to 1).
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    fn of(values: impl Iterator<Item = f64>, log: bool) -> Scale {
        let values: Vec<f64> = values
            .filter(|v| v.is_finite() && (!log || *v > 0.0))
            .collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(0.0_f64, f64::max);
        if log {
            let lo = if min.is_finite() {
                min.log10().floor()
            } else {
                0.0
            };
            let hi = max.max(10f64.powf(lo + 1.0)).log10().ceil();
            Scale { lo, hi, log }
        } else {
            Scale {
                lo: 0.0,
                hi: nice_ceiling(max),
                log,
            }
        }
    }

    fn fraction(&self, v: f64) -> f64 {
        if self.log {
            (v.max(10f64.powf(self.lo)).log10() - self.lo) / (self.hi - self.lo).max(1e-9)
        } else {
            (v - self.lo) / (self.hi - self.lo).max(1e-9)
        }
    }

    /// Where the grid lines go: each power of ten (log), or five even steps.
    fn ticks(&self) -> Vec<f64> {
        if self.log {
            (self.lo as i32..=self.hi as i32)
                .map(|d| 10f64.powi(d))
                .collect()
        } else {
            (0..=5).map(|i| self.hi * f64::from(i) / 5.0).collect()
        }
    }
}

/// The smallest 1, 2, 2.5 or 5 × 10ⁿ at or above `v` (2.5, so that a run of 21 s is not drawn
/// on an axis of 50).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let decade = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * decade)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * decade)
}

/// A grid line's value, as short as it is exact: `2.5k`, `30`, `1.5`, `0.05`.
fn tick_label(v: f64) -> String {
    // Rounded to what the ticks can hold (fifths of 1, 2, 2.5 or 5 × 10ⁿ), which also drops
    // the float noise of `i * hi / 5`.
    let short = |v: f64| format!("{}", (v * 1e6).round() / 1e6);
    if v >= 1000.0 {
        format!("{}k", short(v / 1000.0))
    } else {
        short(v)
    }
}

/// The box of a chart on two axes: its size, and where its plot area sits in it.
#[derive(Clone, Copy)]
struct Frame {
    w: f64,
    h: f64,
    left: f64,
    top: f64,
    plot_w: f64,
    plot_h: f64,
}

impl Frame {
    /// The opening `<svg>`, its title and the plot area's border.
    fn open(&self, title: &str) -> String {
        let Frame {
            w,
            h,
            left,
            top,
            plot_w,
            plot_h,
        } = *self;
        format!(
            r##"<svg viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img"><title>{0}</title><text x="0" y="16" font-weight="bold">{0}</text><rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>"##,
            escape(title)
        )
    }

    /// A labelled horizontal grid line at each of `ys`' ticks, `py` placing a value.
    fn y_grid(&self, svg: &mut String, ys: &Scale, py: impl Fn(f64) -> f64) {
        for t in ys.ticks() {
            let _ = write!(
                svg,
                r##"<line x1="{0}" x2="{1}" y1="{2:.1}" y2="{2:.1}" stroke="#eee"/><text x="{3}" y="{4:.1}" text-anchor="end">{5}</text>"##,
                self.left,
                self.left + self.plot_w,
                py(t),
                self.left - 5.0,
                py(t) + 4.0,
                tick_label(t)
            );
        }
    }

    /// The x axis' label under the plot, the y axis' turned along its left side.
    fn axis_labels(&self, svg: &mut String, x_label: &str, y_label: &str) {
        let mid_y = self.top + self.plot_h / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text><text x="12" y="{mid_y}" transform="rotate(-90 12 {mid_y})" text-anchor="middle">{}</text>"#,
            self.left + self.plot_w / 2.0,
            self.top + self.plot_h + 34.0,
            escape(x_label),
            escape(y_label)
        );
    }
}

/// Lines on two axes, a legend on the right, and an optional dashed horizontal bound.
pub fn lines(
    title: &str,
    x: Axis,
    y: Axis,
    series: &[Series],
    bound: Option<(f64, &str)>,
) -> String {
    let frame = Frame {
        w: 900.0,
        h: 360.0,
        left: 60.0,
        top: 30.0,
        plot_w: 660.0,
        plot_h: 280.0,
    };
    let Frame {
        left,
        top,
        plot_w,
        plot_h,
        ..
    } = frame;
    let xs = Scale::of(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        x.log,
    );
    let bound_y = bound.map(|b| b.0);
    let ys = Scale::of(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(bound_y),
        y.log,
    );
    let px = |v: f64| left + plot_w * xs.fraction(v);
    let py = |v: f64| top + plot_h * (1.0 - ys.fraction(v));
    let mut svg = frame.open(title);
    for t in xs.ticks() {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#eee"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            px(t),
            top + plot_h,
            top + plot_h + 16.0,
            tick_label(t)
        );
    }
    frame.y_grid(&mut svg, &ys, py);
    frame.axis_labels(&mut svg, x.label, y.label);
    if let Some((v, label)) = bound {
        let _ = write!(
            svg,
            r##"<line x1="{left}" x2="{0}" y1="{1:.1}" y2="{1:.1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{2}" y="{3:.1}" fill="#c00">{4}</text>"##,
            left + plot_w,
            py(v),
            left + 6.0,
            py(v) - 4.0,
            escape(label)
        );
    }
    for (i, s) in series.iter().enumerate() {
        let c = color(s.path);
        let points: Vec<String> = s
            .points
            .iter()
            .filter(|p| (!x.log || p.0 > 0.0) && (!y.log || p.1 > 0.0))
            .map(|p| format!("{:.1},{:.1}", px(p.0), py(p.1)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#,
            points.join(" ")
        );
        if s.dots {
            for p in &points {
                let (cx, cy) = p.split_once(',').expect("x,y");
                let _ = write!(svg, r#"<circle cx="{cx}" cy="{cy}" r="3" fill="{c}"/>"#);
            }
        }
        let ly = top + 8.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{0}" x2="{1}" y1="{ly}" y2="{ly}" stroke="{c}" stroke-width="3"/><text x="{2}" y="{3}">{4}</text>"#,
            left + plot_w + 14.0,
            left + plot_w + 34.0,
            left + plot_w + 40.0,
            ly + 4.0,
            escape(s.path.as_str())
        );
    }
    svg.push_str("</svg>");
    svg
}

/// One histogram: what is counted, in bins of equal width from 0.
pub struct Histogram<'a> {
    pub path: BenchPath,
    /// The bins' counts, the first from 0 to `bin_width`.
    pub counts: &'a [u64],
    pub bin_width: f64,
    /// Bins the x axis spans (at least `counts.len()`), so histograms side by side share a scale.
    pub bins_shown: usize,
}

/// A histogram as columns in the path's colour, with a dashed vertical marker (`at`, label).
pub fn histogram(
    title: &str,
    x_label: &str,
    y_label: &str,
    h: &Histogram<'_>,
    marker: Option<(f64, &str)>,
) -> String {
    let frame = Frame {
        w: 900.0,
        h: 250.0,
        left: 60.0,
        top: 30.0,
        plot_w: 780.0,
        plot_h: 170.0,
    };
    let Frame {
        left,
        top,
        plot_w,
        plot_h,
        ..
    } = frame;
    let bins = h.bins_shown.max(h.counts.len()).max(1);
    let x_max = bins as f64 * h.bin_width;
    let ys = Scale::of(h.counts.iter().map(|c| *c as f64), false);
    let px = |v: f64| left + plot_w * v / x_max.max(1e-9);
    let py = |v: f64| top + plot_h * (1.0 - ys.fraction(v));
    let mut svg = frame.open(title);
    frame.y_grid(&mut svg, &ys, py);
    // A tick every half unit of x (every half average share), labelled.
    let ticks = (x_max / 0.5).floor() as usize;
    for i in 0..=ticks {
        let v = i as f64 * 0.5;
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{1}" y2="{2}" stroke="#999"/><text x="{0:.1}" y="{3}" text-anchor="middle">{v}</text>"##,
            px(v),
            top + plot_h,
            top + plot_h + 4.0,
            top + plot_h + 16.0,
        );
    }
    let c = color(h.path);
    let column_w = (plot_w / bins as f64 - 1.0).max(0.5);
    for (i, count) in h.counts.iter().enumerate().filter(|(_, n)| **n > 0) {
        let x = px(i as f64 * h.bin_width);
        let y = py(*count as f64);
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{y:.1}" width="{column_w:.1}" height="{:.1}" fill="{c}"><title>{count}</title></rect>"#,
            top + plot_h - y
        );
    }
    if let Some((at, label)) = marker {
        let _ = write!(
            svg,
            r##"<line x1="{0:.1}" x2="{0:.1}" y1="{top}" y2="{1}" stroke="#c00" stroke-dasharray="6 4"/><text x="{2:.1}" y="{3}" fill="#c00">{4}</text>"##,
            px(at),
            top + plot_h,
            px(at) + 4.0,
            top + 12.0,
            escape(label)
        );
    }
    frame.axis_labels(&mut svg, x_label, y_label);
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_round_out_and_every_path_has_a_colour_of_its_own() {
        assert_eq!(nice_ceiling(730.0), 1000.0);
        assert_eq!(nice_ceiling(130.0), 200.0);
        assert_eq!(nice_ceiling(21.0), 25.0);
        let labels: Vec<String> = [0.0, 0.5, 1.5, 2.5, 30.0, 2500.0, 0.05]
            .into_iter()
            .map(tick_label)
            .collect();
        assert_eq!(labels, ["0", "0.5", "1.5", "2.5", "30", "2.5k", "0.05"]);
        let log = Scale::of([3.0, 420.0].into_iter(), true);
        assert_eq!((log.lo, log.hi), (0.0, 3.0));
        assert!((log.fraction(10.0) - 1.0 / 3.0).abs() < 1e-9);
        let colors: std::collections::HashSet<_> =
            BenchPath::all().into_iter().map(color).collect();
        assert_eq!(colors.len(), BenchPath::all().len());
    }

    #[test]
    fn a_chart_names_every_series() {
        let series = [Series {
            path: BenchPath::QUEUE,
            points: vec![(1.0, 5.0), (2.0, 7.0)],
            dots: true,
        }];
        let svg = lines(
            "t",
            Axis {
                label: "x",
                log: false,
            },
            Axis {
                label: "y",
                log: true,
            },
            &series,
            Some((500.0, "bound")),
        );
        assert!(svg.contains(">queue<") && svg.contains("<circle") && svg.contains("bound"));
    }

    #[test]
    fn a_histogram_draws_a_column_per_filled_bin_on_the_shared_scale() {
        let counts = [3, 0, 5];
        let svg = histogram(
            "t",
            "x",
            "y",
            &Histogram {
                path: BenchPath::QUEUE,
                counts: &counts,
                bin_width: 0.1,
                bins_shown: 20,
            },
            Some((1.0, "average")),
        );
        assert_eq!(
            svg.matches("<rect x=").count(),
            1 + 2,
            "the frame and two columns"
        );
        assert!(svg.contains("<title>5</title>") && svg.contains(">average<"));
        assert!(svg.contains(">2<"), "the x axis reaches 20 bins of 0.1");
    }
}
