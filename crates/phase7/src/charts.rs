//! The report's plots as SVG text (plotters' SVG backend into a string), so that
//! `report.html` can carry them inline and `report.md` can link them as files.

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::{Error, Result};

const SIZE: (u32, u32) = (720, 400);
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn plot_error(title: &str, e: impl std::fmt::Display) -> Error {
    Error::Input(format!("plot `{title}`: {e}"))
}

fn range(values: impl Iterator<Item = f64>, include_zero: bool) -> std::ops::Range<f64> {
    let (mut lo, mut hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if include_zero {
        lo = lo.min(0.0);
        hi = hi.max(0.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6);
    (lo - if include_zero && lo == 0.0 { 0.0 } else { pad })..(hi + pad)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// The legend of a chart, boxed, at `position`.
fn legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
    title: &str,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| plot_error(title, e))
}

/// Grouped bars: one group per category, one bar per series.
pub fn bars(
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(title, e))?;
        let ys = range(series.iter().flat_map(|(_, v)| v.iter().copied()), true);
        let n = categories.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..n as f64, ys)
            .map_err(|e| plot_error(title, e))?;
        let labels = categories.to_vec();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&|x| {
                let centre = x - x.floor();
                if (centre - 0.5).abs() < 1e-6 {
                    labels.get(x.floor() as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_error(title, e))?;
        let width = 0.8 / series.len().max(1) as f64;
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| v.is_finite())
                        .map(|(i, &v)| {
                            let x0 = i as f64 + 0.1 + s as f64 * width;
                            Rectangle::new([(x0, 0.0), (x0 + width * 0.95, v)], colour.filled())
                        }),
                )
                .map_err(|e| plot_error(title, e))?
                .label(*name)
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 12, y + 5)], colour.filled())
                });
        }
        if series.len() > 1 {
            legend(&mut chart, SeriesLabelPosition::UpperRight, title)?;
        }
        root.present().map_err(|e| plot_error(title, e))?;
    }
    Ok(svg)
}

/// Lines over x, one per series, with labelled vertical markers (e.g. guidance points).
pub fn lines(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(&str, Vec<(f64, f64)>)],
    markers: &[(f64, String)],
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(title, e))?;
        let xs = range(
            series
                .iter()
                .flat_map(|(_, v)| v.iter().map(|p| p.0))
                .chain(markers.iter().map(|m| m.0)),
            false,
        );
        let ys = range(
            series.iter().flat_map(|(_, v)| v.iter().map(|p| p.1)),
            false,
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xs, ys.clone())
            .map_err(|e| plot_error(title, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_error(title, e))?;
        for (x, label) in markers {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(*x, ys.start), (*x, ys.end)],
                    BLACK.mix(0.35).stroke_width(1),
                )))
                .map_err(|e| plot_error(title, e))?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, ys.end),
                    ("sans-serif", 11).into_font().color(&BLACK.mix(0.7)),
                )))
                .map_err(|e| plot_error(title, e))?;
        }
        for (s, (name, values)) in series.iter().enumerate() {
            let colour = COLOURS[s % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    values.iter().copied(),
                    colour.stroke_width(2),
                ))
                .map_err(|e| plot_error(title, e))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], colour));
            chart
                .draw_series(values.iter().map(|&p| Circle::new(p, 2, colour.filled())))
                .map_err(|e| plot_error(title, e))?;
        }
        if series.len() > 1 {
            legend(&mut chart, SeriesLabelPosition::LowerRight, title)?;
        }
        root.present().map_err(|e| plot_error(title, e))?;
    }
    Ok(svg)
}

/// A layer of a scatter plot: its legend name, its points and their radius in pixels.
pub type Layer<'a> = (&'a str, Vec<(f64, f64)>, u32);

/// Points in layers drawn in order (later layers on top); the first is grey.
pub fn scatter(title: &str, x_label: &str, y_label: &str, layers: &[Layer<'_>]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_error(title, e))?;
        let xs = range(layers.iter().flat_map(|l| l.1.iter().map(|p| p.0)), false);
        let ys = range(layers.iter().flat_map(|l| l.1.iter().map(|p| p.1)), false);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(xs, ys)
            .map_err(|e| plot_error(title, e))?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .draw()
            .map_err(|e| plot_error(title, e))?;
        for (s, (name, points, radius)) in layers.iter().enumerate() {
            let colour = if s == 0 {
                RGBColor(170, 170, 170)
            } else {
                COLOURS[(s - 1) % COLOURS.len()]
            };
            let radius = *radius;
            chart
                .draw_series(
                    points
                        .iter()
                        .map(move |&p| Circle::new(p, radius, colour.filled())),
                )
                .map_err(|e| plot_error(title, e))?
                .label(*name)
                .legend(move |(x, y)| Circle::new((x + 6, y), radius, colour.filled()));
        }
        legend(&mut chart, SeriesLabelPosition::LowerRight, title)?;
        root.present().map_err(|e| plot_error(title, e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_are_svg_with_their_labels() {
        let svg = bars(
            "Accuracy",
            "accuracy",
            &["code".into(), "logic".into()],
            &[("base", vec![0.2, 0.5]), ("final", vec![0.4, 0.6])],
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        for label in ["code", "logic", "base", "final", "Accuracy"] {
            assert!(svg.contains(label), "{label}");
        }
        let svg = lines(
            "Hypervolume",
            "generation",
            "hypervolume",
            &[("hv", vec![(0.0, 0.1), (1.0, 0.2)])],
            &[(1.0, "narrow".into())],
        )
        .unwrap();
        assert!(svg.contains("narrow"));
        let svg = scatter(
            "Front",
            "overall",
            "worst",
            &[
                ("archive", vec![(0.1, 0.2)], 2),
                ("front", vec![(0.3, 0.4)], 4),
            ],
        )
        .unwrap();
        assert!(svg.contains("front") && svg.contains("<circle"));
    }
}
