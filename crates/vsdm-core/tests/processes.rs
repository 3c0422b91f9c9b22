//! Forward processes against independent references: special cases of each other, Monte-Carlo simulation of the
//! SDE, and Gaussian data whose every marginal score is known, pushed back through the samplers.

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};
use vsdm_core::kernel::{full, momentum};
use vsdm_core::sampler::{sample_with_eps, sample_with_score, SamplerConfig, SamplerKind};
use vsdm_core::{
    BetaSchedule, ForwardProcess, LinearDrift, Marginals, NoiseRng, Vp, Vsdm, Vsmd, VsmdParams,
};

const DEV: Device = Device::Cpu;

fn to_rows(x: &Tensor) -> Vec<Vec<f64>> {
    x.to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec2::<f64>()
        .unwrap()
}

fn from_rows(rows: &[DVector<f64>]) -> Tensor {
    let d = rows[0].len();
    let v: Vec<f32> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&x| x as f32))
        .collect();
    Tensor::from_vec(v, (rows.len(), d), &DEV).unwrap()
}

/// A batch as a matrix, one row per element.
fn to_matrix(x: &Tensor) -> DMatrix<f64> {
    let rows = to_rows(x);
    DMatrix::from_fn(rows.len(), rows[0].len(), |i, j| rows[i][j])
}

/// A matrix as a batch, one element per row.
fn from_matrix(m: &DMatrix<f64>) -> Tensor {
    from_rows(&m.row_iter().map(|r| r.transpose()).collect::<Vec<_>>())
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    vsdm_core::compare::max_abs_diff(a, b).unwrap()
}

/// Sample mean and covariance of the rows.
fn moments(rows: &[Vec<f64>]) -> (DVector<f64>, DMatrix<f64>) {
    let n = rows.len() as f64;
    let d = rows[0].len();
    let mut m = DVector::zeros(d);
    for r in rows {
        m += DVector::from_column_slice(r);
    }
    m /= n;
    let mut c = DMatrix::zeros(d, d);
    for r in rows {
        let e = DVector::from_column_slice(r) - &m;
        c += &e * e.transpose();
    }
    (m, c / (n - 1.0))
}

/// |m̂ − m| ≤ 5 σ/√n + `bias` on every coordinate and |Ĉ − C| ≤ 5 √((C_ii C_jj + C_ij²)/n) + `bias`·scale.
fn assert_moments(rows: &[Vec<f64>], m: &DVector<f64>, c: &DMatrix<f64>, bias: f64, what: &str) {
    let n = rows.len() as f64;
    let (mh, ch) = moments(rows);
    for i in 0..m.len() {
        let tol = 5.0 * (c[(i, i)] / n).sqrt() + bias * c[(i, i)].sqrt();
        assert!(
            (mh[i] - m[i]).abs() <= tol,
            "{what}: mean[{i}] {} vs {} (tol {tol})",
            mh[i],
            m[i]
        );
        for j in 0..m.len() {
            let se = ((c[(i, i)] * c[(j, j)] + c[(i, j)].powi(2)) / n).sqrt();
            let tol = 5.0 * se + bias * (c[(i, i)] * c[(j, j)]).sqrt();
            assert!(
                (ch[(i, j)] - c[(i, j)]).abs() <= tol,
                "{what}: cov[{i},{j}] {} vs {} (tol {tol})",
                ch[(i, j)],
                c[(i, j)]
            );
        }
    }
}

fn gaussian_rows(
    rng: &mut NoiseRng,
    n: usize,
    m: &DVector<f64>,
    s: &DMatrix<f64>,
) -> Vec<DVector<f64>> {
    let l = s.clone().cholesky().unwrap().l();
    let e = to_rows(&rng.randn(&[n, m.len()], &DEV).unwrap());
    e.iter()
        .map(|r| m + &l * DVector::from_column_slice(r))
        .collect()
}

#[test]
fn vp_is_vsdm_with_zero_a() {
    let sched = BetaSchedule::vsdm_default();
    let shape = [3, 2];
    let vp = Vp::new(sched, &shape).unwrap();
    let vs = Vsdm::new(sched, &shape, LinearDrift::zeros_diagonal(6), &DEV).unwrap();
    let times = [0.01, 0.3, 0.77, 1.0];
    let (mv, ms) = (
        vp.marginals(&times, &DEV).unwrap(),
        vs.marginals(&times, &DEV).unwrap(),
    );
    let mut rng = NoiseRng::new(1);
    let x0 = rng.randn(&[4, 3, 2], &DEV).unwrap();
    let eps = rng.randn(&[4, 3, 2], &DEV).unwrap();
    let idx = Tensor::new(&[0u32, 1, 2, 3], &DEV).unwrap();
    let (a, _) = mv.perturb(&x0, &idx, &eps).unwrap();
    let (b, _) = ms.perturb(&x0, &idx, &eps).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(
        diff < 1e-6,
        "VP and VSDM(A=0) perturbations differ by {diff}"
    );
    for t in [0.2, 0.9] {
        let d1 = vp.drift(&x0, t).unwrap();
        let d2 = vs.drift(&x0, t).unwrap();
        let diff = max_abs_diff(&d1, &d2);
        assert!(diff < 1e-6);
        assert_eq!(vp.diffusion_sq(t), vs.diffusion_sq(t));
    }
}

#[test]
fn cld_is_vsmd_with_zero_c() {
    let sched = BetaSchedule::constant(4.0, 1.0).unwrap();
    let p = VsmdParams::default();
    let cld = Vsmd::cld(sched, &[2], p, &DEV).unwrap();
    let crit = Vsmd::critical(sched, &[2], vec![0.0, 0.0], p, &DEV).unwrap();
    // CLD records that a was given, not derived from c.
    assert_eq!(cld.params().kappa, None);
    assert_eq!(crit.params().kappa, Some(1.0));
    // The critical transform at c = 0, κ = 1, γ = 2 gives a = 0: CLD.
    assert!(
        crit.a().iter().all(|a| a.abs() < 1e-15),
        "a(0) = {:?}",
        crit.a()
    );
    let times = [0.05, 0.5, 1.0];
    let (m1, m2) = (
        cld.marginals(&times, &DEV).unwrap(),
        crit.marginals(&times, &DEV).unwrap(),
    );
    let mut rng = NoiseRng::new(2);
    let x0 = rng.randn(&[3, 2], &DEV).unwrap();
    let eps = rng.randn(&[3, 4], &DEV).unwrap();
    let idx = Tensor::new(&[0u32, 1, 2], &DEV).unwrap();
    let (a, _) = m1.perturb(&x0, &idx, &eps).unwrap();
    let (b, _) = m2.perturb(&x0, &idx, &eps).unwrap();
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-6);
}

/// The critical-damping transform by its definition (VSMD §E.2): per element, dx = ½β v dt and
/// dv = ½β (−k x − Γ v) dt + …, with k = 1 − 2γa and Γ = γ(1 − 2c) (the forward score a x + c v on v). The
/// oscillator λ² + Γλ + k is critically damped (a double root) at κ = 1 and has Γ² = 4κk in general.
#[test]
fn the_critical_transform_damps_as_asked() {
    let sched = BetaSchedule::constant(4.0, 1.0).unwrap();
    let c = vec![-0.3, 0.0, 0.15, 0.4];
    for gamma in [2.0, 1.5] {
        for kappa in [1.0, 0.9, 0.5] {
            let params = VsmdParams {
                gamma,
                kappa: Some(kappa),
                ..VsmdParams::default()
            };
            let p = Vsmd::critical(sched, &[4], c.clone(), params, &DEV).unwrap();
            assert_eq!(p.c(), c.as_slice());
            assert_eq!(p.a().len(), c.len());
            for (&a, &ci) in p.a().iter().zip(&c) {
                let (k, fr) = (1.0 - 2.0 * gamma * a, gamma * (1.0 - 2.0 * ci));
                assert!(
                    (fr * fr - 4.0 * kappa * k).abs() < 1e-12,
                    "γ {gamma} κ {kappa} c {ci}: a {a} gives k {k}, Γ {fr}"
                );
                if kappa == 1.0 {
                    // A double eigenvalue −Γ/2 of the companion matrix [[0, 1], [−k, −Γ]].
                    let m = nalgebra::Matrix2::new(0.0, 1.0, -k, -fr);
                    let ev = m.complex_eigenvalues();
                    for e in ev.iter() {
                        assert!((e.re + fr / 2.0).abs() < 1e-6 && e.im.abs() < 1e-6, "{ev}");
                    }
                }
            }
        }
    }
}

/// Euler–Maruyama of the forward SDE with a fine step against the closed-form mean and covariance.
fn forward_monte_carlo<P: ForwardProcess>(
    p: &P,
    x0: &DVector<f64>,
    t: f64,
    m: DVector<f64>,
    c: DMatrix<f64>,
    what: &str,
) {
    let n = 20_000;
    let steps = 1000;
    let mut rng = NoiseRng::new(7);
    let x0t = from_rows(&vec![x0.clone(); n]);
    let xi0 = rng.randn(&[n, x0.len()], &DEV).unwrap();
    let mut z = p.initial_state(&x0t, &xi0).unwrap();
    let h = t / steps as f64;
    for k in 0..steps {
        let s = k as f64 * h;
        if k == steps / 2 {
            // `diffusion_sq` is the g² of the noise this simulation (matching the closed form) uses.
            let ones = Tensor::ones(z.dims(), candle_core::DType::F32, &DEV).unwrap();
            let inc = to_rows(&p.noise_increment(&ones, s, h).unwrap());
            let g = (p.diffusion_sq(s) * h).sqrt();
            assert!(
                inc[0].iter().any(|v| *v != 0.0)
                    && inc[0].iter().all(|v| *v == 0.0 || (v - g).abs() < 1e-6 * g),
                "{what}: noise increment {:?} vs √(g² h) = {g}",
                inc[0]
            );
        }
        let f = p.drift(&z, s).unwrap();
        let xi = rng.randn(z.dims(), &DEV).unwrap();
        z = ((&z + (f * h).unwrap()).unwrap() + p.noise_increment(&xi, s, h).unwrap()).unwrap();
    }
    // The EM bias is O(h); allow 1% of the scale on top of the sampling error.
    assert_moments(&to_rows(&z), &m, &c, 0.01, what);
}

#[test]
fn monte_carlo_forward_matches_closed_form_vsdm_full() {
    let sched = BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap();
    let a = DMatrix::from_row_slice(2, 2, &[0.3, -0.4, 0.2, 0.8]); // d has a negative eigen-part: expanding
    let p = Vsdm::new(sched, &[2], LinearDrift::Full(a.clone()), &DEV).unwrap();
    let x0 = DVector::from_vec(vec![1.5, -0.5]);
    let t = 0.6;
    let k = full::kernel(&full::drift_matrix(&a), sched.integral(t), t).unwrap();
    forward_monte_carlo(&p, &x0, t, &k.mean * &x0, k.cov.clone(), "VSDM full A");
}

#[test]
fn monte_carlo_forward_matches_closed_form_vsmd() {
    let sched = BetaSchedule::constant(4.0, 1.0).unwrap();
    let params = VsmdParams {
        kappa: Some(0.9),
        // Not 1, so that the initial velocity's scale is checked too.
        v0_var: 0.3,
        ..Default::default()
    };
    let p = Vsmd::critical(sched, &[1], vec![0.2], params, &DEV).unwrap();
    let x0 = DVector::from_vec(vec![1.0]);
    let t = 0.5;
    let k = momentum::kernel(&p.oscillator(0), sched.integral(t), params.v0_var);
    let m = DVector::from_vec(vec![k.phi[(0, 0)], k.phi[(1, 0)]]);
    let c = DMatrix::from_row_slice(2, 2, k.cov.as_slice());
    forward_monte_carlo(&p, &x0, t, m, c, "VSMD κ=0.9");
}

/// The integrators of the Gaussian round trips: (kind, steps, allowed bias as a fraction of the scale).
const INTEGRATORS: [(SamplerKind, usize, f64); 3] = [
    (SamplerKind::EulerMaruyama, 400, 0.04),
    (SamplerKind::Euler, 400, 0.03),
    (SamplerKind::Heun, 60, 0.02),
];

/// Runs the three integrators with the exact score of the Gaussian marginals, from the exact time-T marginal
/// (the prior N(0, Σ_T) is its approximation; starting from the exact one isolates the sampler and the score
/// layout), and checks the t_eps marginal against the data law (with σ(t_eps) added).
fn gaussian_roundtrip<P: ForwardProcess>(
    p: &P,
    mean_cov: &dyn Fn(f64) -> (DVector<f64>, DMatrix<f64>),
    score_block: std::ops::Range<usize>,
    data_block: std::ops::Range<usize>,
    what: &str,
) {
    roundtrip(p, mean_cov, score_block, data_block, what, false)
}

/// As [`gaussian_roundtrip`], from the exact time-T marginal (`from_prior = false`) or from the prior
/// N(0, Σ_{T|0}) itself (`from_prior = true`; the caller then picks data and schedule with ‖M_T m‖ negligible).
fn roundtrip<P: ForwardProcess>(
    p: &P,
    mean_cov: &dyn Fn(f64) -> (DVector<f64>, DMatrix<f64>),
    score_block: std::ops::Range<usize>,
    data_block: std::ops::Range<usize>,
    what: &str,
    from_prior: bool,
) {
    let n = 6000;
    let t_max = p.schedule().t_max();
    for (kind, steps, bias) in INTEGRATORS {
        // From the prior the schedules are stiffer (β up to 20): three times the steps keep the same bias budget.
        let cfg = SamplerConfig::new(kind, if from_prior { 3 * steps } else { steps });
        let mut rng = NoiseRng::new(11);
        let z_t = if from_prior {
            let xi = rng.randn(&p.state_shape(n), &DEV).unwrap();
            p.prior_from_noise(&xi).unwrap()
        } else {
            let (mt, ct) = mean_cov(t_max);
            from_rows(&gaussian_rows(&mut rng, n, &mt, &ct))
        };
        let run = sample_with_score(
            p,
            &cfg,
            z_t,
            |z, t, _| {
                let (m, c) = mean_cov(t);
                let ci = c.try_inverse().unwrap();
                let rows: Vec<DVector<f64>> = to_rows(z)
                    .iter()
                    .map(|r| {
                        let s = -(&ci * (DVector::from_column_slice(r) - &m));
                        DVector::from_iterator(
                            score_block.len(),
                            s.iter()
                                .skip(score_block.start)
                                .take(score_block.len())
                                .copied(),
                        )
                    })
                    .collect();
                Ok(from_rows(&rows))
            },
            &mut rng,
            false,
        )
        .unwrap();
        assert_eq!(run.nfe, cfg.nfe());
        let (m0, c0) = mean_cov(cfg.t_eps);
        let rows: Vec<Vec<f64>> = to_rows(&run.state)
            .into_iter()
            .map(|r| r[data_block.clone()].to_vec())
            .collect();
        let m0 = DVector::from_iterator(
            data_block.len(),
            m0.iter()
                .skip(data_block.start)
                .take(data_block.len())
                .copied(),
        );
        let c0 = c0
            .view(
                (data_block.start, data_block.start),
                (data_block.len(), data_block.len()),
            )
            .into_owned();
        assert_moments(&rows, &m0, &c0, bias, &format!("{what} {kind:?}"));
    }
}

fn data_law() -> (DVector<f64>, DMatrix<f64>) {
    (
        DVector::from_vec(vec![-8.0, 2.0]),
        DMatrix::from_row_slice(2, 2, &[1.0, 1.0, 1.0, 5.0]),
    )
}

/// The transition kernel of a two-element VSMD at integrated β `b`, in the state layout (x₁, x₂, v₁, v₂):
/// the matrix mapping x₀ to the mean (Φ_xx on positions, Φ_vx on velocities) and the covariance.
fn vsmd_kernel(p: &Vsmd, b: f64) -> (DMatrix<f64>, DMatrix<f64>) {
    let mut pm = DMatrix::zeros(4, 2);
    let mut cov = DMatrix::zeros(4, 4);
    for i in 0..2 {
        let k = momentum::kernel(&p.oscillator(i), b, p.params().v0_var);
        pm[(i, i)] = k.phi[(0, 0)];
        pm[(2 + i, i)] = k.phi[(1, 0)];
        for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
            cov[(2 * r + i, 2 * c + i)] = k.cov[(r, c)];
        }
    }
    (pm, cov)
}

#[test]
fn gaussian_data_is_recovered_by_vp_samplers() {
    let sched = BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap();
    let p = Vp::new(sched, &[2]).unwrap();
    let (m, s) = data_law();
    let f = |t: f64| {
        let b = sched.integral(t);
        let a = (-0.5 * b).exp();
        (
            &m * a,
            &s * (a * a) + DMatrix::identity(2, 2) * (1.0 - (-b).exp()),
        )
    };
    gaussian_roundtrip(&p, &f, 0..2, 0..2, "VP");
}

#[test]
fn gaussian_data_is_recovered_by_vsdm_full_a_samplers() {
    let sched = BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap();
    let a = DMatrix::from_row_slice(2, 2, &[0.3, -0.2, 0.1, 0.45]);
    let p = Vsdm::new(sched, &[2], LinearDrift::Full(a.clone()), &DEV).unwrap();
    let (m, s) = data_law();
    let dm = full::drift_matrix(&a);
    let f = |t: f64| {
        let k = full::kernel(&dm, sched.integral(t), t).unwrap();
        (&k.mean * &m, &k.mean * &s * k.mean.transpose() + &k.cov)
    };
    gaussian_roundtrip(&p, &f, 0..2, 0..2, "VSDM full A");
}

#[test]
fn gaussian_data_is_recovered_by_vsmd_samplers() {
    let sched = BetaSchedule::constant(6.0, 1.0).unwrap();
    let params = VsmdParams::default();
    let p = Vsmd::critical(sched, &[2], vec![0.15, -0.1], params, &DEV).unwrap();
    let (m, s) = data_law();
    // State (x1, x2, v1, v2): z_t = P x_0 + noise, P maps x_0 to positions (Φ_xx) and velocities (Φ_vx).
    let f = |t: f64| {
        let (pm, noise) = vsmd_kernel(&p, sched.integral(t));
        (&pm * &m, &pm * &s * pm.transpose() + noise)
    };
    gaussian_roundtrip(&p, &f, 2..4, 0..2, "VSMD");
}

/// Started from the prior N(0, Σ_T): data N((0.5, −0.3), [[1, 0.5], [0.5, 2]]) and schedules strong enough that
/// ‖M_T m‖ < 0.02, so the prior is the time-T marginal up to less than the tolerance.
#[test]
fn gaussian_data_is_recovered_from_the_prior() {
    let m = DVector::from_vec(vec![0.5, -0.3]);
    let s = DMatrix::from_row_slice(2, 2, &[1.0, 0.5, 0.5, 2.0]);
    let sched = BetaSchedule::power(0.1, 20.0, 1.7, 1.0).unwrap();
    let vp = Vp::new(sched, &[2]).unwrap();
    let f = |t: f64| {
        let b = sched.integral(t);
        let a = (-0.5 * b).exp();
        (
            &m * a,
            &s * (a * a) + DMatrix::identity(2, 2) * (1.0 - (-b).exp()),
        )
    };
    assert!(f(1.0).0.norm() < 0.02);
    roundtrip(&vp, &f, 0..2, 0..2, "VP from the prior", true);

    let a = DMatrix::from_row_slice(2, 2, &[-0.2, 0.1, 0.05, -0.15]);
    let vs = Vsdm::new(sched, &[2], LinearDrift::Full(a.clone()), &DEV).unwrap();
    let dm = full::drift_matrix(&a);
    let g = |t: f64| {
        let k = full::kernel(&dm, sched.integral(t), t).unwrap();
        (&k.mean * &m, &k.mean * &s * k.mean.transpose() + &k.cov)
    };
    assert!(g(1.0).0.norm() < 0.02);
    roundtrip(&vs, &g, 0..2, 0..2, "VSDM full A from the prior", true);

    let cs = BetaSchedule::constant(14.0, 1.0).unwrap();
    let params = VsmdParams::default();
    let vm = Vsmd::critical(cs, &[2], vec![0.1, -0.05], params, &DEV).unwrap();
    let h = |t: f64| {
        let (pm, noise) = vsmd_kernel(&vm, cs.integral(t));
        (&pm * &m, &pm * &s * pm.transpose() + noise)
    };
    assert!(h(1.0).0.norm() < 0.02, "{}", h(1.0).0.norm());
    roundtrip(&vm, &h, 2..4, 0..2, "VSMD from the prior", true);
}

#[test]
fn bad_inputs_are_named() {
    let sched = BetaSchedule::vsdm_default();
    let p = Vsdm::new(sched, &[2], LinearDrift::zeros_diagonal(2), &DEV).unwrap();
    let err = p.marginals(&[0.5, 1.5], &DEV).unwrap_err().to_string();
    assert!(err.contains("1.5"), "{err}");
    let err = p
        .drift(
            &Tensor::zeros((4, 3), candle_core::DType::F32, &DEV).unwrap(),
            0.5,
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("[4, 3]"), "{err}");
    let err = Vsdm::new(
        sched,
        &[2],
        LinearDrift::Diagonal(vec![0.0, f64::NAN]),
        &DEV,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.to_lowercase().contains("nan") || err.contains("non-finite"),
        "{err}"
    );
    let err = Vsdm::new(sched, &[3], LinearDrift::zeros_diagonal(2), &DEV)
        .unwrap_err()
        .to_string();
    assert!(err.contains('3') && err.contains('2'), "{err}");
    let err = SamplerConfig::new(SamplerKind::Heun, 0)
        .grid(1.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("steps"), "{err}");
}

/// The matrices of `perturb` at grid index `n`, read off by probing it with unit vectors (it is linear in the
/// data x₀ and the noise ε): z_t = M x₀ + L ε and target = P ε. Also checks that the target ignores x₀.
fn probe_perturb<Mg: Marginals>(
    marg: &Mg,
    n: usize,
    d: usize,
    k: usize,
) -> (DMatrix<f64>, DMatrix<f64>, DMatrix<f64>) {
    let b = d + k;
    let x0 = DMatrix::<f64>::identity(b, d);
    let eps = DMatrix::<f64>::from_fn(b, k, |i, j| if i == d + j { 1.0 } else { 0.0 });
    let idx = Tensor::new(vec![n as u32; b], &DEV).unwrap();
    let (z, target) = marg
        .perturb(&from_matrix(&x0), &idx, &from_matrix(&eps))
        .unwrap();
    let (z, target) = (to_matrix(&z), to_matrix(&target));
    let from_x0 = target.rows(0, d);
    assert!(
        from_x0.iter().all(|v| *v == 0.0),
        "the target depends on x0: {from_x0}"
    );
    (
        z.rows(0, d).transpose(),
        z.rows(d, k).transpose(),
        target.rows(d, k).transpose(),
    )
}

/// The noise-prediction path a trained network takes — `Marginals::perturb` makes the training pair,
/// `Marginals::score_at` turns the prediction into a score, `sample_with_eps` integrates — with the Bayes-optimal
/// prediction for Gaussian data N(m, S). Nothing here reads the processes' formulas: the matrices of
/// z_t = M x₀ + L ε and target = P ε come from probing `perturb`, and are checked against the transition kernel
/// (`reference(t)` = (mean matrix, covariance)); the optimal prediction is then the Gaussian regression
/// E[target | z] = P Lᵀ C⁻¹ (z − M m) with C = M S Mᵀ + L Lᵀ. Started from the exact time-T marginal, every
/// integrator must bring back the time-t_eps marginal of the data.
fn eps_roundtrip<P: ForwardProcess>(
    p: &P,
    reference: &dyn Fn(f64) -> (DMatrix<f64>, DMatrix<f64>),
    what: &str,
) {
    let (m, s) = data_law();
    let d = m.len();
    let k = d * p.state_factor();
    for (kind, steps, bias) in INTEGRATORS {
        let cfg = SamplerConfig::new(kind, steps);
        let times = cfg.grid(p.schedule().t_max()).unwrap();
        let marg = p.marginals(&times, &DEV).unwrap();
        // Per grid index: the regression (W, b) of the target on z, and the marginal (mean, covariance) of z.
        let fits: Vec<_> = times
            .iter()
            .enumerate()
            .map(|(n, &t)| {
                let (mm, ll, pp) = probe_perturb(&marg, n, d, k);
                let (mr, cr) = reference(t);
                let lcov = &ll * ll.transpose();
                let scale = cr.amax().max(1.0);
                assert!(
                    (&mm - &mr).amax() < 1e-5 && (&lcov - &cr).amax() < 1e-5 * scale,
                    "{what} {kind:?} t = {t}: perturb's M {mm} vs {mr}, L Lᵀ {lcov} vs {cr}"
                );
                let c = &mm * &s * mm.transpose() + &lcov;
                let w = &pp * ll.transpose() * c.clone().try_inverse().unwrap();
                let mean = &mm * &m;
                let b = -(&w * &mean);
                (w, b, mean, c)
            })
            .collect();
        let mut rng = NoiseRng::new(5);
        let (_, _, m_t, c_t) = &fits[0];
        let z_t = from_rows(&gaussian_rows(&mut rng, 6000, m_t, c_t));
        let run = sample_with_eps(
            p,
            &cfg,
            z_t,
            |z, t| {
                let n = times.iter().position(|&s| s == t).unwrap();
                let (w, b, _, _) = &fits[n];
                let rows: Vec<DVector<f64>> = to_rows(z)
                    .iter()
                    .map(|r| w * DVector::from_column_slice(r) + b)
                    .collect();
                Ok(from_rows(&rows))
            },
            &mut rng,
            false,
        )
        .unwrap();
        let (_, _, m0, c0) = fits.last().unwrap();
        let rows: Vec<Vec<f64>> = to_rows(&p.data_part(&run.state).unwrap());
        let m0 = m0.rows(0, d).into_owned();
        let c0 = c0.view((0, 0), (d, d)).into_owned();
        assert_moments(&rows, &m0, &c0, bias, &format!("{what} ε-path {kind:?}"));
    }
}

#[test]
fn noise_predictions_bring_gaussian_data_back() {
    let sched = BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap();
    let vp = Vp::new(sched, &[2]).unwrap();
    eps_roundtrip(
        &vp,
        &|t| {
            let b = sched.integral(t);
            (
                DMatrix::identity(2, 2) * (-0.5 * b).exp(),
                DMatrix::identity(2, 2) * (1.0 - (-b).exp()),
            )
        },
        "VP",
    );

    // The diagonal layout against the full-matrix kernel (checked against matrix exponentials) of diag(a).
    for (layout, a) in [
        (
            "diagonal",
            DMatrix::from_diagonal(&DVector::from_vec(vec![0.3, -0.25])),
        ),
        (
            "full",
            DMatrix::from_row_slice(2, 2, &[0.3, -0.2, 0.1, 0.45]),
        ),
    ] {
        let drift = if layout == "diagonal" {
            LinearDrift::Diagonal(a.diagonal().iter().copied().collect())
        } else {
            LinearDrift::Full(a.clone())
        };
        let p = Vsdm::new(sched, &[2], drift, &DEV).unwrap();
        let dm = full::drift_matrix(&a);
        eps_roundtrip(
            &p,
            &|t| {
                let k = full::kernel(&dm, sched.integral(t), t).unwrap();
                (k.mean, k.cov)
            },
            &format!("VSDM {layout} A"),
        );
    }

    for kappa in [1.0, 0.9] {
        let cs = BetaSchedule::constant(6.0, 1.0).unwrap();
        let params = VsmdParams {
            kappa: Some(kappa),
            ..VsmdParams::default()
        };
        let p = Vsmd::critical(cs, &[2], vec![0.15, -0.1], params, &DEV).unwrap();
        eps_roundtrip(
            &p,
            &|t| vsmd_kernel(&p, cs.integral(t)),
            &format!("VSMD κ = {kappa}"),
        );
    }
}

/// `prior_from_noise` draws from N(0, Σ_{T|0}): it is linear in the noise, so the unit vectors give its matrix
/// L and L Lᵀ must be the kernel covariance at T. Weak schedules, so that Σ_{T|0} is far from the identity.
#[test]
fn the_prior_is_the_kernel_at_t_max() {
    let check = |p: &dyn Fn(&Tensor) -> Tensor, k: usize, reference: DMatrix<f64>, what: &str| {
        let l = to_matrix(&p(&from_matrix(&DMatrix::identity(k, k)))).transpose();
        let cov = &l * l.transpose();
        assert!(
            (&cov - &reference).amax() < 1e-6,
            "{what}: L Lᵀ {cov} vs the kernel {reference}"
        );
    };
    let sched = BetaSchedule::power(0.1, 1.0, 1.0, 1.0).unwrap();
    let b = sched.integral(1.0);
    let vp = Vp::new(sched, &[2]).unwrap();
    check(
        &|xi| vp.prior_from_noise(xi).unwrap(),
        2,
        DMatrix::identity(2, 2) * (1.0 - (-b).exp()),
        "VP",
    );
    let a = DMatrix::from_row_slice(2, 2, &[0.3, -0.2, 0.1, 0.45]);
    let dm = full::drift_matrix(&a);
    let vs = Vsdm::new(sched, &[2], LinearDrift::Full(a.clone()), &DEV).unwrap();
    check(
        &|xi| vs.prior_from_noise(xi).unwrap(),
        2,
        full::kernel(&dm, b, 1.0).unwrap().cov,
        "VSDM full A",
    );
    let ad = DMatrix::from_diagonal(&DVector::from_vec(vec![0.3, -0.25]));
    let vd = Vsdm::new(sched, &[2], LinearDrift::Diagonal(vec![0.3, -0.25]), &DEV).unwrap();
    let diag_cov = full::kernel(&full::drift_matrix(&ad), b, 1.0).unwrap().cov;
    check(
        &|xi| vd.prior_from_noise(xi).unwrap(),
        2,
        diag_cov.clone(),
        "VSDM diagonal A",
    );
    // The diagonal variances as numbers (the toys' report prints them), from the closed form of the diagonal
    // layout against the full-matrix kernel.
    let LinearDrift::Diagonal(v) = vd.prior_covariance().unwrap() else {
        panic!("a diagonal A has prior variances")
    };
    for (i, vi) in v.iter().enumerate() {
        assert!((vi - diag_cov[(i, i)]).abs() < 1e-12, "{v:?} vs {diag_cov}");
    }
    let cs = BetaSchedule::constant(1.5, 1.0).unwrap();
    for kappa in [1.0, 0.9] {
        let params = VsmdParams {
            kappa: Some(kappa),
            ..VsmdParams::default()
        };
        let vm = Vsmd::critical(cs, &[2], vec![0.15, -0.1], params, &DEV).unwrap();
        check(
            &|xi| vm.prior_from_noise(xi).unwrap(),
            4,
            vsmd_kernel(&vm, cs.integral(1.0)).1,
            &format!("VSMD κ = {kappa}"),
        );
    }
}
