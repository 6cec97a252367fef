//! SVG plots: a 2-objective front against its reference, and an indicator per generation.

use std::path::Path;

use plotters::prelude::*;

use crate::{Error, Result};

fn plot_error(path: &Path, error: impl std::fmt::Display) -> Error {
    Error::Plot {
        path: path.to_path_buf(),
        message: error.to_string(),
    }
}

fn range(values: impl Iterator<Item = f64>) -> std::ops::Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.05).max(1e-9);
    (lo - pad)..(hi + pad)
}

/// Draws `front` (points, 2 objectives, row-major) over `reference` (a line) as SVG.
pub fn front_svg(path: &Path, title: &str, front: &[f64], reference: &[f64]) -> Result<()> {
    let root = SVGBackend::new(path, (640, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let xs = range(front.iter().chain(reference).step_by(2).copied());
    let ys = range(front.iter().chain(reference).skip(1).step_by(2).copied());
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(45)
        .build_cartesian_2d(xs, ys)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("f1")
        .y_desc("f2")
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let mut line: Vec<(f64, f64)> = reference.chunks_exact(2).map(|p| (p[0], p[1])).collect();
    line.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(
            line.windows(2)
                .filter(|w| (w[1].0 - w[0].0) < 0.02)
                .map(|w| PathElement::new(vec![w[0], w[1]], BLUE.stroke_width(1))),
        )
        .map_err(|e| plot_error(path, e))?;
    chart
        .draw_series(
            front
                .chunks_exact(2)
                .map(|p| Circle::new((p[0], p[1]), 3, RED.filled())),
        )
        .map_err(|e| plot_error(path, e))?;
    root.present().map_err(|e| plot_error(path, e))
}

/// Draws one value per generation as a line (e.g. hypervolume), as SVG.
pub fn curve_svg(path: &Path, title: &str, y_label: &str, values: &[(usize, f64)]) -> Result<()> {
    draw_curves(path, title, y_label, &[("", values.to_vec())], false)
}

/// Draws several named curves over generations on one chart, with a legend, as SVG
/// (e.g. hypervolume with and without guidance).
pub fn curves_svg(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(usize, f64)>)],
) -> Result<()> {
    draw_curves(path, title, y_label, series, true)
}

fn draw_curves(
    path: &Path,
    title: &str,
    y_label: &str,
    series: &[(&str, Vec<(usize, f64)>)],
    legend: bool,
) -> Result<()> {
    let root = SVGBackend::new(path, (640, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(path, e))?;
    let points = || series.iter().flat_map(|(_, values)| values.iter());
    let last = points().map(|v| v.0).max().unwrap_or(1).max(1);
    let ys = range(points().map(|v| v.1));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0..last, ys)
        .map_err(|e| plot_error(path, e))?;
    chart
        .configure_mesh()
        .x_desc("generation")
        .y_desc(y_label)
        .draw()
        .map_err(|e| plot_error(path, e))?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (index, (name, values)) in series.iter().enumerate() {
        let colour = colours[index % colours.len()];
        chart
            .draw_series(LineSeries::new(
                values.iter().copied(),
                colour.stroke_width(2),
            ))
            .map_err(|e| plot_error(path, e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    if legend {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| plot_error(path, e))?;
    }
    root.present().map_err(|e| plot_error(path, e))
}
