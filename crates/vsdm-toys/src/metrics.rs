//! The toy metrics, from `vsdm_eval::shapes`.

use anyhow::Result;
use vsdm_eval::shapes;

use crate::experiment::Generated;

/// The metrics of one generated set.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Metrics {
    pub w2: f64,
    /// Squared MMD, RBF mixture at the reference set's median distance × {¼, ½, 1, 2, 4}.
    pub mmd: f64,
    /// RMSE of the 100×100-bin PMFs.
    pub pmf: f64,
    pub straightness: f64,
    pub kinetic: f64,
}

/// Measures generated points against `reference` (same size) and the recorded paths.
pub fn measure(g: &Generated, reference: &[[f64; 2]]) -> Result<Metrics> {
    let bw = shapes::mmd_bandwidths(reference);
    let (straightness, kinetic) = shapes::straightness_and_energy(&g.paths, &g.s_grid)?;
    Ok(Metrics {
        w2: shapes::w2(&g.points, reference)?,
        mmd: shapes::mmd(&g.points, reference, &bw)?,
        pmf: shapes::pmf_distance(&g.points, reference, 100)?,
        straightness,
        kinetic,
    })
}
