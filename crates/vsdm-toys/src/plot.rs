//! PNGs of generated samples and probability-flow paths (plotters, no text so that no font is needed).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

fn bounds<'a>(pts: impl Iterator<Item = &'a [f64; 2]>) -> ((f64, f64), (f64, f64)) {
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in pts.filter(|p| p[0].is_finite() && p[1].is_finite()) {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let pad = |a: f64, b: f64| {
        let d = ((b - a) * 0.05).max(1e-3);
        (a - d, b + d)
    };
    (pad(x0, x1), pad(y0, y1))
}

/// Generated points (blue) over reference data (grey). `_title` is recorded in the report, not drawn.
pub fn samples(
    path: &Path,
    generated: &[[f64; 2]],
    reference: &[[f64; 2]],
    _title: &str,
) -> Result<()> {
    let ((x0, x1), (y0, y1)) = bounds(reference.iter());
    let root = BitMapBackend::new(path, (640, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    chart.draw_series(
        reference
            .iter()
            .map(|p| Circle::new((p[0], p[1]), 1, RGBColor(170, 170, 170).filled())),
    )?;
    chart.draw_series(
        generated
            .iter()
            .filter(|p| p[0] >= x0 && p[0] <= x1 && p[1] >= y0 && p[1] <= y1)
            .map(|p| Circle::new((p[0], p[1]), 1, BLUE.filled())),
    )?;
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Probability-flow paths `[time][path]`: grey lines, red start (prior), blue end.
pub fn paths(path: &Path, paths: &[Vec<[f64; 2]>], _title: &str) -> Result<()> {
    let ((x0, x1), (y0, y1)) = bounds(paths.iter().flatten());
    let root = BitMapBackend::new(path, (640, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(10)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let n = paths.first().map_or(0, |p| p.len());
    for j in 0..n {
        chart.draw_series(LineSeries::new(
            paths.iter().map(|s| (s[j][0], s[j][1])),
            RGBColor(120, 120, 120).mix(0.35),
        ))?;
    }
    if let (Some(first), Some(last)) = (paths.first(), paths.last()) {
        chart.draw_series(
            first
                .iter()
                .map(|p| Circle::new((p[0], p[1]), 2, RED.filled())),
        )?;
        chart.draw_series(
            last.iter()
                .map(|p| Circle::new((p[0], p[1]), 2, BLUE.filled())),
        )?;
    }
    root.present()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
