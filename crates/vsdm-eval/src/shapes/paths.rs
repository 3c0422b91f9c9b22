//! Straightness and kinetic energy of recorded probability-flow trajectories (VSMD's `measure_straightness`,
//! ALGORITHM.md §F.1).
//!
//! Paths are recorded on a time grid s_0 < s_1 < … < s_N in the direction of travel (for a reverse-time sampler
//! pass s = T − t, or the normalised s = 1 − t/T that VSMD's notebooks use); `paths[n][j]` is path j at s_n.
//! With L = s_N − s_0 and Δs_n = s_{n+1} − s_n (left-point rule, the Euler sampler's own quadrature):
//!
//! - straightness = Σ_{n<N} Δs_n · mean_j ‖(x_N − x_0)/L − v_n‖², 0 exactly for straight constant-speed paths
//!   (for s on [0, 1], L = 1 and this is VSMD's dt·Σ_n E‖(x_end − x_start) − v(x_{t_n}, t_n)‖²);
//! - kinetic energy = Σ_{n<N} Δs_n · mean_j ‖v_n‖².

use super::ShapeMetricError;

type Paths = [Vec<[f64; 2]>];

/// Checks the grid and the recorded states; returns the number of paths.
fn check_grid(paths: &Paths, s: &[f64]) -> Result<usize, ShapeMetricError> {
    if paths.len() < 2 || s.len() != paths.len() {
        return Err(ShapeMetricError::Invalid {
            what: "paths",
            reason: format!(
                "need ≥ 2 recorded times and one grid time per record, got {} records and {} times",
                paths.len(),
                s.len()
            ),
        });
    }
    let n = paths[0].len();
    if n == 0 {
        return Err(ShapeMetricError::Empty { what: "paths" });
    }
    if let Some(k) = paths.iter().position(|p| p.len() != n) {
        return Err(ShapeMetricError::Invalid {
            what: "paths",
            reason: format!("record {k} has {} points, record 0 has {n}", paths[k].len()),
        });
    }
    if let Some(index) = s.iter().position(|t| !t.is_finite()) {
        return Err(ShapeMetricError::NonFinite {
            what: "time grid",
            index,
        });
    }
    if let Some(k) = s.windows(2).position(|w| w[1] <= w[0]) {
        return Err(ShapeMetricError::Invalid {
            what: "time grid",
            reason: format!(
                "must increase strictly in the direction of travel: s[{k}] = {}, s[{}] = {}",
                s[k],
                k + 1,
                s[k + 1]
            ),
        });
    }
    check_states("paths", paths)?;
    Ok(n)
}

/// Every state finite; the error's index is record · points + point.
fn check_states(what: &'static str, states: &Paths) -> Result<(), ShapeMetricError> {
    for (k, rec) in states.iter().enumerate() {
        if let Some(j) = rec
            .iter()
            .position(|p| !(p[0].is_finite() && p[1].is_finite()))
        {
            return Err(ShapeMetricError::NonFinite {
                what,
                index: k * rec.len() + j,
            });
        }
    }
    Ok(())
}

/// Straightness and kinetic energy from recorded states only, the velocities taken as the steps' finite
/// differences v_n = (x_{n+1} − x_n)/Δs_n — exactly the velocities of an Euler sampler that recorded every
/// step. Returns (straightness, kinetic energy).
pub fn straightness_and_energy(paths: &Paths, s: &[f64]) -> Result<(f64, f64), ShapeMetricError> {
    check_grid(paths, s)?;
    accumulate(paths, s, |k, ds, v| {
        for ((vj, x0), x1) in v.iter_mut().zip(&paths[k]).zip(&paths[k + 1]) {
            *vj = [(x1[0] - x0[0]) / ds, (x1[1] - x0[1]) / ds];
        }
    })
}

/// Straightness and kinetic energy from recorded states and the model's velocities: `velocities[n][j]` is
/// v(x_n^j, s_n), the probability-flow drift in the direction of travel (dx/ds), for n = 0…N−1 (a velocity
/// recorded at the final time, if given, is not used by the left-point rule). Returns (straightness, kinetic
/// energy).
pub fn straightness_with_velocities(
    paths: &Paths,
    velocities: &Paths,
    s: &[f64],
) -> Result<(f64, f64), ShapeMetricError> {
    let n = check_grid(paths, s)?;
    let steps = paths.len() - 1;
    if velocities.len() != steps && velocities.len() != paths.len() {
        return Err(ShapeMetricError::Invalid {
            what: "velocities",
            reason: format!(
                "{} records for {} recorded states (need {steps} or {})",
                velocities.len(),
                paths.len(),
                paths.len()
            ),
        });
    }
    if let Some(k) = velocities.iter().position(|v| v.len() != n) {
        return Err(ShapeMetricError::Invalid {
            what: "velocities",
            reason: format!(
                "record {k} has {} points, the paths have {n}",
                velocities[k].len()
            ),
        });
    }
    check_states("velocities", velocities)?;
    accumulate(paths, s, |k, _, v| v.copy_from_slice(&velocities[k]))
}

/// Σ_n Δs_n · mean_j ‖(x_N − x_0)/L − v_n‖² and Σ_n Δs_n · mean_j ‖v_n‖², with `velocity(n, Δs_n, v)` writing
/// v_n into `v`.
fn accumulate(
    paths: &Paths,
    s: &[f64],
    mut velocity: impl FnMut(usize, f64, &mut [[f64; 2]]),
) -> Result<(f64, f64), ShapeMetricError> {
    let last = paths.len() - 1;
    let span = s[last] - s[0];
    let chord: Vec<[f64; 2]> = paths[0]
        .iter()
        .zip(&paths[last])
        .map(|(a, b)| [(b[0] - a[0]) / span, (b[1] - a[1]) / span])
        .collect();
    let m = chord.len() as f64;
    let mut v = vec![[0.0; 2]; chord.len()];
    let (mut straight, mut kinetic) = (0.0, 0.0);
    for k in 0..last {
        let ds = s[k + 1] - s[k];
        velocity(k, ds, &mut v);
        let (mut a, mut b) = (0.0, 0.0);
        for (c, vj) in chord.iter().zip(&v) {
            a += (c[0] - vj[0]).powi(2) + (c[1] - vj[1]).powi(2);
            b += vj[0] * vj[0] + vj[1] * vj[1];
        }
        straight += ds * a / m;
        kinetic += ds * b / m;
    }
    if !(straight.is_finite() && kinetic.is_finite()) {
        return Err(ShapeMetricError::Invalid {
            what: "paths",
            reason: "straightness or kinetic energy overflowed".into(),
        });
    }
    Ok((straight, kinetic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn grid(n: usize) -> Vec<f64> {
        (0..=n).map(|k| k as f64 / n as f64).collect()
    }

    #[test]
    fn straight_constant_speed_paths_have_zero_straightness() {
        let s = grid(10);
        let paths: Vec<Vec<[f64; 2]>> = s
            .iter()
            .map(|&t| vec![[3.0 * t, -4.0 * t], [1.0, 1.0 + t]])
            .collect();
        let (st, ke) = straightness_and_energy(&paths, &s).unwrap();
        assert!(st.abs() < 1e-12, "{st}");
        // KE = mean_j |x_1 − x_0|² over a unit span: (25 + 1)/2.
        assert!((ke - 13.0).abs() < 1e-12, "{ke}");
        let vel: Vec<Vec<[f64; 2]>> = s.iter().map(|_| vec![[3.0, -4.0], [0.0, 1.0]]).collect();
        let (st, ke) = straightness_with_velocities(&paths, &vel, &s).unwrap();
        assert!(st.abs() < 1e-12 && (ke - 13.0).abs() < 1e-12);
    }

    #[test]
    fn a_sine_path_has_the_integral_values() {
        // x(s) = (s, sin πs) on [0, 1], v = (1, π cos πs), chord (1, 0):
        // straightness = ∫ π² cos²(πs) ds = π²/2, kinetic = ∫ 1 + π² cos²(πs) ds = 1 + π²/2.
        // The left-point rule is exact for this periodic integrand once N > 2.
        let s = grid(64);
        let paths: Vec<Vec<[f64; 2]>> = s.iter().map(|&t| vec![[t, (PI * t).sin()]]).collect();
        let vel: Vec<Vec<[f64; 2]>> = s
            .iter()
            .map(|&t| vec![[1.0, PI * (PI * t).cos()]])
            .collect();
        let (st, ke) = straightness_with_velocities(&paths, &vel, &s).unwrap();
        assert!((st - PI * PI / 2.0).abs() < 1e-12, "{st}");
        assert!((ke - 1.0 - PI * PI / 2.0).abs() < 1e-12, "{ke}");
        // Finite differences converge to the same values on a fine grid.
        let s = grid(4000);
        let paths: Vec<Vec<[f64; 2]>> = s.iter().map(|&t| vec![[t, (PI * t).sin()]]).collect();
        let (st, ke) = straightness_and_energy(&paths, &s).unwrap();
        assert!((st - PI * PI / 2.0).abs() < 1e-5, "{st}");
        assert!((ke - 1.0 - PI * PI / 2.0).abs() < 1e-5, "{ke}");
    }

    #[test]
    fn finite_differences_equal_the_velocities_of_an_euler_recording() {
        // Euler steps of the rotation field v(x) = (−y, x) on a non-uniform grid.
        let s: Vec<f64> = (0..=30).map(|k| (k as f64 / 30.0).powi(2)).collect();
        let mut x = vec![[1.0, 0.0], [0.0, 2.0], [-1.5, 0.5]];
        let (mut paths, mut vel) = (Vec::new(), Vec::new());
        for k in 0..s.len() {
            let v: Vec<[f64; 2]> = x.iter().map(|p| [-p[1], p[0]]).collect();
            paths.push(x.clone());
            vel.push(v.clone());
            if k + 1 < s.len() {
                let ds = s[k + 1] - s[k];
                for (p, vj) in x.iter_mut().zip(&v) {
                    *p = [p[0] + ds * vj[0], p[1] + ds * vj[1]];
                }
            }
        }
        let fd = straightness_and_energy(&paths, &s).unwrap();
        let mv = straightness_with_velocities(&paths, &vel, &s).unwrap();
        assert!(
            (fd.0 - mv.0).abs() < 1e-12 && (fd.1 - mv.1).abs() < 1e-12,
            "{fd:?} {mv:?}"
        );
        assert!(fd.0 > 0.1, "a rotation is not straight: {}", fd.0);
        // Velocities for the N steps only are accepted too.
        let short = straightness_with_velocities(&paths, &vel[..30], &s).unwrap();
        assert_eq!(short, mv);
    }

    #[test]
    fn bad_paths_are_named() {
        let s = grid(2);
        let ok: Vec<Vec<[f64; 2]>> = vec![vec![[0.0, 0.0]]; 3];
        let e = straightness_and_energy(&ok, &s[..2]).unwrap_err();
        assert!(e.to_string().contains("3 records and 2 times"), "{e}");
        let mut ragged = ok.clone();
        ragged[2].push([1.0, 1.0]);
        let e = straightness_and_energy(&ragged, &s).unwrap_err();
        assert!(e.to_string().contains("record 2 has 2 points"), "{e}");
        let e = straightness_and_energy(&ok, &[0.0, 0.5, 0.5]).unwrap_err();
        assert!(e.to_string().contains("increase strictly"), "{e}");
        let mut nan = ok.clone();
        nan[1][0][1] = f64::NAN;
        assert_eq!(
            straightness_and_energy(&nan, &s).unwrap_err(),
            ShapeMetricError::NonFinite {
                what: "paths",
                index: 1
            }
        );
        let e = straightness_with_velocities(&ok, &ok[..1], &s).unwrap_err();
        assert!(e.to_string().contains("need 2 or 3"), "{e}");
        // The index of a bad state is record · points + point: record 2, point 1 of 3 is 7.
        let mut wide: Vec<Vec<[f64; 2]>> = vec![vec![[0.0, 0.0]; 3]; 3];
        wide[2][1][0] = f64::INFINITY;
        assert_eq!(
            straightness_and_energy(&wide, &s).unwrap_err(),
            ShapeMetricError::NonFinite {
                what: "paths",
                index: 7
            }
        );
        // One record is no path; two (a single step) are: from (0, 0) to (3, 4) over Δs = 2, velocity
        // (1.5, 2), and a path that stays at (1, 1): both straight (0), kinetic energy 2 · (6.25 + 0) / 2.
        let e = straightness_and_energy(&ok[..1], &s[..1]).unwrap_err();
        assert!(e.to_string().contains("need ≥ 2 recorded times"), "{e}");
        let step = vec![vec![[0.0, 0.0], [1.0, 1.0]], vec![[3.0, 4.0], [1.0, 1.0]]];
        let (st, ke) = straightness_and_energy(&step, &[1.0, 3.0]).unwrap();
        assert!(st.abs() < 1e-15 && (ke - 6.25).abs() < 1e-12, "{st} {ke}");
    }
}
