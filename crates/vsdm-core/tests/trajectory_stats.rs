//! The bookkeeping around the variational gradient (`vsdm_core::variational`): statistics merged from chunks of
//! trajectories equal those of one run over all of them, the estimator paired with reference trajectories is the
//! plain one less the reference's per-trajectory gradients (and its loss stays the integral of its gradient),
//! and hand-made runs, states of the wrong width and parameters at or past the bound are told apart.
//!
//! Found by mutation testing of `variational.rs` (docs/CORE.md, "Mutation testing"): the unit tests check the
//! closed-form gradient against finite differences of the loss's definition on one recorded run, and
//! `variational_bias.rs` the paired estimator on one coordinate, so chunk merging, a reference's indexing over
//! several elements and the paired loss went unchecked.

use candle_core::{Device, Tensor};
use vsdm_core::sampler::{sample_with_score, SampleRun, SamplerConfig, SamplerKind};
use vsdm_core::variational::{StatsAccumulator, TrajectoryStats, PARAM_LIMIT};
use vsdm_core::{BetaSchedule, ForwardProcess, NoiseRng, VarParams, VsmdParams};

const DEV: Device = Device::Cpu;
/// VSMD's noise scale in these tests (the statistics weigh by γβ).
const GAMMA: f64 = 2.0;

fn schedule() -> BetaSchedule {
    BetaSchedule::power(0.1, 10.0, 1.7, 1.0).unwrap()
}

/// Parameters of every kind, over a data shape of 3 elements (a full A is 3 × 3).
fn kinds() -> Vec<VarParams> {
    vec![
        VarParams::Diagonal(vec![0.1, -0.3, 0.6]),
        VarParams::Full {
            d: 3,
            a: vec![0.2, -0.1, 0.05, 0.3, 0.5, -0.2, 0.0, 0.1, -0.4],
        },
        VarParams::Momentum {
            c: vec![0.05, -0.1, 0.2],
            params: VsmdParams {
                kappa: Some(1.0),
                gamma: GAMMA,
                ..VsmdParams::default()
            },
        },
    ]
}

/// A recorded Euler–Maruyama run of `n` trajectories of the process of `k`, with a smooth stand-in score (the
/// statistics do not care where the score comes from), started from `seed`'s normal draw.
fn run(k: &VarParams, n: usize, seed: u64) -> SampleRun {
    let p = k.process(schedule(), &[3], &DEV).unwrap();
    let mut rng = NoiseRng::new(seed);
    let z0 = rng.randn(&p.state_shape(n), &DEV).unwrap();
    let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 12);
    sample_with_score(
        &p,
        &cfg,
        z0,
        |z, t, _| {
            let x = p.data_part(z)?;
            Ok(((x.tanh()? * (-1.3 * t))? + 0.2)?)
        },
        &mut rng,
        true,
    )
    .unwrap()
}

/// The trajectories `start .. start + len` of a recorded run, as a run of their own.
fn slice(r: &SampleRun, start: usize, len: usize) -> SampleRun {
    let cut = |v: &[Tensor]| -> Vec<Tensor> {
        v.iter().map(|t| t.narrow(0, start, len).unwrap()).collect()
    };
    SampleRun {
        state: r.state.narrow(0, start, len).unwrap(),
        nfe: r.nfe,
        times: r.times.clone(),
        trajectory: cut(&r.trajectory),
        scores: cut(&r.scores),
    }
}

fn stats(r: &SampleRun, k: &VarParams) -> TrajectoryStats {
    TrajectoryStats::from_run(r, k, &schedule(), GAMMA).unwrap()
}

/// Parameters of `k`'s kind moved away from it (the gradient is evaluated away from A_k).
fn moved(k: &VarParams) -> VarParams {
    let v: Vec<f64> = k
        .values()
        .iter()
        .enumerate()
        .map(|(i, x)| x + 0.1 * (i as f64 - 1.5))
        .collect();
    k.with_values(&v)
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
            "{what}, component {i}: {x} vs {y}"
        );
    }
}

#[test]
fn chunks_merged_are_the_run_they_were_cut_from() {
    for k in kinds() {
        let whole = run(&k, 10, 3);
        let one = stats(&whole, &k);
        let parts = vec![
            stats(&slice(&whole, 0, 6), &k),
            stats(&slice(&whole, 6, 1), &k),
            stats(&slice(&whole, 7, 3), &k),
        ];
        let merged = StatsAccumulator::merge(parts).unwrap();
        assert_eq!((merged.len(), one.len()), (10, 10), "{k:?}");
        assert!(!merged.is_empty());
        let theta = moved(&k);
        // Batches that reach into every chunk, in any order, and single trajectories of each.
        for batch in [vec![9, 0, 6, 3], vec![6], vec![8], (0..10).collect()] {
            let (lm, gm) = merged.loss_and_grad(&theta, 0.75, &batch);
            let (lo, go) = one.loss_and_grad(&theta, 0.75, &batch);
            close(&[lm], &[lo], 1e-12, &format!("{k:?} loss on {batch:?}"));
            close(&gm, &go, 1e-12, &format!("{k:?} gradient on {batch:?}"));
        }
        // A trajectory's own gradient is not another's (the merged rows are not all the first chunk's).
        let (_, g0) = merged.loss_and_grad(&theta, 0.75, &[0]);
        let (_, g8) = merged.loss_and_grad(&theta, 0.75, &[8]);
        assert!(
            g0.iter().zip(&g8).any(|(a, b)| (a - b).abs() > 1e-6),
            "{k:?}"
        );
    }
}

#[test]
fn merging_refuses_mixed_kinds_paired_chunks_and_nothing() {
    let [diag, full, mom] = <[VarParams; 3]>::try_from(kinds()).unwrap();
    let of = |k: &VarParams| stats(&run(k, 4, 1), k);
    for (a, b) in [(&diag, &full), (&mom, &diag)] {
        let e = StatsAccumulator::merge(vec![of(a), of(b)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("kinds differ"), "{e}");
    }
    let e = StatsAccumulator::merge(Vec::new()).unwrap_err().to_string();
    assert!(e.contains("nothing to merge"), "{e}");
    // A chunk already paired with its reference, first or later in the list: the pairing must come last.
    let plain = || stats(&run(&diag, 4, 1), &diag);
    let paired = || {
        plain()
            .with_reference(&stats(&run(&diag, 4, 2), &diag))
            .unwrap()
    };
    for chunks in [vec![paired(), plain()], vec![plain(), paired()]] {
        let e = StatsAccumulator::merge(chunks).unwrap_err().to_string();
        assert!(e.contains("before pairing"), "{e}");
    }
}

#[test]
fn the_paired_estimator_subtracts_each_reference_trajectory_gradient() {
    for k in kinds() {
        let plain = stats(&run(&k, 8, 4), &k);
        let reference = stats(&run(&k, 8, 5), &k);
        let paired = plain.clone().with_reference(&reference).unwrap();
        let theta = moved(&k);
        for batch in [vec![5, 1, 7], vec![6]] {
            let (_, gp) = plain.loss_and_grad(&theta, 0.8, &batch);
            let (_, gq) = paired.loss_and_grad(&theta, 0.8, &batch);
            // The reference's own gradients at A_k and ζ = 1, one trajectory at a time, averaged over the batch.
            let mut want = gp.clone();
            for &j in &batch {
                let (_, gr) = reference.loss_and_grad(&k, 1.0, &[j]);
                for (w, r) in want.iter_mut().zip(gr) {
                    *w -= r / batch.len() as f64;
                }
            }
            close(&gq, &want, 1e-10, &format!("{k:?} on {batch:?}"));
            assert!(
                gq.iter().zip(&gp).any(|(a, b)| (a - b).abs() > 1e-6),
                "{k:?}: the pairing changed nothing"
            );
        }
    }
}

/// The paired loss is what its gradient integrates: central differences of the loss match the gradient, and
/// the plain and paired losses differ by a term linear in the parameters.
#[test]
fn the_paired_loss_is_the_integral_of_its_gradient() {
    for k in kinds() {
        let plain = stats(&run(&k, 6, 6), &k);
        let paired = plain
            .clone()
            .with_reference(&stats(&run(&k, 6, 7), &k))
            .unwrap();
        let theta = moved(&k);
        let batch = [4, 0, 2];
        let (_, g) = paired.loss_and_grad(&theta, 0.75, &batch);
        let loss = |v: &[f64]| paired.loss_and_grad(&k.with_values(v), 0.75, &batch).0;
        let gap = |v: &[f64]| {
            let p = k.with_values(v);
            paired.loss_and_grad(&p, 0.75, &batch).0 - plain.loss_and_grad(&p, 0.75, &batch).0
        };
        // VSMD's a(c) makes the loss non-quadratic in c: a finer step and a looser tolerance there; for the
        // diagonal and full A central differences are exact but for round-off.
        let (h, tol) = match k {
            VarParams::Momentum { .. } => (1e-4, 1e-6),
            _ => (1e-3, 1e-8),
        };
        for i in 0..g.len() {
            let at = |d: f64| {
                let mut v = theta.values().to_vec();
                v[i] += d;
                v
            };
            let fd = (loss(&at(h)) - loss(&at(-h))) / (2.0 * h);
            close(&[fd], &[g[i]], tol, &format!("{k:?} component {i}"));
            // Linear: the gap's second difference vanishes, its first is not zero.
            let (up, mid, dn) = (gap(&at(h)), gap(&at(0.0)), gap(&at(-h)));
            assert!((up - 2.0 * mid + dn).abs() < 1e-9, "{k:?} component {i}");
            assert!((up - dn).abs() > 1e-9, "{k:?} component {i}: no gap");
        }
    }
}

#[test]
fn a_hand_made_run_must_hold_a_state_and_a_time_per_score() {
    let k = VarParams::Diagonal(vec![0.0; 3]);
    let good = run(&k, 2, 1);
    let n = good.scores.len();
    // The final state is not needed: the statistics use the states the scores were evaluated at.
    let mut r = good.clone();
    r.trajectory.truncate(n);
    let (full, cut) = (stats(&good, &k), stats(&r, &k));
    assert_eq!(
        full.loss_and_grad(&moved(&k), 0.75, &[0, 1]),
        cut.loss_and_grad(&moved(&k), 0.75, &[0, 1])
    );
    type Spoil = fn(&mut SampleRun, usize);
    let cases: [(&str, Spoil); 3] = [
        ("one state too few", |r, n| r.trajectory.truncate(n - 1)),
        ("one time too few", |r, n| r.times.truncate(n)),
        ("no score", |r, _| r.scores.clear()),
    ];
    for (what, spoil) in cases {
        let mut r = good.clone();
        spoil(&mut r, n);
        let e = TrajectoryStats::from_run(&r, &k, &schedule(), 1.0)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains("trajectory"), "{what}: {e}");
    }
}

#[test]
fn the_accumulator_names_a_step_that_does_not_fit_and_is_left_as_it_was() {
    let k = VarParams::Diagonal(vec![0.1, -0.2, 0.3]);
    let mut rng = NoiseRng::new(9);
    let mut draw = |b: usize, w: usize| rng.randn(&[b, w], &DEV).unwrap();
    let (z1, s1, z2, s2) = (draw(4, 3), draw(4, 3), draw(4, 3), draw(4, 3));
    let (narrow, short, other) = (draw(4, 2), draw(3, 3), draw(5, 3));
    let mut acc = StatsAccumulator::new(&k, 1.0);
    acc.add(&z1, &s1, 0.1, 2.0).unwrap();
    // A score of the wrong width, or of another batch than its state's.
    for bad in [&narrow, &short] {
        let e = acc.add(&z2, bad, 0.3, 5.0).unwrap_err().to_string();
        assert!(e.contains("[batch, 3] and [batch, 3]"), "{e}");
    }
    // A step of other trajectories than the earlier steps'.
    let e = acc.add(&other, &other, 0.3, 5.0).unwrap_err().to_string();
    assert!(e.contains("the 4 trajectories"), "{e}");
    acc.add(&z2, &s2, 0.2, 3.0).unwrap();
    let mut clean = StatsAccumulator::new(&k, 1.0);
    clean.add(&z1, &s1, 0.1, 2.0).unwrap();
    clean.add(&z2, &s2, 0.2, 3.0).unwrap();
    let (a, b) = (acc.finish().unwrap(), clean.finish().unwrap());
    assert_eq!(a.len(), 4);
    let theta = moved(&k);
    let (la, ga) = a.loss_and_grad(&theta, 0.75, &[0, 1, 2, 3]);
    let (lb, gb) = b.loss_and_grad(&theta, 0.75, &[0, 1, 2, 3]);
    assert_eq!((la, ga), (lb, gb), "the refused steps changed the sums");
}

#[test]
fn parameters_at_the_bound_are_accepted_and_past_it_refused() {
    let at = VarParams::Diagonal(vec![PARAM_LIMIT, -PARAM_LIMIT, 0.0]);
    assert!(at.validate().is_ok());
    for past in [PARAM_LIMIT * (1.0 + 1e-12), -PARAM_LIMIT - 1e-9, 1e6] {
        let e = VarParams::Diagonal(vec![0.0, past, 0.0])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("(index 1)"), "{past}: {e}");
    }
}
