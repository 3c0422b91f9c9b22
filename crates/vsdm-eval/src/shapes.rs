//! 2-D sample metrics for the anisotropic toys (ALGORITHM.md §F.1): exact W2 by an optimal assignment, MMD
//! with a mixture of RBF kernels, the 100×100-bin PMF distance, and the straightness and kinetic energy of
//! probability-flow paths. Plain f64 on the host; no tensor library needed.

/// The squared Euclidean distance.
fn sq(a: &[f64; 2], b: &[f64; 2]) -> f64 {
    (a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)
}

/// Errors of the 2-D metrics.
#[derive(Debug, thiserror::Error)]
pub enum ShapeMetricError {
    #[error("{what}: the point sets have {a} and {b} points; exact W2 needs equal sizes")]
    Sizes {
        what: &'static str,
        a: usize,
        b: usize,
    },
    #[error("{what}: empty input")]
    Empty { what: &'static str },
    #[error("{what}: non-finite coordinate at point {index}")]
    NonFinite { what: &'static str, index: usize },
}

fn check(what: &'static str, p: &[[f64; 2]]) -> Result<(), ShapeMetricError> {
    if p.is_empty() {
        return Err(ShapeMetricError::Empty { what });
    }
    match p
        .iter()
        .position(|q| !(q[0].is_finite() && q[1].is_finite()))
    {
        Some(index) => Err(ShapeMetricError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Solves the linear assignment problem min Σ_i C[i, σ(i)] over permutations σ exactly, for a dense n×n
/// row-major cost matrix (shortest augmenting paths with dual potentials, O(n³) worst case; the
/// Jonker–Volgenant / Crouse family; scipy's `linear_sum_assignment` and POT's `emd` solve the same problem).
/// Returns σ as `row → column`.
pub fn assignment(cost: &[f64], n: usize) -> Vec<usize> {
    assert_eq!(cost.len(), n * n, "cost matrix must be n×n");
    const NONE: usize = usize::MAX;
    let inf = f64::INFINITY;
    let mut u = vec![0.0; n];
    let mut v = vec![0.0; n];
    let mut row4col = vec![NONE; n];
    let mut col4row = vec![NONE; n];
    // Column reduction (Jonker–Volgenant): v_j = min_i C[i, j] keeps every reduced cost C − u − v ≥ 0 and makes
    // each column's minimum tight; a column takes its minimising row while that row is free. Only the rows
    // left unmatched need a shortest augmenting path.
    for j in (0..n).rev() {
        let (mut best, mut bi) = (inf, 0usize);
        for i in 0..n {
            let c = cost[i * n + j];
            if c < best {
                best = c;
                bi = i;
            }
        }
        v[j] = best;
        if col4row[bi] == NONE {
            col4row[bi] = j;
            row4col[j] = bi;
        }
    }
    // Shortest augmenting paths (Dijkstra on reduced costs) from each free row, with the duals updated once per
    // augmentation; only the columns not yet reached are scanned.
    let mut spc = vec![inf; n];
    let mut path = vec![NONE; n];
    let mut remaining: Vec<usize> = Vec::with_capacity(n);
    let mut sr = vec![false; n];
    let mut sc = vec![false; n];
    for cur in 0..n {
        if col4row[cur] != NONE {
            continue;
        }
        spc.iter_mut().for_each(|x| *x = inf);
        sr.iter_mut().for_each(|x| *x = false);
        sc.iter_mut().for_each(|x| *x = false);
        remaining.clear();
        remaining.extend((0..n).rev());
        let mut min_val = 0.0;
        let mut i = cur;
        let sink = loop {
            sr[i] = true;
            let row = &cost[i * n..(i + 1) * n];
            let ui = u[i];
            let (mut lowest, mut index) = (inf, 0usize);
            for (it, &j) in remaining.iter().enumerate() {
                let r = min_val + row[j] - ui - v[j];
                if r < spc[j] {
                    path[j] = i;
                    spc[j] = r;
                }
                if spc[j] < lowest || (spc[j] == lowest && row4col[j] == NONE) {
                    lowest = spc[j];
                    index = it;
                }
            }
            min_val = lowest;
            let j = remaining.swap_remove(index);
            sc[j] = true;
            if row4col[j] == NONE {
                break j;
            }
            i = row4col[j];
        };
        u[cur] += min_val;
        for r in 0..n {
            if sr[r] && r != cur {
                u[r] += min_val - spc[col4row[r]];
            }
        }
        for c in 0..n {
            if sc[c] {
                v[c] -= min_val - spc[c];
            }
        }
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            let prev = col4row[r];
            col4row[r] = j;
            if r == cur {
                break;
            }
            j = prev;
        }
    }
    col4row
}

/// Exact 2-Wasserstein distance between two equal-size empirical measures: √(min_σ (1/n) Σ ‖a_i − b_σ(i)‖²).
pub fn w2(a: &[[f64; 2]], b: &[[f64; 2]]) -> Result<f64, ShapeMetricError> {
    check("W2 (generated)", a)?;
    check("W2 (reference)", b)?;
    if a.len() != b.len() {
        return Err(ShapeMetricError::Sizes {
            what: "W2",
            a: a.len(),
            b: b.len(),
        });
    }
    let n = a.len();
    let cost: Vec<f64> = a
        .iter()
        .flat_map(|p| b.iter().map(move |q| sq(p, q)))
        .collect();
    let s = assignment(&cost, n);
    Ok((s
        .iter()
        .enumerate()
        .map(|(i, &j)| cost[i * n + j])
        .sum::<f64>()
        / n as f64)
        .sqrt())
}

/// The RBF bandwidths of [`mmd`]: the median pairwise distance of the reference set times 1/4, 1/2, 1, 2, 4.
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
    [0.25, 0.5, 1.0, 2.0, 4.0]
        .iter()
        .map(|f| f * med.max(1e-12))
        .collect()
}

/// Squared MMD (biased V-statistic, ≥ 0) with the kernel Σ_σ exp(−‖x − y‖² / (2σ²)) over `bandwidths`.
pub fn mmd(a: &[[f64; 2]], b: &[[f64; 2]], bandwidths: &[f64]) -> Result<f64, ShapeMetricError> {
    check("MMD (generated)", a)?;
    check("MMD (reference)", b)?;
    let g: Vec<f64> = bandwidths.iter().map(|s| -1.0 / (2.0 * s * s)).collect();
    let k = |d2: f64| g.iter().map(|c| (c * d2).exp()).sum::<f64>();
    let mean = |x: &[[f64; 2]], y: &[[f64; 2]]| {
        x.iter()
            .map(|p| y.iter().map(|q| k(sq(p, q))).sum::<f64>())
            .sum::<f64>()
            / (x.len() * y.len()) as f64
    };
    Ok((mean(a, a) + mean(b, b) - 2.0 * mean(a, b)).max(0.0))
}

/// The official toy code's "PMF distance": the RMSE between the `bins`×`bins` histograms (as probability mass
/// functions) of the two sets on the reference set's bounding box. Generated mass outside the box is lost,
/// which the distance then counts.
pub fn pmf_distance(
    a: &[[f64; 2]],
    reference: &[[f64; 2]],
    bins: usize,
) -> Result<f64, ShapeMetricError> {
    check("PMF (generated)", a)?;
    check("PMF (reference)", reference)?;
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for p in reference {
        x0 = x0.min(p[0]);
        x1 = x1.max(p[0]);
        y0 = y0.min(p[1]);
        y1 = y1.max(p[1]);
    }
    let (wx, wy) = ((x1 - x0).max(1e-12), (y1 - y0).max(1e-12));
    let hist = |pts: &[[f64; 2]]| {
        let mut h = vec![0.0; bins * bins];
        for p in pts {
            let fx = (p[0] - x0) / wx;
            let fy = (p[1] - y0) / wy;
            if (0.0..=1.0).contains(&fx) && (0.0..=1.0).contains(&fy) {
                let i = ((fx * bins as f64) as usize).min(bins - 1);
                let j = ((fy * bins as f64) as usize).min(bins - 1);
                h[i * bins + j] += 1.0 / pts.len() as f64;
            }
        }
        h
    };
    let (ha, hb) = (hist(a), hist(reference));
    Ok((ha
        .iter()
        .zip(&hb)
        .map(|(p, q)| (p - q).powi(2))
        .sum::<f64>()
        / (bins * bins) as f64)
        .sqrt())
}

/// Straightness and kinetic energy of paths recorded on a grid of normalised time `s` (s_0 = 0 at the prior,
/// s_N = 1 at the data; `paths[n][j]` is path j at s_n). Velocities are the steps' finite differences
/// v_n = (x_{n+1} − x_n)/(s_{n+1} − s_n), exactly the Euler velocities of the sampler that recorded them.
/// Straightness = Σ_n Δs_n · mean_j ‖(x_N − x_0) − v_n‖² (0 for straight constant-speed paths);
/// kinetic energy = Σ_n Δs_n · mean_j ‖v_n‖².
pub fn straightness_and_energy(
    paths: &[Vec<[f64; 2]>],
    s: &[f64],
) -> Result<(f64, f64), ShapeMetricError> {
    if paths.len() < 2 || paths[0].is_empty() || s.len() != paths.len() {
        return Err(ShapeMetricError::Empty {
            what: "paths (need ≥ 2 grid times, one s per time)",
        });
    }
    let n = paths[0].len();
    let last = paths.len() - 1;
    let (mut st, mut ke) = (0.0, 0.0);
    for k in 0..last {
        let ds = s[k + 1] - s[k];
        let (mut a, mut b) = (0.0, 0.0);
        let steps = paths[k].iter().zip(&paths[k + 1]);
        for ((x0, x1), (start, end)) in steps.zip(paths[0].iter().zip(&paths[last])) {
            let v = [(x1[0] - x0[0]) / ds, (x1[1] - x0[1]) / ds];
            let d = [end[0] - start[0], end[1] - start[1]];
            a += sq(&d, &v);
            b += v[0] * v[0] + v[1] * v[1];
        }
        st += ds * a / n as f64;
        ke += ds * b / n as f64;
    }
    if !(st.is_finite() && ke.is_finite()) {
        return Err(ShapeMetricError::NonFinite {
            what: "paths",
            index: 0,
        });
    }
    Ok((st, ke))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> f64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            (-2.0 * self.next().max(1e-300).ln()).sqrt()
                * (2.0 * std::f64::consts::PI * self.next()).cos()
        }
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = Vec::new();
        for p in permutations(n - 1) {
            for i in 0..n {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    #[test]
    fn assignment_matches_brute_force() {
        let mut r = Lcg(3);
        for n in 1..=7 {
            for _ in 0..20 {
                let c: Vec<f64> = (0..n * n).map(|_| r.next() * 10.0).collect();
                let s = assignment(&c, n);
                let got: f64 = s.iter().enumerate().map(|(i, &j)| c[i * n + j]).sum();
                let best = permutations(n)
                    .iter()
                    .map(|p| {
                        p.iter()
                            .enumerate()
                            .map(|(i, &j)| c[i * n + j])
                            .sum::<f64>()
                    })
                    .fold(f64::INFINITY, f64::min);
                assert!((got - best).abs() < 1e-9, "n={n}: {got} vs {best}");
                let mut seen = s.clone();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn w2_on_a_line_is_the_sorted_matching() {
        let mut r = Lcg(5);
        let a: Vec<[f64; 2]> = (0..300).map(|_| [r.normal(), 0.0]).collect();
        let b: Vec<[f64; 2]> = (0..300).map(|_| [2.0 * r.normal() + 1.0, 0.0]).collect();
        let mut xa: Vec<f64> = a.iter().map(|p| p[0]).collect();
        let mut xb: Vec<f64> = b.iter().map(|p| p[0]).collect();
        xa.sort_by(f64::total_cmp);
        xb.sort_by(f64::total_cmp);
        let sorted = (xa
            .iter()
            .zip(&xb)
            .map(|(p, q)| (p - q).powi(2))
            .sum::<f64>()
            / 300.0)
            .sqrt();
        assert!((w2(&a, &b).unwrap() - sorted).abs() < 1e-9);
    }

    #[test]
    fn w2_of_gaussian_samples_approaches_the_gaussian_closed_form() {
        // W2(N(m1, I), N(m2, 4I)) = √(|m1 − m2|² + 2·(2 − 1)²) = √(|Δm|² + 2) for isotropic 2-D Gaussians.
        let mut r = Lcg(9);
        let n = 1000;
        let a: Vec<[f64; 2]> = (0..n).map(|_| [r.normal(), r.normal()]).collect();
        let b: Vec<[f64; 2]> = (0..n)
            .map(|_| [3.0 + 2.0 * r.normal(), -1.0 + 2.0 * r.normal()])
            .collect();
        let exact = (10.0f64 + 2.0).sqrt();
        let got = w2(&a, &b).unwrap();
        assert!((got - exact).abs() < 0.2, "{got} vs {exact}");
    }

    #[test]
    #[ignore = "timing probe: cargo test --release -p vsdm-eval -- --ignored w2_timing --nocapture"]
    fn w2_timing() {
        let mut r = Lcg(1);
        // A stretched spiral against a blurred copy: the toys' case.
        let spiral = |r: &mut Lcg, blur: f64| -> [f64; 2] {
            let th = r.next().sqrt() * 3.0 * std::f64::consts::PI;
            let rad = th + std::f64::consts::PI;
            [
                0.4 * (rad * th.cos() + blur * r.normal()),
                3.2 * (rad * th.sin() + blur * r.normal()),
            ]
        };
        let a: Vec<[f64; 2]> = (0..2000).map(|_| spiral(&mut r, 0.25)).collect();
        let b: Vec<[f64; 2]> = (0..2000)
            .map(|i| {
                if i % 2 == 0 {
                    spiral(&mut r, 1.5)
                } else {
                    [3.0 * r.normal(), 12.0 * r.normal()]
                }
            })
            .collect();
        let t = std::time::Instant::now();
        let d = w2(&a, &b).unwrap();
        let tw = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let m = mmd(&a, &b, &mmd_bandwidths(&a)).unwrap();
        println!(
            "2000 vs 2000: W2 {d:.4} in {tw:.2} s, MMD {m:.4} in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }

    #[test]
    fn mmd_pmf_and_straightness_behave() {
        let mut r = Lcg(11);
        let a: Vec<[f64; 2]> = (0..400).map(|_| [r.normal(), r.normal()]).collect();
        let a2: Vec<[f64; 2]> = (0..400).map(|_| [r.normal(), r.normal()]).collect();
        let shifted: Vec<[f64; 2]> = a2.iter().map(|p| [p[0] + 2.0, p[1]]).collect();
        let bw = mmd_bandwidths(&a);
        assert_eq!(mmd(&a, &a, &bw).unwrap(), 0.0);
        let near = mmd(&a2, &a, &bw).unwrap();
        let far = mmd(&shifted, &a, &bw).unwrap();
        assert!(far > 10.0 * near, "{near} vs {far}");
        assert_eq!(pmf_distance(&a, &a, 100).unwrap(), 0.0);
        // All generated mass outside the box is far worse than a second sample of the same law.
        let big: Vec<[f64; 2]> = (0..8000).map(|_| [r.normal(), r.normal()]).collect();
        let (b1, b2) = big.split_at(4000);
        let away: Vec<[f64; 2]> = b1.iter().map(|p| [p[0] + 100.0, p[1]]).collect();
        let d = pmf_distance(&away, b1, 20).unwrap();
        assert!(d > 2.0 * pmf_distance(b2, b1, 20).unwrap());
        // Straight constant-speed paths: straightness 0, KE = |x_1 − x_0|².
        let s: Vec<f64> = (0..=10).map(|k| k as f64 / 10.0).collect();
        let paths: Vec<Vec<[f64; 2]>> = s
            .iter()
            .map(|&t| vec![[3.0 * t, -4.0 * t], [1.0, 1.0 + t]])
            .collect();
        let (st, ke) = straightness_and_energy(&paths, &s).unwrap();
        assert!(st.abs() < 1e-12, "{st}");
        assert!((ke - (25.0 + 1.0) / 2.0).abs() < 1e-12, "{ke}");
        // A detour is not straight.
        let bent: Vec<Vec<[f64; 2]>> = s
            .iter()
            .map(|&t| vec![[t, (std::f64::consts::PI * t).sin()]])
            .collect();
        assert!(straightness_and_energy(&bent, &s).unwrap().0 > 0.1);
        assert!(w2(&a, &a[..10]).is_err());
        assert!(mmd(&[[f64::NAN, 0.0]], &a, &bw).is_err());
    }
}
