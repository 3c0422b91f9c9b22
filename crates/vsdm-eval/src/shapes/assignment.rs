//! Exact optimal assignment (linear sum assignment) and the exact W2 it gives.

use super::{check, sq, ShapeMetricError};

/// Solves the linear assignment problem min Σ_i C[i, σ(i)] over permutations σ exactly, for a dense n×n
/// row-major cost matrix (shortest augmenting paths with dual potentials, O(n³) worst case; the
/// Jonker–Volgenant / Crouse family; scipy's `linear_sum_assignment` and POT's `emd` solve the same problem).
/// Returns σ as `row → column`; a cost matrix of the wrong size or with a NaN or infinite entry is an error.
///
/// Hand-written rather than taken from a crate: crates.io's `lsap` (a one-file port of scipy's solver) pins
/// `derive_more` 0.99, and `pathfinding`'s Kuhn–Munkres needs integer weights. Optimality is certified in the
/// tests by the LP dual (u_i + v_j ≤ C_ij everywhere, with equality on the assignment).
pub fn assignment(cost: &[f64], n: usize) -> Result<Vec<usize>, ShapeMetricError> {
    if cost.len() != n * n {
        return Err(ShapeMetricError::Invalid {
            what: "assignment cost matrix",
            reason: format!("{} entries for n = {n} (need n² = {})", cost.len(), n * n),
        });
    }
    if let Some(index) = cost.iter().position(|c| !c.is_finite()) {
        return Err(ShapeMetricError::NonFinite {
            what: "assignment cost matrix",
            index,
        });
    }
    Ok(solve(cost, n).0)
}

/// The assignment and its optimal dual potentials (u, v).
fn solve(cost: &[f64], n: usize) -> (Vec<usize>, Vec<f64>, Vec<f64>) {
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
    (col4row, u, v)
}

/// Exact 2-Wasserstein distance between two equal-size empirical measures: √(min_σ (1/n) Σ ‖a_i − b_σ(i)‖²),
/// the optimal-transport cost POT's `ot.emd2` returns for uniform weights (an optimal plan between equal-size
/// uniform measures can be taken to be a permutation). O(n³) worst case, n up to a few thousand.
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
    let (s, _, _) = solve(&cost, n);
    Ok((s
        .iter()
        .enumerate()
        .map(|(i, &j)| cost[i * n + j])
        .sum::<f64>()
        / n as f64)
        .sqrt())
}

#[cfg(test)]
mod tests {
    use super::super::Lcg;
    use super::*;

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

    fn total(c: &[f64], n: usize, s: &[usize]) -> f64 {
        s.iter().enumerate().map(|(i, &j)| c[i * n + j]).sum()
    }

    #[test]
    fn assignment_matches_brute_force_over_all_permutations() {
        let mut r = Lcg(3);
        for n in 1..=7 {
            let perms = permutations(n);
            for trial in 0..20 {
                // Continuous costs, and integer costs with many ties.
                let c: Vec<f64> = (0..n * n)
                    .map(|_| {
                        let x = r.next() * 10.0;
                        if trial % 2 == 0 {
                            x
                        } else {
                            x.floor()
                        }
                    })
                    .collect();
                let s = assignment(&c, n).unwrap();
                let best = perms
                    .iter()
                    .map(|p| total(&c, n, p))
                    .fold(f64::INFINITY, f64::min);
                assert!(
                    (total(&c, n, &s) - best).abs() < 1e-9,
                    "n={n}: {} vs {best}",
                    total(&c, n, &s)
                );
                let mut seen = s.clone();
                seen.sort();
                assert_eq!(seen, (0..n).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn lp_dual_certifies_optimality_at_n_400() {
        // Weak duality: any (u, v) with u_i + v_j ≤ C_ij bounds every assignment's cost from below by Σu + Σv;
        // an assignment that reaches the bound is optimal. The solver's duals must be feasible and tight.
        let mut r = Lcg(17);
        let n = 400;
        let a: Vec<[f64; 2]> = (0..n).map(|_| [r.normal(), 8.0 * r.normal()]).collect();
        let b: Vec<[f64; 2]> = (0..n).map(|_| [3.0 * r.next(), r.normal()]).collect();
        let c: Vec<f64> = a
            .iter()
            .flat_map(|p| b.iter().map(move |q| sq(p, q)))
            .collect();
        let (s, u, v) = solve(&c, n);
        let scale = c.iter().fold(0.0f64, |m, x| m.max(*x));
        let tol = 1e-9 * scale;
        for i in 0..n {
            for j in 0..n {
                assert!(
                    u[i] + v[j] <= c[i * n + j] + tol,
                    "dual infeasible at {i},{j}"
                );
            }
            assert!(
                (u[i] + v[s[i]] - c[i * n + s[i]]).abs() <= tol,
                "row {i} not tight"
            );
        }
        let dual: f64 = u.iter().sum::<f64>() + v.iter().sum::<f64>();
        assert!((total(&c, n, &s) - dual).abs() <= 1e-9 * total(&c, n, &s));
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
        // For diagonal covariances W2²(N(m1, diag(s1²)), N(m2, diag(s2²))) = |m1 − m2|² + Σ_k (s1_k − s2_k)².
        // N((0, 0), diag(1, 9)) vs N((3, −1), diag(4, 1)): 10 + 1 + 4 = 15. The empirical W2 of n = 1500 samples
        // is within a few percent (its bias shrinks like n^(-1/2) in 2-D).
        let mut r = Lcg(9);
        let n = 1500;
        let a: Vec<[f64; 2]> = (0..n).map(|_| [r.normal(), 3.0 * r.normal()]).collect();
        let b: Vec<[f64; 2]> = (0..n)
            .map(|_| [3.0 + 2.0 * r.normal(), -1.0 + r.normal()])
            .collect();
        let exact = 15.0f64.sqrt();
        let got = w2(&a, &b).unwrap();
        assert!((got - exact).abs() < 0.05 * exact, "{got} vs {exact}");
        assert_eq!(w2(&a, &a).unwrap(), 0.0);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(matches!(
            assignment(&[1.0, 2.0, 3.0], 2),
            Err(ShapeMetricError::Invalid { .. })
        ));
        assert_eq!(
            assignment(&[1.0, f64::NAN, 3.0, 4.0], 2).unwrap_err(),
            ShapeMetricError::NonFinite {
                what: "assignment cost matrix",
                index: 1
            }
        );
        let a = [[0.0, 0.0], [1.0, 1.0]];
        assert!(matches!(
            w2(&a, &a[..1]),
            Err(ShapeMetricError::Sizes { a: 2, b: 1, .. })
        ));
        assert!(matches!(
            w2(&[[0.0, f64::INFINITY]], &a[..1]),
            Err(ShapeMetricError::NonFinite { index: 0, .. })
        ));
        assert!(matches!(w2(&[], &[]), Err(ShapeMetricError::Empty { .. })));
    }

    /// `cargo test --release -p vsdm-eval --lib -- --ignored w2_timing --nocapture`
    #[test]
    #[ignore = "timing probe"]
    fn w2_timing() {
        let mut r = Lcg(1);
        // A 1:8 stretched spiral against a blurred copy half mixed with a Gaussian: the toys' case.
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
        println!(
            "W2 of 2000 vs 2000 points: {d:.4} in {:.2} s",
            t.elapsed().as_secs_f64()
        );
    }
}
