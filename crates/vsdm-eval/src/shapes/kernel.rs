//! Kernel two-sample distances: MMD with a mixture of RBF kernels, and the energy distance.

use super::{check, sq, ShapeMetricError};

/// The factors applied to the median pairwise distance in [`mmd_bandwidths`]: ¼, ½, 1, 2, 4.
pub const MMD_BANDWIDTH_FACTORS: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];

/// The RBF bandwidths σ of [`mmd`]: the median pairwise Euclidean distance of the reference set (of its first
/// 1 000 points) times [`MMD_BANDWIDTH_FACTORS`]. Fix them from the reference set once so that every model is
/// scored with the same kernel.
pub fn mmd_bandwidths(reference: &[[f64; 2]]) -> Vec<f64> {
    let m = reference.len().min(1000);
    let mut d: Vec<f64> = (0..m)
        .flat_map(|i| (i + 1..m).map(move |j| (i, j)))
        .map(|(i, j)| sq(&reference[i], &reference[j]).sqrt())
        .collect();
    let med = if d.is_empty() {
        1.0
    } else {
        let k = d.len() / 2;
        *d.select_nth_unstable_by(k, f64::total_cmp).1
    };
    MMD_BANDWIDTH_FACTORS
        .iter()
        .map(|f| f * med.max(1e-12))
        .collect()
}

fn check_bandwidths(bandwidths: &[f64]) -> Result<Vec<f64>, ShapeMetricError> {
    if bandwidths.is_empty() {
        return Err(ShapeMetricError::Empty {
            what: "MMD bandwidths",
        });
    }
    if let Some(index) = bandwidths.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(ShapeMetricError::NonFinite {
            what: "MMD bandwidths (need finite σ > 0)",
            index,
        });
    }
    Ok(bandwidths.iter().map(|s| -1.0 / (2.0 * s * s)).collect())
}

/// Σ over pairs of the kernel Σ_σ exp(−‖x − y‖²/(2σ²)): all pairs of `x`×`y`, or the pairs i < j of `x`
/// when `y` is `None`.
fn kernel_sum(x: &[[f64; 2]], y: Option<&[[f64; 2]]>, gammas: &[f64]) -> f64 {
    let k = |d2: f64| gammas.iter().map(|g| (g * d2).exp()).sum::<f64>();
    match y {
        Some(y) => x
            .iter()
            .map(|p| y.iter().map(|q| k(sq(p, q))).sum::<f64>())
            .sum(),
        None => x
            .iter()
            .enumerate()
            .map(|(i, p)| x[i + 1..].iter().map(|q| k(sq(p, q))).sum::<f64>())
            .sum(),
    }
}

/// Squared MMD, **biased** V-statistic (≥ 0; the MMD between the two empirical measures):
/// (1/n²) Σ_{i,j} k(a_i, a_j) + (1/m²) Σ k(b_i, b_j) − (2/(nm)) Σ k(a_i, b_j), with the kernel
/// k(x, y) = Σ_σ exp(−‖x − y‖²/(2σ²)) over `bandwidths` (use [`mmd_bandwidths`]). O((n + m)²).
pub fn mmd(a: &[[f64; 2]], b: &[[f64; 2]], bandwidths: &[f64]) -> Result<f64, ShapeMetricError> {
    check("MMD (generated)", a)?;
    check("MMD (reference)", b)?;
    let g = check_bandwidths(bandwidths)?;
    let (n, m, diag) = (a.len() as f64, b.len() as f64, g.len() as f64);
    let aa = (n * diag + 2.0 * kernel_sum(a, None, &g)) / (n * n);
    let bb = (m * diag + 2.0 * kernel_sum(b, None, &g)) / (m * m);
    let ab = kernel_sum(a, Some(b), &g) / (n * m);
    Ok((aa + bb - 2.0 * ab).max(0.0))
}

/// Squared MMD, **unbiased** U-statistic (Gretton et al. 2012, eq. 3; may be slightly negative):
/// (1/(n(n−1))) Σ_{i≠j} k(a_i, a_j) + (1/(m(m−1))) Σ_{i≠j} k(b_i, b_j) − (2/(nm)) Σ k(a_i, b_j), same kernel as
/// [`mmd`]. Needs at least two points per set.
pub fn mmd_unbiased(
    a: &[[f64; 2]],
    b: &[[f64; 2]],
    bandwidths: &[f64],
) -> Result<f64, ShapeMetricError> {
    check("MMD (generated)", a)?;
    check("MMD (reference)", b)?;
    if a.len() < 2 || b.len() < 2 {
        return Err(ShapeMetricError::Invalid {
            what: "unbiased MMD",
            reason: format!("needs ≥ 2 points per set, got {} and {}", a.len(), b.len()),
        });
    }
    let g = check_bandwidths(bandwidths)?;
    let (n, m) = (a.len() as f64, b.len() as f64);
    let aa = 2.0 * kernel_sum(a, None, &g) / (n * (n - 1.0));
    let bb = 2.0 * kernel_sum(b, None, &g) / (m * (m - 1.0));
    let ab = kernel_sum(a, Some(b), &g) / (n * m);
    Ok(aa + bb - 2.0 * ab)
}

/// The energy distance (Székely & Rizzo) between the two empirical measures, V-statistic (≥ 0):
/// 2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖. O((n + m)²).
pub fn energy_distance(a: &[[f64; 2]], b: &[[f64; 2]]) -> Result<f64, ShapeMetricError> {
    check("energy distance (generated)", a)?;
    check("energy distance (reference)", b)?;
    let within = |x: &[[f64; 2]]| {
        let s: f64 = x
            .iter()
            .enumerate()
            .map(|(i, p)| x[i + 1..].iter().map(|q| sq(p, q).sqrt()).sum::<f64>())
            .sum();
        2.0 * s / (x.len() * x.len()) as f64
    };
    let across: f64 = a
        .iter()
        .map(|p| b.iter().map(|q| sq(p, q).sqrt()).sum::<f64>())
        .sum::<f64>()
        / (a.len() * b.len()) as f64;
    Ok((2.0 * across - within(a) - within(b)).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::super::Lcg;
    use super::*;

    fn gaussian(r: &mut Lcg, n: usize, shift: f64) -> Vec<[f64; 2]> {
        (0..n).map(|_| [r.normal() + shift, r.normal()]).collect()
    }

    #[test]
    fn mmd_of_two_single_points_is_the_closed_form() {
        // MMD²(δ_x, δ_y) = k(x,x) + k(y,y) − 2k(x,y) = 2 Σ_σ (1 − exp(−d²/(2σ²))).
        let bw = [0.5, 1.0, 3.0];
        let d2: f64 = 1.5 * 1.5 + 2.0 * 2.0;
        let exact: f64 = bw
            .iter()
            .map(|s| 2.0 * (1.0 - (-d2 / (2.0 * s * s)).exp()))
            .sum();
        let got = mmd(&[[0.0, 0.0]], &[[1.5, -2.0]], &bw).unwrap();
        assert!((got - exact).abs() < 1e-14, "{got} vs {exact}");
    }

    #[test]
    fn mmd_is_zero_for_identical_sets_and_grows_with_a_shift() {
        let mut r = Lcg(11);
        let a = gaussian(&mut r, 400, 0.0);
        let a2 = gaussian(&mut r, 400, 0.0);
        let bw = mmd_bandwidths(&a);
        assert_eq!(bw.len(), 5);
        assert!(mmd(&a, &a, &bw).unwrap() < 1e-12);
        let near = mmd(&a2, &a, &bw).unwrap();
        let shifted: Vec<[f64; 2]> = a2.iter().map(|p| [p[0] + 2.0, p[1]]).collect();
        let far = mmd(&shifted, &a, &bw).unwrap();
        assert!(far > 10.0 * near, "{near} vs {far}");
        let farther: Vec<[f64; 2]> = a2.iter().map(|p| [p[0] + 4.0, p[1]]).collect();
        assert!(mmd(&farther, &a, &bw).unwrap() > far);
    }

    #[test]
    fn unbiased_mmd_averages_to_zero_where_the_biased_one_does_not() {
        // Same law on both sides: E[MMD²_u] = 0 exactly, E[MMD²_b] = O(1/n) > 0.
        let mut r = Lcg(21);
        let bw = [0.5, 1.0, 2.0];
        let (mut u, mut b, mut u2) = (0.0, 0.0, 0.0);
        let reps = 200;
        for _ in 0..reps {
            let x = gaussian(&mut r, 30, 0.0);
            let y = gaussian(&mut r, 30, 0.0);
            let v = mmd_unbiased(&x, &y, &bw).unwrap();
            u += v;
            u2 += v * v;
            b += mmd(&x, &y, &bw).unwrap();
        }
        let (u, b) = (u / reps as f64, b / reps as f64);
        let se = ((u2 / reps as f64 - u * u) / reps as f64).sqrt();
        assert!(u.abs() < 4.0 * se, "unbiased mean {u} (se {se})");
        assert!(b > u + 10.0 * se, "biased mean {b} vs unbiased {u}");
        assert!(mmd_unbiased(&[[0.0, 0.0]], &[[1.0, 1.0], [2.0, 2.0]], &bw).is_err());
        assert!(mmd(&[[0.0, 0.0]], &[[1.0, 1.0]], &[0.0]).is_err());
        assert!(mmd(&[[f64::NAN, 0.0]], &[[1.0, 1.0]], &bw).is_err());
    }

    #[test]
    fn energy_distance_on_a_line_is_twice_the_cdf_l2_distance() {
        // In 1-D, E-distance(F, G) = 2 ∫ (F(t) − G(t))² dt, integrated exactly for the empirical CDFs.
        let mut r = Lcg(7);
        let xa: Vec<f64> = (0..200).map(|_| r.normal()).collect();
        let xb: Vec<f64> = (0..150).map(|_| 1.5 * r.normal() + 0.7).collect();
        let mut all: Vec<(f64, bool)> = xa.iter().map(|&x| (x, true)).collect();
        all.extend(xb.iter().map(|&x| (x, false)));
        all.sort_by(|p, q| p.0.total_cmp(&q.0));
        let (mut fa, mut fb, mut integral) = (0.0, 0.0, 0.0);
        for w in all.windows(2) {
            if w[0].1 {
                fa += 1.0 / 200.0;
            } else {
                fb += 1.0 / 150.0;
            }
            integral += (fa - fb) * (fa - fb) * (w[1].0 - w[0].0);
        }
        let a: Vec<[f64; 2]> = xa.iter().map(|&x| [x, 0.0]).collect();
        let b: Vec<[f64; 2]> = xb.iter().map(|&x| [x, 0.0]).collect();
        let got = energy_distance(&a, &b).unwrap();
        assert!(
            (got - 2.0 * integral).abs() < 1e-10,
            "{got} vs {}",
            2.0 * integral
        );
        assert!(energy_distance(&a, &a).unwrap() < 1e-12);
    }
}
