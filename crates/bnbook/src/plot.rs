//! SVG figures, drawn with `plotters` (no fonts or system libraries needed:
//! text is written as SVG `<text>` elements).
//!
//! [`Svg`] shows itself inline in an evcxr Jupyter notebook.

use crate::error::{Error, Result};
use crate::train::History;
use plotters::prelude::*;

/// An SVG document. In a notebook, evaluating an `Svg` displays the figure.
#[derive(Clone, Debug, PartialEq)]
pub struct Svg(pub String);

impl Svg {
    /// The SVG text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Writes the figure to `path`.
    ///
    /// # Errors
    /// If the file cannot be written.
    pub fn save(&self, path: impl AsRef<std::path::Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, &self.0).map_err(|source| Error::Io {
            what: format!("cannot write {}", path.display()),
            source,
        })
    }

    /// evcxr's display hook: prints the SVG as rich output.
    pub fn evcxr_display(&self) {
        println!(
            "EVCXR_BEGIN_CONTENT image/svg+xml\n{}\nEVCXR_END_CONTENT",
            self.0
        );
    }
}

fn plot_error(e: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("drawing the figure failed: {e}"))
}

/// One named series of `(x, y)` points.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// A line chart of several series with a legend, `width × height` pixels.
/// Points with a NaN or infinite coordinate are left out.
///
/// # Errors
/// If there is no finite point to draw, the values span more than `f64`
/// can subtract, or the size is zero.
pub fn line_chart(title: &str, x_label: &str, series: &[Series], size: (u32, u32)) -> Result<Svg> {
    let integer_x = series
        .iter()
        .flat_map(|s| s.points.iter())
        .all(|p| p.0.fract() == 0.0);
    let format = |x: f64| {
        if integer_x {
            format!("{x:.0}")
        } else {
            format!("{x}")
        }
    };
    line_chart_with_x_labels(title, x_label, series, size, &format)
}

/// [`line_chart`] with the x-axis tick labels written by `x_format`, e.g.
/// `|x| format!("{}", 2f64.powf(x))` for points placed at `log2` of a batch
/// size.
///
/// # Errors
/// If there is nothing to draw.
pub fn line_chart_with_x_labels(
    title: &str,
    x_label: &str,
    series: &[Series],
    size: (u32, u32),
    x_format: &dyn Fn(f64) -> String,
) -> Result<Svg> {
    chart_with_bands(title, x_label, series, &[], size, x_format)
}

/// A line with a shaded band around it: the mean over seeds, say, between
/// the lowest and the highest seed.
#[derive(Clone, Debug)]
pub struct Band {
    /// Legend label.
    pub label: String,
    /// `(x, low, line, high)` per point, in drawing order.
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// A line chart whose lines carry a shaded band each (the spread over
/// seeds), x-axis tick labels written by `x_format` (see
/// [`line_chart_with_x_labels`]). Points with a NaN or infinite value are
/// left out.
///
/// # Errors
/// If there is nothing to draw, the values span too wide a range or the
/// size is zero.
pub fn band_chart(
    title: &str,
    x_label: &str,
    bands: &[Band],
    size: (u32, u32),
    x_format: &dyn Fn(f64) -> String,
) -> Result<Svg> {
    let lines: Vec<Series> = bands
        .iter()
        .map(|b| Series {
            label: b.label.clone(),
            points: b.points.iter().map(|&(x, _, y, _)| (x, y)).collect(),
        })
        .collect();
    chart_with_bands(title, x_label, &lines, bands, size, x_format)
}

/// The drawing behind [`line_chart_with_x_labels`] and [`band_chart`]:
/// `series` as lines, `bands[i]` (if any) shaded in the colour of line `i`.
fn chart_with_bands(
    title: &str,
    x_label: &str,
    series: &[Series],
    bands: &[Band],
    (width, height): (u32, u32),
    x_format: &dyn Fn(f64) -> String,
) -> Result<Svg> {
    // NaN and infinite values (a diverged run's loss) are left out of the
    // axes and the lines: plotters cannot place them.
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let band_edges: Vec<(f64, f64)> = bands
        .iter()
        .flat_map(|b| b.points.iter())
        .flat_map(|&(x, lo, _, hi)| [(x, lo), (x, hi)])
        .collect();
    let all = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .chain(&band_edges)
            .filter(finite)
    };
    if all().next().is_none() {
        return Err(Error::InvalidArgument(
            "line_chart: no points to draw (none given, or all are NaN or infinite)".into(),
        ));
    }
    let (x_min, x_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.0), b.max(p.0))
    });
    let (y_min, y_max) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    if !((x_max - x_min) * 2.0).is_finite() || !((y_max - y_min) * 2.0).is_finite() {
        return Err(Error::InvalidArgument(format!(
            "line_chart: the values span too wide a range to draw (x {x_min:e} to {x_max:e}, y {y_min:e} to {y_max:e})"
        )));
    }
    if width == 0 || height == 0 {
        return Err(Error::InvalidArgument(format!(
            "line_chart: the figure must be at least 1 × 1 pixels, got {width} × {height}"
        )));
    }
    let pad = ((y_max - y_min) * 0.05).max(1e-3);
    // Headroom above the curves for the legend (one line per series), so it
    // never hides a line.
    let headroom = (y_max - y_min).max(1e-3) * (0.12 * series.len() as f64 + 0.05);
    let x_range = if x_max > x_min {
        x_min..x_max
    } else {
        x_min - 0.5..x_max + 0.5
    };
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_error)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(40)
            .build_cartesian_2d(x_range, (y_min - pad)..(y_max + headroom))
            .map_err(plot_error)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .x_label_formatter(&|x| x_format(*x))
            .light_line_style(WHITE.mix(0.0))
            .draw()
            .map_err(plot_error)?;
        for (i, band) in bands.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let ok = |&&(x, lo, _, hi): &&(f64, f64, f64, f64)| {
                x.is_finite() && lo.is_finite() && hi.is_finite()
            };
            let upper = band.points.iter().filter(ok).map(|&(x, _, _, hi)| (x, hi));
            let lower = band
                .points
                .iter()
                .rev()
                .filter(ok)
                .map(|&(x, lo, _, _)| (x, lo));
            let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    color.mix(0.2).filled(),
                )))
                .map_err(plot_error)?;
        }
        for (i, s) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(
                    s.points.iter().filter(finite).copied(),
                    color.stroke_width(2),
                ))
                .map_err(plot_error)?
                .label(s.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_error)?;
        root.present().map_err(plot_error)?;
    }
    Ok(Svg(out))
}

/// d2l's training figure: train loss, train accuracy and test accuracy
/// against the epoch.
///
/// # Errors
/// If the history has no epochs.
pub fn training_curves(history: &History) -> Result<Svg> {
    let series = |label: &str, f: fn(&crate::train::EpochRecord) -> f64| Series {
        label: label.to_string(),
        points: history
            .history
            .iter()
            .map(|r| (r.epoch as f64, f(r)))
            .collect(),
    };
    line_chart(
        &format!(
            "{} (lr {}, batch {}, seed {})",
            history.model, history.lr, history.batch_size, history.seed
        ),
        "epoch",
        &[
            series("train loss", |r| r.loss),
            series("train acc", |r| r.train_acc),
            series("test acc", |r| r.test_acc),
        ],
        (480, 320),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 480 × 320 chart of one series through `points`.
    fn chart(points: &[(f64, f64)]) -> Result<Svg> {
        let series = [Series {
            label: "a".into(),
            points: points.to_vec(),
        }];
        line_chart("t", "x", &series, (480, 320))
    }

    fn refusal(result: Result<Svg>) -> String {
        result.expect_err("should be refused").to_string()
    }

    #[test]
    fn bands_are_drawn_under_their_lines() {
        let band = Band {
            label: "mean".into(),
            points: vec![
                (1.0, 0.0, 1.0, 2.0),
                (2.0, f64::NAN, 1.5, 3.0),
                (3.0, 1.0, 2.0, 4.0),
            ],
        };
        let svg = band_chart("t", "x", &[band], (480, 320), &|x| format!("{x}")).unwrap();
        assert!(
            svg.as_str().contains("<polygon"),
            "the band is a filled polygon"
        );
        assert!(svg.as_str().contains("<polyline"), "the line is drawn too");
    }

    #[test]
    fn non_finite_points_are_left_out_or_refused_never_hang() {
        // A diverged loss: the finite points are drawn.
        assert!(chart(&[(1.0, 1.0), (2.0, f64::INFINITY)]).is_ok());
        assert!(refusal(chart(&[(1.0, f64::NAN), (2.0, f64::NAN)])).contains("NaN or infinite"));
        assert!(refusal(chart(&[(1.0, -1e308), (2.0, 1e308)])).contains("too wide a range"));
        assert!(chart(&[(1.0, -1e300), (2.0, 1e300)]).is_ok());
        let tiny = Series {
            label: "a".into(),
            points: vec![(1.0, 1.0)],
        };
        assert!(refusal(line_chart("t", "x", &[tiny], (0, 0))).contains("at least 1 × 1"));
    }
}
