//! Histogram (PMF) distances between 2-D point sets.

use super::{check, ShapeMetricError};

/// The `bins` × `bins` histograms of `a` and `reference` as probability mass functions (each sums to 1), on the
/// common bounding box of both sets (so no point falls outside), row-major in (x bin, y bin). A point on the
/// box's upper edge goes into the last bin.
pub fn pmf_histograms(
    a: &[[f64; 2]],
    reference: &[[f64; 2]],
    bins: usize,
) -> Result<(Vec<f64>, Vec<f64>), ShapeMetricError> {
    check("PMF (generated)", a)?;
    check("PMF (reference)", reference)?;
    if bins == 0 {
        return Err(ShapeMetricError::Invalid {
            what: "PMF bins",
            reason: "need at least one bin per axis".into(),
        });
    }
    let (mut lo, mut hi) = ([f64::INFINITY; 2], [f64::NEG_INFINITY; 2]);
    for p in a.iter().chain(reference) {
        for k in 0..2 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let width = [(hi[0] - lo[0]).max(1e-300), (hi[1] - lo[1]).max(1e-300)];
    let bin = |x: f64, k: usize| (((x - lo[k]) / width[k] * bins as f64) as usize).min(bins - 1);
    let hist = |pts: &[[f64; 2]]| {
        let mut h = vec![0.0; bins * bins];
        let w = 1.0 / pts.len() as f64;
        for p in pts {
            h[bin(p[0], 0) * bins + bin(p[1], 1)] += w;
        }
        h
    };
    Ok((hist(a), hist(reference)))
}

/// The VSDM toy runner's "PMF distance" (ALGORITHM.md §F.1, reported with `bins` = 100): the root mean square
/// over the `bins`² cells of the difference of the two PMFs of [`pmf_histograms`]. 0 for equal histograms,
/// √2 / bins at most (all mass in one cell on each side, different cells).
pub fn pmf_distance(
    a: &[[f64; 2]],
    reference: &[[f64; 2]],
    bins: usize,
) -> Result<f64, ShapeMetricError> {
    let (p, q) = pmf_histograms(a, reference, bins)?;
    let ss: f64 = p.iter().zip(&q).map(|(x, y)| (x - y).powi(2)).sum();
    Ok((ss / (bins * bins) as f64).sqrt())
}

/// The L1 distance Σ |p − q| between the two PMFs of [`pmf_histograms`] (twice the total variation): 0 for equal
/// histograms, 2 for histograms with disjoint support.
pub fn pmf_l1(
    a: &[[f64; 2]],
    reference: &[[f64; 2]],
    bins: usize,
) -> Result<f64, ShapeMetricError> {
    let (p, q) = pmf_histograms(a, reference, bins)?;
    Ok(p.iter().zip(&q).map(|(x, y)| (x - y).abs()).sum())
}

#[cfg(test)]
mod tests {
    use super::super::Lcg;
    use super::*;

    #[test]
    fn histograms_by_hand() {
        // Box [0, 4] × [0, 2], 2 × 2 bins: cells split at x = 2 and y = 1.
        let a = [[0.0, 0.0], [1.0, 1.5], [3.0, 0.5], [4.0, 2.0]];
        let b = [[0.5, 0.5], [0.5, 0.6], [2.5, 1.5], [3.5, 1.9]];
        let (p, q) = pmf_histograms(&a, &b, 2).unwrap();
        // Cells (x, y): (0,0), (0,1), (1,0), (1,1).
        assert_eq!(p, vec![0.25, 0.25, 0.25, 0.25]);
        assert_eq!(q, vec![0.5, 0.0, 0.0, 0.5]);
        assert!((pmf_l1(&a, &b, 2).unwrap() - 1.0).abs() < 1e-15);
        let rmse = ((4.0 * 0.25f64.powi(2)) / 4.0).sqrt();
        assert!((pmf_distance(&a, &b, 2).unwrap() - rmse).abs() < 1e-15);
        // The bins follow the box: both sets moved by (−7, 13) fall into the same cells.
        let moved = |s: &[[f64; 2]]| {
            s.iter()
                .map(|p| [p[0] - 7.0, p[1] + 13.0])
                .collect::<Vec<_>>()
        };
        assert_eq!(pmf_histograms(&moved(&a), &moved(&b), 2).unwrap(), (p, q));
    }

    #[test]
    fn extremes_zero_and_disjoint() {
        let mut r = Lcg(13);
        let a: Vec<[f64; 2]> = (0..3000).map(|_| [r.normal(), 8.0 * r.normal()]).collect();
        assert_eq!(pmf_distance(&a, &a, 100).unwrap(), 0.0);
        assert_eq!(pmf_l1(&a, &a, 100).unwrap(), 0.0);
        // Disjoint supports: L1 = 2 exactly.
        let away: Vec<[f64; 2]> = a.iter().map(|p| [p[0] + 100.0, p[1]]).collect();
        assert!((pmf_l1(&away, &a, 100).unwrap() - 2.0).abs() < 1e-12);
        // All mass in one cell each, different cells: RMSE = √2 / bins, its maximum.
        let d = pmf_distance(&[[0.0, 0.0]; 5], &[[1.0, 1.0]; 7], 100).unwrap();
        assert!((d - 2f64.sqrt() / 100.0).abs() < 1e-15, "{d}");
        // A second sample of the same law is far closer than a shifted one.
        let a2: Vec<[f64; 2]> = (0..3000).map(|_| [r.normal(), 8.0 * r.normal()]).collect();
        let shifted: Vec<[f64; 2]> = a2.iter().map(|p| [p[0] + 1.0, p[1]]).collect();
        let near = pmf_l1(&a2, &a, 20).unwrap();
        assert!(pmf_l1(&shifted, &a, 20).unwrap() > 1.5 * near);
        assert!(pmf_distance(&a, &a, 0).is_err());
        assert!(pmf_l1(&[], &a, 10).is_err());
    }
}
