//! Public functions given inputs a caller could plausibly pass by mistake (found by an audit of the API):
//! each returns an error naming what is wrong instead of panicking on an index, a slice length or an overflow.

use candle_core::{Device, Tensor};
use nalgebra::DMatrix;
use vsdm_core::kernel::full;
use vsdm_core::sampler::{integrate, sample_with_score, SamplerConfig, SamplerKind};
use vsdm_core::trainer::ExportedConfig;
use vsdm_core::variational::{direct_loss, TrajectoryStats};
use vsdm_core::{
    BetaSchedule, ForwardProcess, LinearDrift, Marginals, NoiseRng, Process, VarParams, Vp, Vsdm,
    Vsmd, VsmdParams,
};

const DEV: Device = Device::Cpu;

fn err<T>(r: vsdm_core::Result<T>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn an_empty_data_shape_is_refused_by_every_process() {
    let s = BetaSchedule::vsdm_default();
    let e = err(Vp::new(s, &[]));
    assert!(e.contains("data shape"), "{e}");
    let e = err(Vsdm::new(s, &[], LinearDrift::Diagonal(vec![0.1]), &DEV));
    assert!(e.contains("data shape"), "{e}");
    let e = err(Vsmd::cld(s, &[], VsmdParams::default(), &DEV));
    assert!(e.contains("data shape"), "{e}");
    let e = err(Vp::new(s, &[3, 0]));
    assert!(e.contains("[3, 0]"), "{e}");
    let e = err(VarParams::None.process(s, &[], &DEV));
    assert!(e.contains("data shape"), "{e}");
}

#[test]
fn vp_marginals_name_a_scalar_batch_and_a_grid_index() {
    let vp = Vp::new(BetaSchedule::vsdm_default(), &[1]).unwrap();
    let m = vp.marginals(&[0.5, 1.0], &DEV).unwrap();
    let idx = Tensor::new(&[0u32, 1, 0, 1], &DEV).unwrap();
    let x0 = Tensor::zeros(4, candle_core::DType::F32, &DEV).unwrap();
    let e = err(m.perturb(&x0, &idx, &x0));
    assert!(e.contains("x0") && e.contains("[batch, 1]"), "{e}");
    let eps = Tensor::zeros((4, 1), candle_core::DType::F32, &DEV).unwrap();
    assert!(m.score_at(&eps, 1).is_ok());
    let e = err(m.score_at(&eps, 2));
    assert!(e.contains("grid index = 2") && e.contains("2 times"), "{e}");
}

#[test]
fn a_sampler_grid_of_the_wrong_length_is_named() {
    let vp = Vp::new(BetaSchedule::vsdm_default(), &[1]).unwrap();
    let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 10);
    let z = Tensor::zeros((2, 1), candle_core::DType::F32, &DEV).unwrap();
    let mut rng = NoiseRng::new(0);
    let e = err(integrate(
        &vp,
        &cfg,
        &[1.0, 0.5],
        z,
        |z, _, _| Ok(z.clone()),
        &mut rng,
        |_, _, _| Ok(()),
    ));
    assert!(e.contains("11 times") && e.contains("2 times"), "{e}");
    assert_eq!(SamplerConfig::new(SamplerKind::Heun, 0).nfe(), 0);
}

#[test]
fn index_ranges_that_do_not_fit_are_named() {
    let mut rng = NoiseRng::new(0);
    for upper in [0, 1usize << 32] {
        let e = err(rng.indices(3, upper, &DEV));
        assert!(e.contains("index range"), "{upper}: {e}");
    }
    let t = rng.indices(3, u32::MAX as usize, &DEV).unwrap();
    assert_eq!(t.dims(), [3]);
}

#[test]
fn a_full_a_of_the_wrong_size_is_named_in_memory_and_in_a_config_file() {
    let s = BetaSchedule::vsdm_default();
    let bad = VarParams::Full {
        d: 2,
        a: vec![0.0; 3],
    };
    let e = err(bad.validate());
    assert!(e.contains("d = 2 with 3 values"), "{e}");
    assert!(bad.process(s, &[2], &DEV).is_err());
    // A config.json whose `params` are a 3×3 A for a run configured with a 2×2 one (the same 4 values would
    // not do: 3 × 3 needs 9).
    let dir = tempfile::tempdir().unwrap();
    let cfg = vsdm_core::TrainConfig::new(
        s,
        &[2],
        VarParams::Full {
            d: 2,
            a: vec![0.0; 4],
        },
        true,
    );
    let exported = ExportedConfig {
        config: cfg,
        params: VarParams::Full {
            d: 3,
            a: vec![0.0; 4],
        },
        step: 1,
    };
    let path = dir.path().join("config.json");
    std::fs::write(&path, serde_json::to_string(&exported).unwrap()).unwrap();
    let e = err(ExportedConfig::read(&path));
    assert!(e.contains("config.json") && e.contains("`params`"), "{e}");
}

#[test]
fn recorded_runs_whose_parts_disagree_are_named() {
    let s = BetaSchedule::vsdm_default();
    let vp = Vp::new(s, &[1]).unwrap();
    let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 3);
    let z = Tensor::zeros((2, 1), candle_core::DType::F32, &DEV).unwrap();
    let mut rng = NoiseRng::new(0);
    let mut run = sample_with_score(&vp, &cfg, z, |z, _, _| Ok(z.neg()?), &mut rng, true).unwrap();
    assert!(TrajectoryStats::from_run(&run, &VarParams::None, &s, 1.0).is_ok());
    run.times.truncate(2);
    let e = err(TrajectoryStats::from_run(&run, &VarParams::None, &s, 1.0));
    assert!(e.contains("3 scores, 4 states, 2 times"), "{e}");
    let p = Process::Vp(vp);
    assert!(direct_loss(&p, &p, &run, 1.0).is_err());
}

#[test]
fn non_square_matrices_are_named_by_the_full_kernel() {
    let e = err(full::kernel(&DMatrix::identity(3, 2), 1.0, 0.5));
    assert!(e.contains("drift matrix") && e.contains("3×2"), "{e}");
    let e = err(full::chol_pair(&DMatrix::identity(2, 3), 0.5));
    assert!(e.contains("covariance") && e.contains("2×3"), "{e}");
}

#[test]
fn a_huge_cooldown_does_not_overflow_the_stage_schedule() {
    let mut c = vsdm_core::TrainConfig::new(
        BetaSchedule::vsdm_default(),
        &[2],
        VarParams::Diagonal(vec![0.0; 2]),
        true,
    );
    c.iters = 10;
    c.block = 1;
    c.cooldown = usize::MAX;
    assert!(!c.stage_after(2));
    c.cooldown = 0;
    assert!(c.stage_after(2));
}

#[test]
fn trajectory_statistics_refuse_states_of_another_process() {
    use vsdm_core::variational::StatsAccumulator;
    let c = VarParams::Momentum {
        c: vec![0.0; 2],
        params: VsmdParams::default(),
    };
    let mut acc = StatsAccumulator::new(&c, 2.0);
    let z = Tensor::zeros((4, 3), candle_core::DType::F32, &DEV).unwrap();
    let s = Tensor::zeros((4, 2), candle_core::DType::F32, &DEV).unwrap();
    let e = err(acc.add(&z, &s, 0.1, 1.0));
    assert!(
        e.contains("[batch, 4] and [batch, 2]") && e.contains("[4, 3]"),
        "{e}"
    );
    let z = Tensor::zeros((4, 4), candle_core::DType::F32, &DEV).unwrap();
    assert!(acc.add(&z, &s, 0.1, 1.0).is_ok());
}

/// Weights and checkpoints get the permissions of any new file (the umask's), not safetensors' owner-only
/// temporary file's, and read back as written.
#[cfg(unix)]
#[test]
fn safetensors_files_are_as_readable_as_any_new_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    let path = dir.path().join("w.safetensors");
    let t = Tensor::new(&[1.5f32, -2.0, 3.25], &Device::Cpu).unwrap();
    let tensors = std::collections::HashMap::from([("w".to_string(), t.clone())]);
    vsdm_core::trainer::write_safetensors(&tensors, &path).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&probe));
    let back = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back["w"].to_vec1::<f32>().unwrap(), [1.5, -2.0, 3.25]);
}

/// A process's own marginals' grid on `times`, and its g² at t = 0.3.
fn grid_and_g2<P: ForwardProcess>(p: &P, times: &[f64]) -> (Vec<f64>, f64) {
    let m = p.marginals(times, &DEV).unwrap();
    (m.times().to_vec(), p.diffusion_sq(0.3))
}

/// Marginals report the grid they were cached on (callers map a sampler time back to its index with it), for
/// each process and through the run-time [`Process`].
#[test]
fn marginals_report_their_grid() {
    let s = BetaSchedule::vsdm_default();
    let times = [1.0, 0.5, 0.25, 1e-3];
    let params = [
        VarParams::None,
        VarParams::Diagonal(vec![0.2, -0.1]),
        VarParams::Full {
            d: 2,
            a: vec![0.2, 0.1, 0.0, -0.1],
        },
        VarParams::Momentum {
            c: vec![0.1, 0.0],
            params: VsmdParams::default(),
        },
    ];
    for p in params {
        let process = p.process(s, &[2], &DEV).unwrap();
        let m = process.marginals(&times, &DEV).unwrap();
        assert_eq!(m.times(), times, "{p:?}");
        let (direct, g2) = match &process {
            Process::Vp(q) => grid_and_g2(q, &times),
            Process::Vsdm(q) => grid_and_g2(q, &times),
            Process::Vsmd(q) => grid_and_g2(q, &times),
        };
        assert_eq!(direct, times, "{p:?}");
        // The run-time wrapper answers as the process it holds.
        assert_eq!(process.diffusion_sq(0.3), g2, "{p:?}");
    }
}

/// VSMD's damping ratio and noise scale must be positive numbers (the critical transform divides by both), the
/// initial velocity's variance a number ≥ 0.
#[test]
fn bad_vsmd_parameters_are_named() {
    let s = BetaSchedule::constant(4.0, 1.0).unwrap();
    for kappa in [0.0, -0.5, f64::NAN, f64::INFINITY] {
        let params = VsmdParams {
            kappa: Some(kappa),
            ..VsmdParams::default()
        };
        let e = err(Vsmd::critical(s, &[2], vec![0.0, 0.0], params, &DEV));
        assert!(e.contains(&format!("kappa = {kappa}")), "{e}");
    }
    let params = VsmdParams {
        kappa: None,
        ..VsmdParams::default()
    };
    let e = err(Vsmd::critical(s, &[2], vec![0.0, 0.0], params, &DEV));
    assert!(e.contains("kappa"), "{e}");
    for gamma in [0.0, -2.0, f64::NAN, f64::INFINITY] {
        let params = VsmdParams {
            gamma,
            ..VsmdParams::default()
        };
        let e = err(Vsmd::cld(s, &[2], params, &DEV));
        assert!(e.contains(&format!("gamma = {gamma}")), "{e}");
    }
    for v0_var in [-0.1, f64::NAN, f64::INFINITY] {
        let params = VsmdParams {
            v0_var,
            ..VsmdParams::default()
        };
        let e = err(Vsmd::cld(s, &[2], params, &DEV));
        assert!(e.contains(&format!("v0_var = {v0_var}")), "{e}");
    }
    let params = VsmdParams {
        v0_var: 0.0,
        ..VsmdParams::default()
    };
    assert!(Vsmd::cld(s, &[2], params, &DEV).is_ok());
}

/// A batch of the right rank but the wrong element shape is named by the process (candle would otherwise
/// broadcast it or fail with its own message), and so is a final time outside (0, T).
#[test]
fn a_wrong_element_shape_and_a_bad_final_time_are_named() {
    let s = BetaSchedule::vsdm_default();
    let vs = Vsdm::new(s, &[2], LinearDrift::Diagonal(vec![0.1, -0.1]), &DEV).unwrap();
    let m = vs.marginals(&[0.5, 1.0], &DEV).unwrap();
    let idx = Tensor::new(&[0u32, 1, 0, 1], &DEV).unwrap();
    let good = Tensor::zeros((4, 2), candle_core::DType::F32, &DEV).unwrap();
    for bad in [(4, 3), (4, 1)] {
        let x = Tensor::zeros(bad, candle_core::DType::F32, &DEV).unwrap();
        let e = err(m.perturb(&x, &idx, &good));
        assert!(e.contains("x0") && e.contains("[batch, 2]"), "{e}");
        let e = err(m.perturb(&good, &idx, &x));
        assert!(e.contains("eps") && e.contains("[4, 2]"), "{e}");
    }
    let flat = Tensor::zeros(4, candle_core::DType::F32, &DEV).unwrap();
    let e = err(m.perturb(&flat, &idx, &flat));
    assert!(e.contains("x0") && e.contains("[4]"), "{e}");
    // VP's marginals hold no data shape: the noise must match the data.
    let vp = Vp::new(s, &[2])
        .unwrap()
        .marginals(&[0.5, 1.0], &DEV)
        .unwrap();
    let x = Tensor::zeros((4, 3), candle_core::DType::F32, &DEV).unwrap();
    let e = err(vp.perturb(&x, &idx, &good));
    assert!(e.contains("eps") && e.contains("[batch, 3]"), "{e}");
    // VSMD's states stack positions and velocities on the first data axis.
    let vm = Vsmd::cld(s, &[3], VsmdParams::default(), &DEV).unwrap();
    let x = Tensor::zeros((2, 3), candle_core::DType::F32, &DEV).unwrap();
    let e = err(vm.prior_from_noise(&x));
    assert!(e.contains("[batch, 6]"), "{e}");
    let img = Vp::new(s, &[3, 4, 4]).unwrap();
    let x = Tensor::zeros((2, 3, 4, 5), candle_core::DType::F32, &DEV).unwrap();
    let e = err(img.prior_from_noise(&x));
    assert!(
        e.contains("[batch, 3, 4, 4]") && e.contains("[2, 3, 4, 5]"),
        "{e}"
    );
    for t_eps in [0.0, -1e-3, 1.0, 1.5, f64::NAN] {
        let cfg = SamplerConfig {
            t_eps,
            ..SamplerConfig::new(SamplerKind::EulerMaruyama, 10)
        };
        let e = err(cfg.grid(1.0));
        assert!(e.contains(&format!("t_eps = {t_eps}")), "{e}");
    }
}

/// A's entries are listed row-major (the layout of `VarParams::Full`), and its trace is the sum of the diagonal.
#[test]
fn a_linear_drift_lists_its_entries_row_major() {
    let full = LinearDrift::Full(DMatrix::from_row_slice(2, 2, &[1.0, 2.0, 3.0, 4.0]));
    assert_eq!(full.values(), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(full.trace(), 5.0);
    let diag = LinearDrift::Diagonal(vec![1.0, -2.5]);
    assert_eq!(diag.values(), [1.0, -2.5]);
    assert_eq!(diag.trace(), -1.5);
}

/// Euler–Maruyama adds no noise on its last step (the state at t_eps is the mean of the last transition): with
/// one step the result does not depend on the noise generator; with two it does.
#[test]
fn euler_maruyama_adds_no_noise_on_its_last_step() {
    let vp = Vp::new(BetaSchedule::vsdm_default(), &[2]).unwrap();
    let z = Tensor::new(&[[0.5f32, -1.0], [2.0, 0.25]], &DEV).unwrap();
    let run = |steps: usize, seed: u64| {
        let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, steps);
        let mut rng = NoiseRng::new(seed);
        let out = sample_with_score(
            &vp,
            &cfg,
            z.clone(),
            |z, _, _| Ok(z.neg()?),
            &mut rng,
            false,
        );
        out.unwrap().state.to_vec2::<f32>().unwrap()
    };
    assert_eq!(run(1, 1), run(1, 2));
    assert_ne!(run(2, 1), run(2, 2));
}

/// The sampler names the programs accept (`--sampler`), in any case; anything else is named.
#[test]
fn sampler_names_parse() {
    for (names, kind) in [
        (
            &["em", "euler-maruyama", "SDE"][..],
            SamplerKind::EulerMaruyama,
        ),
        (&["euler", "ODE"][..], SamplerKind::Euler),
        (&["heun", "Heun"][..], SamplerKind::Heun),
    ] {
        for name in names {
            assert_eq!(name.parse::<SamplerKind>().unwrap(), kind, "{name}");
        }
    }
    let e = err("rk4".parse::<SamplerKind>());
    assert!(e.contains("sampler = rk4"), "{e}");
}

/// Every integrator asks for the score at (t, n) with n the grid index of t — Heun's second evaluation
/// included — as the noise-prediction path needs (it converts ε̂ with the closed form at index n).
#[test]
fn the_score_is_asked_at_the_grid_index_of_its_time() {
    let vp = Vp::new(BetaSchedule::vsdm_default(), &[2]).unwrap();
    let z = Tensor::new(&[[0.5f32, -1.0]], &DEV).unwrap();
    for kind in [
        SamplerKind::EulerMaruyama,
        SamplerKind::Euler,
        SamplerKind::Heun,
    ] {
        let cfg = SamplerConfig::new(kind, 7);
        let times = cfg.grid(1.0).unwrap();
        let mut asked = Vec::new();
        let mut rng = NoiseRng::new(0);
        let score = |z: &Tensor, t: f64, n: usize| {
            asked.push((t, n));
            Ok(z.neg()?)
        };
        sample_with_score(&vp, &cfg, z.clone(), score, &mut rng, false).unwrap();
        assert_eq!(asked.len(), cfg.nfe(), "{kind:?}");
        for (t, n) in asked {
            assert_eq!(times[n], t, "{kind:?}: index {n} asked at t = {t}");
        }
    }
}
