//! The alternating trainer with a tiny MLP: exact resume, divergence handling, bad checkpoints, learning.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use vsdm_core::trainer::{DataSource, InMemory, TrainConfig, Trainer};
use vsdm_core::variational::VarParams;
use vsdm_core::{BetaSchedule, NoiseRng, SamplerConfig, SamplerKind, ScoreModel, VsmdParams};

const DEV: Device = Device::Cpu;

struct Mlp {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl Mlp {
    fn build(state_dim: usize, out: usize) -> impl Fn(VarBuilder) -> candle_core::Result<Mlp> {
        move |vb| {
            Ok(Mlp {
                l1: linear(state_dim + 8, 64, vb.pp("l1"))?,
                l2: linear(64, 64, vb.pp("l2"))?,
                l3: linear(64, out, vb.pp("l3"))?,
            })
        }
    }
}

impl ScoreModel for Mlp {
    fn forward(&self, x: &Tensor, t: &Tensor, _c: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let freqs = Tensor::new(&[1f32, 2.0, 4.0, 8.0], x.device())?;
        let arg = t.unsqueeze(1)?.broadcast_mul(&freqs.unsqueeze(0)?)?;
        let h = Tensor::cat(&[x, &arg.sin()?, &arg.cos()?], 1)?;
        let h = self.l1.forward(&h)?.silu()?;
        let h = self.l2.forward(&h)?.silu()?;
        self.l3.forward(&h)
    }
}

fn gaussian_data(n: usize, seed: u64) -> Tensor {
    let mut rng = NoiseRng::new(seed);
    let e = rng.randn(&[n, 2], &DEV).unwrap();
    // N((−2, 1), [[1, 1], [1, 5]]) via its Cholesky factor [[1, 0], [1, 2]].
    let l = Tensor::new(&[[1f32, 1.0], [0.0, 2.0]], &DEV).unwrap();
    e.matmul(&l)
        .unwrap()
        .broadcast_add(&Tensor::new(&[-2f32, 1.0], &DEV).unwrap())
        .unwrap()
}

fn config(init: VarParams, iters: usize) -> TrainConfig {
    let mut c = TrainConfig::new(
        BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap(),
        &[2],
        init,
        true,
    );
    c.iters = iters;
    c.batch_size = 64;
    c.warmup = 4;
    c.block = 6;
    c.cooldown = 3;
    c.grad_clip = Some(1.0);
    c.variational.n_trajectories = 48;
    c.variational.batch = 16;
    c.variational.steps = 10;
    c.variational.iters = 4;
    c.variational.adam.lr = 1e-2;
    c.seed = 17;
    c
}

fn state_dim(init: &VarParams) -> usize {
    if matches!(init, VarParams::Momentum { .. }) {
        4
    } else {
        2
    }
}

fn snapshot(tr: &Trainer<Mlp>) -> Vec<Vec<f32>> {
    let mut names: Vec<String> = tr.varmap().data().lock().unwrap().keys().cloned().collect();
    names.sort();
    let data = tr.varmap().data().lock().unwrap();
    let mut out: Vec<Vec<f32>> = names
        .iter()
        .map(|n| {
            data[n]
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect();
    out.push(tr.params().values().iter().map(|&x| x as f32).collect());
    out.push(tr.params_ema().values().iter().map(|&x| x as f32).collect());
    out
}

fn exact_resume(init: VarParams) {
    let dim = state_dim(&init);
    let total = 22;
    let mut data = InMemory::new(gaussian_data(512, 1)).unwrap();
    let mut straight = Trainer::new(config(init.clone(), total), &DEV, Mlp::build(dim, 2)).unwrap();
    straight.run(&mut data, None, 0, 0).unwrap();
    assert_ne!(
        straight.params().values(),
        init.values(),
        "the variational stages did not move the parameters"
    );

    let dir = tempfile::tempdir().unwrap();
    let mut data = InMemory::new(gaussian_data(512, 1)).unwrap();
    let mut first = Trainer::new(config(init.clone(), total), &DEV, Mlp::build(dim, 2)).unwrap();
    // Step 10 ends with a variational stage; stop one step after it.
    let split = 11;
    for _ in 0..split {
        first.step(&mut data).unwrap();
    }
    first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(dir.path(), &DEV, Mlp::build(dim, 2)).unwrap();
    assert_eq!(resumed.step_count(), split);
    resumed.run(&mut data, None, 0, 0).unwrap();
    let (a, b) = (snapshot(&straight), snapshot(&resumed));
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        let worst = x
            .iter()
            .zip(y)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            x == y,
            "tensor {i} of the resumed run differs (max |Δ| = {worst}): not bit for bit"
        );
    }
}

/// A run checkpointed before its cool-down, resumed and extended with `set_iters` is bit for bit the run that
/// was planned with the longer budget from the start; shortening below the updates done is refused.
#[test]
fn extending_a_resumed_run_equals_planning_it_longer() {
    let init = VarParams::Diagonal(vec![0.0; 2]);
    let (planned, longer) = (22, 34);
    let mut data = InMemory::new(gaussian_data(512, 1)).unwrap();
    let mut straight = Trainer::new(config(init.clone(), longer), &DEV, Mlp::build(2, 2)).unwrap();
    straight.run(&mut data, None, 0, 0).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut data = InMemory::new(gaussian_data(512, 1)).unwrap();
    let mut first = Trainer::new(config(init, planned), &DEV, Mlp::build(2, 2)).unwrap();
    for _ in 0..11 {
        first.step(&mut data).unwrap();
    }
    first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let mut resumed = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2)).unwrap();
    assert!(resumed.set_iters(10).is_err());
    resumed.set_iters(longer).unwrap();
    resumed.run(&mut data, None, 0, 0).unwrap();
    assert_eq!(resumed.step_count(), longer);
    assert!(
        snapshot(&straight) == snapshot(&resumed),
        "the extended run differs from the one planned with {longer} updates"
    );
}

#[test]
fn resume_is_exact_for_full_a() {
    exact_resume(VarParams::Full {
        d: 2,
        a: vec![0.0; 4],
    });
}

#[test]
fn resume_is_exact_for_vsmd() {
    exact_resume(VarParams::Momentum {
        c: vec![0.0; 2],
        params: VsmdParams::default(),
    });
}

struct Poisoned {
    inner: InMemory,
    after: usize,
    calls: usize,
}

impl DataSource for Poisoned {
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> vsdm_core::Result<(Tensor, Option<Tensor>)> {
        self.calls += 1;
        let (x, c) = self.inner.next_batch(batch, rng, device)?;
        if self.calls > self.after {
            Ok(((x * f64::NAN)?, c))
        } else {
            Ok((x, c))
        }
    }
}

#[test]
fn divergence_stops_with_an_error_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(VarParams::Diagonal(vec![0.0; 2]), 40);
    cfg.adaptive = false;
    let mut tr = Trainer::new(cfg, &DEV, Mlp::build(2, 2)).unwrap();
    let mut data = Poisoned {
        inner: InMemory::new(gaussian_data(256, 2)).unwrap(),
        after: 12,
        calls: 0,
    };
    let err = tr
        .run(&mut data, Some(dir.path()), 5, 0)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("diverged at step 13") && err.contains("lower learning rate"),
        "{err}"
    );
    let back = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2)).unwrap();
    assert_eq!(back.step_count(), 10);
    // The folder's newest checkpoint is the step-10 one, an existing folder.
    let latest = vsdm_core::trainer::latest_checkpoint(dir.path())
        .unwrap()
        .unwrap();
    assert!(
        dir.path().join(&latest).join("state.json").is_file(),
        "{latest}"
    );
    let empty = tempfile::tempdir().unwrap();
    assert!(vsdm_core::trainer::latest_checkpoint(empty.path())
        .unwrap()
        .is_none());
    // A damaged pointer: an error naming it, for the query and for resuming, and a new checkpoint written into
    // the folder keeps every older one (which of them the pointer meant is unknown).
    std::fs::write(dir.path().join("latest"), "  \n").unwrap();
    let err = vsdm_core::trainer::latest_checkpoint(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latest") && err.contains("names no checkpoint"),
        "{err}"
    );
    let err = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("names no checkpoint"), "{err}");
    let count = || {
        std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
            .count()
    };
    let before = count();
    assert!(before >= 2, "{before} checkpoints");
    let fresh = Trainer::new(config(VarParams::None, 5), &DEV, Mlp::build(2, 2)).unwrap();
    fresh.save_checkpoint(dir.path()).unwrap();
    assert_eq!(count(), before + 1);
}

#[test]
fn bad_checkpoints_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("latest"), "{err}");
    let tr = Trainer::new(config(VarParams::None, 5), &DEV, Mlp::build(2, 2)).unwrap();
    let ck = tr.save_checkpoint(dir.path()).unwrap();
    std::fs::write(ck.join("state.safetensors"), b"not a safetensors file").unwrap();
    let err = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("state.safetensors"), "{err}");
    // A network of another size than the checkpoint's.
    let tr = Trainer::new(config(VarParams::None, 5), &DEV, Mlp::build(2, 2)).unwrap();
    tr.save_checkpoint(dir.path()).unwrap();
    let err = Trainer::resume(dir.path(), &DEV, Mlp::build(3, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("model.l1.weight") && err.contains("shape"),
        "{err}"
    );
    // A bad configuration value.
    let mut c = config(VarParams::None, 5);
    c.grid = 0;
    let err = Trainer::new(c, &DEV, Mlp::build(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("grid"), "{err}");
}

/// Weights an update overflowed (a finite loss and gradient, a rate far too large) are refused before a
/// checkpoint or an export is written, naming the tensor, and the checkpoint before stays the folder's newest;
/// a checkpoint holding such weights (written by other means) is refused on resume, naming the tensor; and a
/// learning rate above 1 is refused before anything runs.
#[test]
fn non_finite_weights_are_never_saved_or_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let mut tr = Trainer::new(
        config(VarParams::Diagonal(vec![0.0; 2]), 5),
        &DEV,
        Mlp::build(2, 2),
    )
    .unwrap();
    let mut data = InMemory::new(gaussian_data(256, 2)).unwrap();
    tr.run(&mut data, Some(dir.path()), 5, 0).unwrap();
    let before = vsdm_core::trainer::latest_checkpoint(dir.path()).unwrap();
    let var = tr.varmap().data().lock().unwrap()["l2.weight"].clone();
    var.set(&(var.as_tensor() * f64::INFINITY).unwrap())
        .unwrap();
    let err = tr.save_checkpoint(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("diverged")
            && err.contains("model.l2.weight")
            && err.contains("lower learning rate"),
        "{err}"
    );
    assert_eq!(
        vsdm_core::trainer::latest_checkpoint(dir.path()).unwrap(),
        before
    );
    let out = tempfile::tempdir().unwrap();
    let err = tr.export(out.path()).unwrap_err().to_string();
    assert!(err.contains("model.l2.weight"), "{err}");
    assert!(!out.path().join("model.safetensors").exists());
    // The same weights in a checkpoint file.
    let ck = dir.path().join(before.unwrap()).join("state.safetensors");
    let mut tensors = candle_core::safetensors::load(&ck, &DEV).unwrap();
    let t = tensors["ema.l1.bias"].clone();
    tensors.insert("ema.l1.bias".into(), (t * f64::NAN).unwrap());
    candle_core::safetensors::save(&tensors, &ck).unwrap();
    let err = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2))
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("state.safetensors") && err.contains("ema.l1.bias") && err.contains("NaN"),
        "{err}"
    );
    for (lr, a_lr) in [(1e30, 1e-2), (1e-3, 2.0)] {
        let mut c = config(VarParams::Diagonal(vec![0.0; 2]), 5);
        c.adam.lr = lr;
        c.variational.adam.lr = a_lr;
        let err = Trainer::new(c, &DEV, Mlp::build(2, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("lr") && err.contains("(0, 1]"), "{err}");
    }
}

/// Training on Gaussian data lowers the denoising loss and the samples approach the data law.
#[test]
fn training_learns_a_gaussian() {
    let mut cfg = config(VarParams::Diagonal(vec![0.0; 2]), 1500);
    cfg.batch_size = 256;
    cfg.block = 500;
    cfg.adam.lr = 3e-3;
    cfg.ema_decay = 0.98;
    let mut data = InMemory::new(gaussian_data(4096, 3)).unwrap();
    let mut tr = Trainer::new(cfg, &DEV, Mlp::build(2, 2)).unwrap();
    let reports = tr.run(&mut data, None, 0, 0).unwrap();
    let head: f64 = reports[..50].iter().map(|r| r.loss).sum::<f64>() / 50.0;
    let tail: f64 = reports[reports.len() - 200..]
        .iter()
        .map(|r| r.loss)
        .sum::<f64>()
        / 200.0;
    assert!(tail < 0.8 * head, "loss {head} -> {tail}");
    let x = tr
        .sample(
            None,
            4000,
            &SamplerConfig::new(SamplerKind::EulerMaruyama, 100),
        )
        .unwrap();
    let m = x.mean(0).unwrap().to_vec1::<f32>().unwrap();
    let c = x.broadcast_sub(&x.mean_keepdim(0).unwrap()).unwrap();
    let cov = c
        .t()
        .unwrap()
        .matmul(&c)
        .unwrap()
        .affine(1.0 / 3999.0, 0.0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    // Loose: a 64-unit MLP after 1500 updates. Mean within 0.3, variances within 30%.
    assert!(
        (m[0] + 2.0).abs() < 0.3 && (m[1] - 1.0).abs() < 0.3,
        "mean {m:?}"
    );
    assert!(
        (cov[0][0] - 1.0).abs() < 0.3 && (cov[1][1] - 5.0).abs() < 1.5,
        "cov {cov:?}"
    );
    let _ = DType::F32;
}

#[test]
fn two_fresh_runs_are_identical() {
    let init = VarParams::Full {
        d: 2,
        a: vec![0.0; 4],
    };
    let go = || {
        let mut data = InMemory::new(gaussian_data(512, 1)).unwrap();
        let mut t = Trainer::new(config(init.clone(), 3), &DEV, Mlp::build(2, 2)).unwrap();
        let s0 = snapshot(&t);
        t.run(&mut data, None, 0, 0).unwrap();
        (s0, snapshot(&t))
    };
    let (a0, a) = go();
    let (b0, b) = go();
    assert!(a0 == b0, "initialisation differs");
    assert!(a == b, "training differs");
}

/// Squared distance between two sets of named weights.
fn dist2(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f64 {
    a.iter()
        .zip(b)
        .map(|((na, x), (nb, y))| {
            assert_eq!(na, nb);
            (x - y)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        })
        .sum()
}

#[test]
fn ema_warmup_follows_the_trained_weights_in_a_short_run() {
    // 30 updates with decay 0.999: a plain EMA keeps 0.999^30 = 97% of the initial weights, so it stays near
    // them; with the warm-up the EMA must end nearer the trained weights than the initial ones.
    let data = gaussian_data(512, 3);
    let mut ends = Vec::new();
    for warm in [false, true] {
        let mut c = config(VarParams::None, 30);
        c.adaptive = false;
        c.ema_decay = 0.999;
        c.ema_warmup = warm;
        let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
        // Deep copies: the EMA variables are updated in place.
        let init: Vec<(String, Tensor)> = tr
            .ema_weights()
            .into_iter()
            .map(|(k, t)| (k, t.copy().unwrap()))
            .collect();
        let mut src = InMemory::new(data.clone()).unwrap();
        for _ in 0..30 {
            tr.step(&mut src).unwrap();
        }
        let trained = tr.weights();
        let ema = tr.ema_weights();
        ends.push((dist2(&ema, &init), dist2(&ema, &trained)));
    }
    let (plain, warm) = (ends[0], ends[1]);
    assert!(
        plain.0 < plain.1,
        "plain EMA should stay near the initial weights: {plain:?}"
    );
    assert!(
        warm.1 < warm.0,
        "warm-up EMA should follow the trained weights: {warm:?}"
    );
}

/// The EMA network records no graph (its output is untracked) and reads its variables' current values: after
/// updates (the EMA's in-place steps) and after a resume (restored in place), its output equals that of a
/// network built on copies of `ema_weights()`, bit for bit, and differs from the initial EMA network's.
#[test]
fn ema_network_is_untracked_and_follows_its_variables() {
    let data = gaussian_data(256, 5);
    let x = NoiseRng::new(9).randn(&[8, 2], &DEV).unwrap();
    let t = Tensor::full(0.5f32, 8, &DEV).unwrap();
    let on_copies = |tr: &Trainer<Mlp>| {
        let copies = tr
            .ema_weights()
            .into_iter()
            .map(|(k, v)| (k, v.copy().unwrap()))
            .collect();
        let net = Mlp::build(2, 2)(VarBuilder::from_tensors(copies, DType::F32, &DEV)).unwrap();
        net.forward(&x, &t, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let ema_out = |tr: &Trainer<Mlp>| {
        let y = tr.ema_model().forward(&x, &t, None).unwrap();
        assert!(!y.track_op(), "the EMA network recorded a graph");
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    let mut c = config(VarParams::None, 12);
    c.ema_decay = 0.5;
    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    let before = ema_out(&tr);
    let mut src = InMemory::new(data).unwrap();
    for _ in 0..6 {
        tr.step(&mut src).unwrap();
    }
    let after = ema_out(&tr);
    assert_ne!(
        after, before,
        "the EMA network did not change with its variables"
    );
    assert_eq!(after, on_copies(&tr), "after updates");
    let dir = tempfile::tempdir().unwrap();
    tr.save_checkpoint(dir.path()).unwrap();
    let resumed = Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2)).unwrap();
    assert_eq!(ema_out(&resumed), after, "after a resume");
    assert_eq!(on_copies(&resumed), after, "the resumed EMA variables");
}

/// The variational stage's settings are checked with the rest: no SA iterations, a learning rate of A that is
/// not positive, or ζ outside [0, 2] (or NaN) are refused by `Trainer::new`, naming the field.
#[test]
fn bad_variational_settings_are_named() {
    type Spoil = fn(&mut TrainConfig);
    let cases: [(Spoil, &str); 5] = [
        (|c| c.variational.iters = 0, "variational.iters"),
        (|c| c.variational.adam.lr = 0.0, "variational.adam.lr"),
        (|c| c.variational.adam.lr = f64::NAN, "variational.adam.lr"),
        (|c| c.variational.zeta = 2.5, "variational.zeta"),
        (|c| c.variational.zeta = f64::NAN, "variational.zeta"),
    ];
    for (spoil, field) in cases {
        let mut c = config(VarParams::Diagonal(vec![0.0; 2]), 4);
        spoil(&mut c);
        let e = Trainer::new(c, &DEV, Mlp::build(2, 2))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
}

/// Copies of a trainer's weights (sorted by name) as flat f64 vectors: the variables are updated in place.
fn flat(w: &[(String, Tensor)]) -> Vec<Vec<f64>> {
    w.iter()
        .map(|(_, t)| {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        })
        .collect()
}

/// With the EMA warm-up, update n (0-based) uses the decay min(d, (1 + n)/(10 + n)) (score_sde's and the VSDM
/// image code's): the first two updates average with weights 1/10 and 2/11, whatever the configured decay.
#[test]
fn the_ema_warm_up_decays_by_one_tenth_then_two_elevenths() {
    let mut c = config(VarParams::None, 5);
    c.adaptive = false;
    c.ema_decay = 0.9999;
    c.ema_warmup = true;
    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    let mut src = InMemory::new(gaussian_data(256, 4)).unwrap();
    let mut ema = flat(&tr.ema_weights());
    for d in [1.0 / 10.0, 2.0 / 11.0, 3.0 / 12.0] {
        tr.step(&mut src).unwrap();
        let (w, e) = (flat(&tr.weights()), flat(&tr.ema_weights()));
        for ((w, e), before) in w.iter().zip(&e).zip(&ema) {
            for ((w, e), b) in w.iter().zip(e).zip(before) {
                let want = d * b + (1.0 - d) * w;
                assert!(
                    (e - want).abs() <= 1e-6 * (1.0 + want.abs()),
                    "decay {d}: {e} vs {want}"
                );
            }
        }
        ema = e;
    }
}

/// Gradient clipping scales the gradient to norm c when its norm exceeds c, and leaves it alone otherwise. With
/// Adam's ε far above √v, Adam's first update is −lr·g·s/ε (s the clipping factor), so the norm of the weights'
/// change shows the norm of the gradient the optimiser was given: lr·min(‖g‖, c)/ε.
#[test]
fn gradient_clipping_bounds_the_norm_the_optimiser_sees() {
    let first_update = |clip: Option<f64>| {
        let mut c = config(VarParams::None, 1);
        c.adaptive = false;
        c.grad_clip = clip;
        c.adam.lr = 1.0;
        c.adam.eps = 1e4;
        c.adam.weight_decay = 0.0;
        let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
        let before = flat(&tr.weights());
        let mut src = InMemory::new(gaussian_data(256, 5)).unwrap();
        let report = tr.step(&mut src).unwrap();
        let after = flat(&tr.weights());
        let moved = before
            .iter()
            .flatten()
            .zip(after.iter().flatten())
            .map(|(b, a)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        (report.grad_norm, moved * 1e4)
    };
    let (g, free) = first_update(None);
    assert!(
        g > 0.0 && (free - g).abs() <= 0.02 * g,
        "{free} vs ‖g‖ = {g}"
    );
    for factor in [0.25, 0.9, 4.0] {
        let c = factor * g;
        let (g2, seen) = first_update(Some(c));
        assert_eq!(g2, g, "the report gives the norm before clipping");
        let want = g.min(c);
        assert!(
            (seen - want).abs() <= 0.02 * want,
            "clip {c}: the optimiser saw a gradient of norm {seen}, expected {want}"
        );
    }
}

/// Stages follow update warmup + k·block (k ≥ 1) as long as the cool-down still fits after them, and only for
/// an adaptive run with parameters to learn.
#[test]
fn stages_follow_every_block_after_the_warm_up_until_the_cool_down() {
    let stages = |c: &TrainConfig| (1..=30).filter(|&s| c.stage_after(s)).collect::<Vec<_>>();
    let mut c = config(VarParams::Diagonal(vec![0.0; 2]), 30);
    (c.warmup, c.block, c.cooldown) = (4, 6, 3);
    assert_eq!(stages(&c), [10, 16, 22]);
    c.cooldown = 2;
    assert_eq!(stages(&c), [10, 16, 22, 28]);
    (c.warmup, c.block, c.cooldown) = (0, 7, 0);
    assert_eq!(stages(&c), [7, 14, 21, 28]);
    c.adaptive = false;
    assert!(stages(&c).is_empty());
    let mut vp = config(VarParams::None, 30);
    (vp.warmup, vp.block, vp.cooldown) = (0, 7, 0);
    assert!(stages(&vp).is_empty());
}

/// The settings `TrainConfig::validate` checks besides the variational ones, each named, with the values at
/// the edges of what is allowed accepted.
#[test]
fn bad_training_settings_are_named_and_edge_values_pass() {
    type Spoil = fn(&mut TrainConfig);
    let cases: [(Spoil, &str); 11] = [
        (|c| c.t_eps = 0.0, "t_eps"),
        (|c| c.t_eps = -1e-3, "t_eps"),
        (|c| c.t_eps = 1.0, "t_eps"),
        (|c| c.t_eps = 1.5, "t_eps"),
        (|c| c.grad_clip = Some(0.0), "grad_clip"),
        (|c| c.grad_clip = Some(-1.0), "grad_clip"),
        (|c| c.grad_clip = Some(f64::NAN), "grad_clip"),
        (|c| c.data_shape = vec![], "data_shape"),
        (|c| c.data_shape = vec![2, 0], "data_shape"),
        // A full 3 × 3 A needs 9 values (6 = 3 + 3 would pass a sum).
        (
            |c| {
                c.data_shape = vec![3];
                c.init = VarParams::Full {
                    d: 3,
                    a: vec![0.0; 6],
                };
            },
            "expected 9",
        ),
        (|c| c.init = VarParams::Diagonal(vec![0.0; 3]), "expected 2"),
    ];
    for (spoil, field) in cases {
        let mut c = config(VarParams::Diagonal(vec![0.0; 2]), 4);
        spoil(&mut c);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
    }
    type Edge = fn(&mut TrainConfig);
    let edges: [Edge; 4] = [
        |c| c.t_eps = 1e-9,
        |c| c.t_eps = 1.0 - 1e-9,
        |c| c.grad_clip = Some(1e-12),
        |c| {
            c.data_shape = vec![3];
            c.init = VarParams::Full {
                d: 3,
                a: vec![0.0; 9],
            };
        },
    ];
    for edge in edges {
        let mut c = config(VarParams::Diagonal(vec![0.0; 2]), 4);
        edge(&mut c);
        c.validate().unwrap();
    }
}

/// A score model whose loss is finite but whose gradient is not (√u at u = 0).
struct InfiniteGradient(Mlp);

impl ScoreModel for InfiniteGradient {
    fn forward(&self, x: &Tensor, t: &Tensor, c: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let y = self.0.forward(x, t, c)?;
        y.clone() + (y.clone() - y)?.sqrt()?
    }
}

/// A gradient that is not finite stops training at that update, named with its 1-based number; the time spent in
/// updates is counted (positive, at most the wall-clock time); `set_iters` accepts the updates already done.
#[test]
fn a_non_finite_gradient_is_named_with_its_update() {
    let mut c = config(VarParams::None, 10);
    c.adaptive = false;
    let build = Mlp::build(2, 2);
    let mut tr = Trainer::new(c.clone(), &DEV, move |vb| Ok(InfiniteGradient(build(vb)?))).unwrap();
    let mut src = InMemory::new(gaussian_data(64, 6)).unwrap();
    let e = tr.step(&mut src).unwrap_err().to_string();
    assert!(
        e.contains("at step 1:") && e.contains("gradient norm"),
        "{e}"
    );

    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    let start = std::time::Instant::now();
    for _ in 0..3 {
        tr.step(&mut src).unwrap();
    }
    let wall = start.elapsed().as_secs_f64();
    let spent = tr.training_seconds();
    assert!(spent > 0.0 && spent <= wall, "{spent} s of {wall} s");
    tr.set_iters(3).unwrap();
    assert!(tr.set_iters(2).is_err());
}

/// A data source that records the batch sizes asked of it.
struct Counting {
    inner: InMemory,
    asked: Vec<usize>,
}

impl DataSource for Counting {
    fn next_batch(
        &mut self,
        batch: usize,
        rng: &mut NoiseRng,
        device: &Device,
    ) -> vsdm_core::Result<(Tensor, Option<Tensor>)> {
        self.asked.push(batch);
        self.inner.next_batch(batch, rng, device)
    }
}

/// A stage simulates exactly `n_trajectories` trajectories, in chunks of at most 256; it draws data only to
/// start the reference trajectories of the paired estimator (one batch per chunk, of the chunk's size), never
/// for an unconditional model without it. The paired statistics are not the plain ones; a stage reports two
/// objectives.
#[test]
fn a_stage_simulates_its_trajectories_in_chunks_and_draws_data_only_for_the_reference() {
    let mut grads = Vec::new();
    for debias in [false, true] {
        let mut c = config(VarParams::Diagonal(vec![0.1, -0.2]), 10);
        c.variational.n_trajectories = 300;
        c.variational.debias = debias;
        let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
        let mut src = Counting {
            inner: InMemory::new(gaussian_data(512, 7)).unwrap(),
            asked: Vec::new(),
        };
        let stats = tr.simulate_stats(&mut src).unwrap();
        assert_eq!(stats.len(), 300, "debias {debias}");
        let want: &[usize] = if debias { &[256, 44] } else { &[] };
        assert_eq!(src.asked, want, "debias {debias}: data batches drawn");
        let all: Vec<usize> = (0..300).collect();
        grads.push(stats.loss_and_grad(tr.params(), 1.0, &all).1);
        // A stage reports the objective on its first and its last mini-batch (4 SA iterations apart).
        let (first, last) = tr.variational_stage(&mut src).unwrap();
        assert!(
            first.is_finite() && last.is_finite() && first != last,
            "{first} {last}"
        );
    }
    assert_ne!(
        grads[0], grads[1],
        "the paired statistics equal the plain ones"
    );
}

/// VSMD's statistics weigh each step by γβ dt (its forward policy is √(γβ)(a x + c v)): the divergence term,
/// the gradient's part proportional to ζ, is γ Σ_n β(t_n)(t_n − t_{n+1}) over the stage's Euler–Maruyama grid.
#[test]
fn vsmd_statistics_weigh_steps_by_gamma_beta() {
    let gamma = 2.5;
    let k = VarParams::Momentum {
        c: vec![0.05, -0.1],
        params: VsmdParams {
            gamma,
            kappa: Some(1.0),
            ..VsmdParams::default()
        },
    };
    let c = config(k.clone(), 10);
    let times = SamplerConfig {
        kind: SamplerKind::EulerMaruyama,
        steps: c.variational.steps,
        t_eps: c.t_eps,
    }
    .grid(1.0)
    .unwrap();
    let sched = c.schedule;
    let want: f64 = gamma
        * times
            .windows(2)
            .map(|w| sched.beta(w[0]) * (w[0] - w[1]))
            .sum::<f64>();
    let mut tr = Trainer::new(c, &DEV, Mlp::build(4, 2)).unwrap();
    let mut src = InMemory::new(gaussian_data(64, 8)).unwrap();
    let stats = tr.simulate_stats(&mut src).unwrap();
    let all: Vec<usize> = (0..stats.len()).collect();
    let (g1, g0) = (
        stats.loss_and_grad(&k, 1.0, &all).1,
        stats.loss_and_grad(&k, 0.0, &all).1,
    );
    for (a, b) in g1.iter().zip(&g0) {
        assert!(((a - b) - want).abs() < 1e-9 * want, "{} vs {want}", a - b);
    }
}

/// After each SA iteration the parameters' EMA moves by 1 − d towards the new parameters: with one iteration a
/// stage, the EMA after it is d · (its value before) + (1 − d) · (the parameters after).
#[test]
fn the_parameters_ema_follows_each_sa_iteration() {
    let mut c = config(VarParams::Diagonal(vec![0.3, -0.2]), 10);
    c.variational.iters = 1;
    c.variational.ema_decay = 0.9;
    c.variational.adam.lr = 0.1;
    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    let mut src = InMemory::new(gaussian_data(256, 9)).unwrap();
    for _ in 0..2 {
        let before = tr.params_ema().values().to_vec();
        tr.variational_stage(&mut src).unwrap();
        let (now, ema) = (tr.params().values(), tr.params_ema().values());
        assert!(now.iter().zip(&before).all(|(a, b)| a != b), "no SA step");
        for ((e, b), p) in ema.iter().zip(&before).zip(now) {
            let want = 0.9 * b + 0.1 * p;
            assert!((e - want).abs() < 1e-12, "{e} vs {want}");
        }
        // The forward process the next updates train on is the EMA parameters'.
        match tr.process() {
            vsdm_core::Process::Vsdm(p) => {
                assert_eq!(p.a(), &vsdm_core::LinearDrift::Diagonal(ema.to_vec()))
            }
            other => panic!("{other:?}"),
        }
    }
}

/// A raised stop flag ends `run` after the current update with a checkpoint of it (also with no checkpoint
/// period, which otherwise writes none); `run_quiet` reports every update it makes.
#[test]
fn a_stop_flag_ends_the_run_after_one_update_and_a_quiet_run_reports_each() {
    use std::sync::atomic::AtomicBool;
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(VarParams::None, 6);
    c.adaptive = false;
    let mut tr = Trainer::new(c.clone(), &DEV, Mlp::build(2, 2)).unwrap();
    tr.stop_when(std::sync::Arc::new(AtomicBool::new(true)));
    let mut src = InMemory::new(gaussian_data(256, 10)).unwrap();
    let e = tr.run(&mut src, Some(dir.path()), 0, 0).unwrap_err();
    assert!(
        matches!(e, vsdm_core::Error::Interrupted { step: 1, .. }),
        "{e}"
    );
    assert_eq!(
        Trainer::resume(dir.path(), &DEV, Mlp::build(2, 2))
            .unwrap()
            .step_count(),
        1
    );
    // With a folder but no checkpoint period (0) and no stop, a run writes no checkpoint.
    let quiet = tempfile::tempdir().unwrap();
    let mut tr = Trainer::new(c.clone(), &DEV, Mlp::build(2, 2)).unwrap();
    assert_eq!(tr.run(&mut src, Some(quiet.path()), 0, 0).unwrap().len(), 6);
    assert!(vsdm_core::trainer::latest_checkpoint(quiet.path())
        .unwrap()
        .is_none());
    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    let steps: Vec<usize> = tr
        .run_quiet(&mut src, None, 0, 0)
        .unwrap()
        .iter()
        .map(|r| r.step)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
}

/// `config.json` reads back for every kind of parameters, and parameters of another kind, size or value range
/// than the configured method's are refused naming the file.
#[test]
fn exported_configs_read_back_and_mismatched_parameters_are_named() {
    use vsdm_core::trainer::ExportedConfig;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let write = |config: TrainConfig, params: VarParams| {
        let c = ExportedConfig {
            config,
            params,
            step: 3,
        };
        std::fs::write(&path, serde_json::to_string(&c).unwrap()).unwrap();
        ExportedConfig::read(&path)
    };
    let mom = |c: Vec<f64>| VarParams::Momentum {
        c,
        params: VsmdParams::default(),
    };
    let full = |d: usize, v: f64| VarParams::Full {
        d,
        a: vec![v; d * d],
    };
    for (init, params) in [
        (VarParams::None, VarParams::None),
        (
            VarParams::Diagonal(vec![0.0; 2]),
            VarParams::Diagonal(vec![0.3, -0.1]),
        ),
        (mom(vec![0.0; 2]), mom(vec![0.1, 0.2])),
        (full(2, 0.0), full(2, 0.2)),
    ] {
        let back = write(config(init, 4), params.clone()).unwrap();
        assert_eq!((back.params, back.step), (params, 3));
    }
    let bad = [
        (
            VarParams::Diagonal(vec![0.0; 2]),
            mom(vec![0.1, 0.2]),
            "not of the kind",
        ),
        (full(2, 0.0), full(3, 0.1), "not of the kind"),
        (
            VarParams::Diagonal(vec![0.0; 2]),
            VarParams::Diagonal(vec![0.1; 3]),
            "holds 3 values",
        ),
        (
            VarParams::Diagonal(vec![0.0; 2]),
            VarParams::Diagonal(vec![0.1, 11.0]),
            "`params`",
        ),
    ];
    for (init, params, what) in bad {
        let e = write(config(init, 4), params).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("config.json"), "{what}: {e}");
    }
}

/// A `--weights` path is the folder itself, or the folder of one of its named files.
#[test]
fn a_weights_path_to_one_of_its_files_means_its_folder() {
    use vsdm_core::trainer::weights_folder;
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    std::fs::write(&model, b"x").unwrap();
    let files = ["model.safetensors", "config.json"];
    assert_eq!(weights_folder(dir.path(), &files), dir.path());
    assert_eq!(weights_folder(&model, &files), dir.path());
    // Not one of the named files, or not there: the path as given (the loader then names what is missing).
    let other = dir.path().join("notes.txt");
    std::fs::write(&other, b"x").unwrap();
    assert_eq!(weights_folder(&other, &files), other);
    let absent = dir.path().join("config.json");
    assert_eq!(weights_folder(&absent, &files), absent);
}

/// A trainer keeping a metrics file writes one row per update: its number, its loss as reported, and the
/// training seconds so far.
#[test]
fn the_metrics_file_gets_a_row_per_update() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(vsdm_core::metrics::MetricsLog::FILE);
    let mut c = config(VarParams::None, 4);
    c.adaptive = false;
    let mut tr = Trainer::new(c, &DEV, Mlp::build(2, 2)).unwrap();
    tr.log_metrics(&path).unwrap();
    let mut src = InMemory::new(gaussian_data(256, 11)).unwrap();
    let reports = tr.run_quiet(&mut src, None, 0, 0).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    for (row, r) in rows.iter().zip(&reports) {
        assert_eq!(row[0], r.step.to_string());
        assert_eq!(row[1].parse::<f64>().unwrap(), r.loss);
    }
    let last: f64 = rows[3][5].parse().unwrap();
    assert!((last - tr.training_seconds()).abs() < 2e-3, "{last}");
    // The same trainer, its file opened again (a second training loop in one program): the seconds go on from
    // where they were, not counting the first updates twice.
    tr.set_iters(7).unwrap();
    tr.log_metrics(&path).unwrap();
    tr.run_quiet(&mut src, None, 0, 0).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let secs: Vec<f64> = text
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(5).unwrap().parse().unwrap())
        .collect();
    assert_eq!(secs.len(), 7, "{text}");
    assert!(secs.windows(2).all(|w| w[0] <= w[1]), "{text}");
    assert!((secs[6] - tr.training_seconds()).abs() < 2e-3, "{text}");
}
