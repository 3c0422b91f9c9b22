//! The whole forecasting path on a small generated archive: train (VSDM and VSMD, tiny budget) → export weights →
//! reload → forecast rolling test windows → GluonTS metrics → CSV and fan charts; and the errors of bad weights.

use candle_core::Device;
use vsdm_core::hub::testing::FakeHub;
use vsdm_core::hub::{Hub, HubRef, RepoKind};
use vsdm_core::{BetaSchedule, ForwardProcess, SamplerConfig, SamplerKind, VarParams};
use vsdm_timeseries::data::download::unpack_tar_gz;
use vsdm_timeseries::data::gluonts::load_gluonts_dir;
use vsdm_timeseries::data::synthetic::SyntheticArchive;
use vsdm_timeseries::forecast;
use vsdm_timeseries::pipeline::{self, Budget, Method};
use vsdm_timeseries::weights;
use vsdm_timeseries::window::{Scaling, WindowConfig};

fn small_dataset(dir: &std::path::Path) -> vsdm_timeseries::data::Dataset {
    let arch = SyntheticArchive {
        name: "tiny_nips".into(),
        num_series: 3,
        train_len: 120,
        num_test_windows: 2,
        prediction_length: 6,
        ..Default::default()
    };
    let tgz = dir.join("tiny_nips.tar.gz");
    arch.write(&tgz).unwrap();
    unpack_tar_gz(&tgz, dir).unwrap();
    load_gluonts_dir(&dir.join("tiny_nips"), "tiny", None).unwrap()
}

/// Test windows whose horizon reaches back into the training series (here: the 6-step windows of the small
/// archive read with a prediction length of 12) are refused naming the test file, not scored.
#[test]
fn test_windows_inside_the_training_series_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    small_dataset(tmp.path());
    let e = load_gluonts_dir(&tmp.path().join("tiny_nips"), "tiny", Some(12))
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("test.json")
            && e.contains("forecasts columns 114–125")
            && e.contains("inside the training series"),
        "{e}"
    );
}

#[test]
fn train_export_reload_forecast_and_score() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_dataset(tmp.path());
    assert_eq!(data.prediction_length, 6);
    let window = WindowConfig::timegrad(6, Scaling::Std);
    let dev = Device::Cpu;
    for method in [Method::Vsdm, Method::Vsmd, Method::Vp] {
        let ckpt = tmp.path().join(format!("ckpt-{}", method.name()));
        // VP with a non-default power schedule; VSDM and VSMD with their defaults.
        let budget = Budget {
            beta_max: (method == Method::Vp).then_some(5.0),
            ..Budget::smoke()
        };
        let trained =
            pipeline::train(method, &budget, &data, window, 7, &dev, Some((&ckpt, 6))).unwrap();
        assert!(trained.final_loss.is_some_and(f64::is_finite));
        assert_eq!(trained.updates, budget.iters);
        if method != Method::Vp {
            // The variational stages moved A (or c) away from its VP/CLD start.
            let moved = trained
                .trainer
                .params_ema()
                .values()
                .iter()
                .any(|v| v.abs() > 0.0);
            assert!(
                moved,
                "{}: variational parameters never updated",
                method.name()
            );
        }
        let wdir = tmp.path().join(format!("w-{}", method.name()));
        weights::save(&trained, "tiny", &wdir).unwrap();
        let loaded = weights::load(&wdir, &dev).unwrap();
        assert_eq!(loaded.cfg.method, method);
        assert_eq!(loaded.cfg.window, window);
        // The weights carry the schedule they were trained with (VSMD's constant β, VSDM's power schedule,
        // VP's with the given peak), and the loaded process uses it.
        let expected = match method {
            Method::Vsmd => BetaSchedule::constant(pipeline::VSMD_BETA, 1.0).unwrap(),
            Method::Vsdm => BetaSchedule::vsdm_default(),
            Method::Vp => BetaSchedule::power(0.1, 5.0, 1.7, 1.0).unwrap(),
        };
        assert_eq!(loaded.cfg.exported.config.schedule, expected);
        assert_eq!(loaded.process.schedule(), &expected);
        let fc = loaded.forecaster(SamplerConfig::new(SamplerKind::EulerMaruyama, 3), 5, &dev);
        let ends = forecast::select_windows(&data.test, None);
        assert_eq!(ends.len(), 2);
        let f = fc.forecast(&data.test, &ends, 8, 1).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].samples.len(), 8 * 6 * 3);
        let r = forecast::score(&f).unwrap();
        assert!(r.marginal.crps.is_finite() && r.sum.crps.is_finite() && r.marginal.crps > 0.0);
        // The truth of window k is the test series' last 6 columns before its end.
        let end = ends[1];
        assert_eq!(
            f[1].truth[5 * 3 + 2],
            data.test.series.at(2, end - 1) as f64
        );
        let files = forecast::export(
            &tmp.path().join(format!("out-{}", method.name())),
            &f,
            &data.series_names,
            2,
        )
        .unwrap();
        assert_eq!(files.len(), 3);
        // The archive names no series: they are numbered, in the CSV's columns and the charts' names.
        assert!(files[1].ends_with("fan_series0.png"), "{files:?}");
        assert!(files
            .iter()
            .all(|p| std::fs::metadata(p).unwrap().len() > 0));
    }
}

/// Published weights on a loopback stand-in for the hub (`HF_ENDPOINT`), downloaded through hf-hub into a fresh
/// cache, then found there offline once the server is gone.
#[test]
fn hub_weights_download_into_the_cache_then_load_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_dataset(tmp.path());
    let dev = Device::Cpu;
    let window = WindowConfig::timegrad(6, Scaling::Std);
    let trained =
        pipeline::train(Method::Vp, &Budget::smoke(), &data, window, 1, &dev, None).unwrap();
    let wdir = tmp.path().join("published");
    weights::save(&trained, "tiny", &wdir).unwrap();
    let commit = "fedcba9876543210fedcba9876543210fedcba98";
    let server = weights::WEIGHT_FILES
        .iter()
        .fold(FakeHub::new(commit), |s, f| {
            s.with_file(
                RepoKind::Model,
                "alice/tiny-ts",
                "v1",
                f,
                std::fs::read(wdir.join(f)).unwrap(),
            )
        });
    let server = server.start().unwrap();
    let cache = tmp.path().join("hf_home").join("hub");
    let r: HubRef = "hf:alice/tiny-ts@v1".parse().unwrap();
    // Offline and not cached: the error says what is missing, where, and how to fetch it.
    let e = weights::from_hub(&Hub::new(&cache, None), &r)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("refs/v1") && e.contains("huggingface-cli download alice/tiny-ts"),
        "{e}"
    );
    let online = Hub::new(&cache, Some(server.endpoint().to_string())).with_progress(false);
    let snap = weights::from_hub(&online, &r).unwrap();
    assert_eq!(
        snap,
        cache
            .join("models--alice--tiny-ts")
            .join("snapshots")
            .join(commit)
    );
    drop(server);
    // Now cached: resolves offline and loads the same network.
    let again = weights::from_hub(&Hub::new(&cache, None), &r).unwrap();
    assert_eq!(again, snap);
    let loaded = weights::load(&again, &dev).unwrap();
    assert_eq!(loaded.cfg.network, trained.net);
    // A revision the server does not have is a download error naming the URL and the status.
    let empty = FakeHub::new(commit).start().unwrap();
    let online = Hub::new(&cache, Some(empty.endpoint().to_string())).with_progress(false);
    let e = weights::from_hub(&online, &"hf:alice/tiny-ts@v2".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("resolve/v2/model.safetensors") && e.contains("404"),
        "{e}"
    );
}

#[test]
fn bad_weights_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Device::Cpu;
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    std::fs::write(tmp.path().join("config.json"), "{not json").unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(err.contains("config.json"), "{err}");
    // The bundled weights with a window that contradicts their network: refused at loading, not at sampling.
    let Some(assets) = vsdm_timeseries::data::registry::default_assets_dir() else {
        eprintln!("skipped the window check: no assets/ folder (the bundled weights)");
        return;
    };
    let src = assets.join("timeseries-weights/exchange_rate-vsdm");
    std::fs::copy(
        src.join("model.safetensors"),
        tmp.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    assert!(weights::load(&src, &dev).is_ok());
    cfg["window"]["context"] = 10.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        err.contains("config.json")
            && err.contains("`window` (context 10, horizon 30) and `network` (context 90"),
        "{err}"
    );
    // A network for another number of series than the data shape, with the method's own channel count.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["network"]["num_series"] = 9.into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        err.contains("config.json")
            && err.contains("network (9 series")
            && err.contains("does not match"),
        "{err}"
    );
    // A variational parameter far beyond any trained value (a hand edit), and a `params` of the wrong length.
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["params"]["Diagonal"][5] = (-1e6).into();
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        err.contains("config.json") && err.contains("`params`") && err.contains("(index 5)"),
        "{err}"
    );
    let n = cfg["params"]["Diagonal"].as_array().unwrap().len();
    cfg["params"]["Diagonal"] = serde_json::json!(vec![0.0; 10]);
    std::fs::write(tmp.path().join("config.json"), cfg.to_string()).unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        err.contains(&format!(
            "`params` holds 10 values, but the configured method (`config.init`) has {n}"
        )),
        "{err}"
    );
    // Weights holding NaN: named at loading, not sampled into NaN forecasts.
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let st = tmp.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&st, &dev).unwrap();
    let name = tensors.keys().max().unwrap().clone();
    let t = (&tensors[&name] * f64::NAN).unwrap();
    tensors.insert(name.clone(), t);
    candle_core::safetensors::save(&tensors, &st).unwrap();
    let err = weights::load(tmp.path(), &dev).err().unwrap().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains(&name) && err.contains("NaN"),
        "{err}"
    );
}

/// A ζ outside [0, 2] (or not a number), and other bad budgets (β schedules among them), are refused before any training, naming the
/// flag and the value.
#[test]
fn bad_budgets_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_dataset(tmp.path());
    let window = WindowConfig::timegrad(6, Scaling::Std);
    for z in [f64::NAN, -0.5, 3.0] {
        let budget = Budget {
            zeta: Some(z),
            ..Budget::smoke()
        };
        let e = pipeline::train(Method::Vsdm, &budget, &data, window, 7, &Device::Cpu, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--zeta") && e.contains(&format!("{z}")), "{e}");
    }
    // The other budget values the trainer's validation cannot see, each named.
    let bad = [
        (
            Budget {
                warmup_frac: f64::NAN,
                ..Budget::smoke()
            },
            "--warmup-frac NaN",
        ),
        (
            Budget {
                warmup_frac: 0.5,
                cooldown_frac: 0.5,
                ..Budget::smoke()
            },
            "reach 1",
        ),
        (
            Budget {
                stages: 0,
                ..Budget::smoke()
            },
            "--stages 0",
        ),
        (
            Budget {
                hidden: 0,
                ..Budget::smoke()
            },
            "--hidden 0",
        ),
        (
            Budget {
                heads: 0,
                ..Budget::smoke()
            },
            "--heads 0",
        ),
        (
            Budget {
                beta_max: Some(f64::NAN),
                ..Budget::smoke()
            },
            "--beta-max NaN",
        ),
        (
            Budget {
                constant_beta: Some(-2.0),
                ..Budget::smoke()
            },
            "--constant-beta -2",
        ),
        (
            Budget {
                beta_max: Some(10.0),
                constant_beta: Some(3.0),
                ..Budget::smoke()
            },
            "not both",
        ),
    ];
    for (budget, want) in bad {
        let e = pipeline::train(Method::Vsdm, &budget, &data, window, 7, &Device::Cpu, None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

/// The paired (debiased) variational gradient is on by default for VSMD only, and `--debias` overrides it both
/// ways for the variational methods.
#[test]
fn debias_defaults_and_the_flag() {
    let cases = [
        (Method::Vsdm, None, false),
        (Method::Vsmd, None, true),
        (Method::Vsdm, Some(true), true),
        (Method::Vsmd, Some(false), false),
    ];
    for (method, flag, want) in cases {
        let budget = Budget {
            debias: flag,
            ..Budget::smoke()
        };
        let c = pipeline::train_config(method, &budget, 3, 6, 0).unwrap();
        assert_eq!(
            c.variational.debias, want,
            "{method:?} with --debias {flag:?}"
        );
    }
}

/// The budget's fractions and counts as the trainer gets them: warm-up and cool-down as rounded fractions of
/// `--iters`, the updates between them split into `--stages` blocks, half the simulated trajectories per
/// variational batch, κ = 1 unless `--kappa` gives another (VSMD); a batch of zero windows refused alone.
#[test]
fn the_budget_reaches_the_trainer() {
    let budget = Budget {
        iters: 100,
        warmup_frac: 0.1,
        cooldown_frac: 0.25,
        stages: 4,
        n_traj: 64,
        ..Budget::smoke()
    };
    let c = pipeline::train_config(Method::Vsdm, &budget, 3, 6, 0).unwrap();
    // 10 warm-up, 25 cool-down, the 65 between in blocks of 16 (the last stage takes the remainder).
    assert_eq!((c.warmup, c.cooldown, c.block), (10, 25, 16));
    assert_eq!((c.iters, c.batch_size, c.variational.batch), (100, 4, 32));
    let one = Budget {
        n_traj: 1,
        stages: 100,
        ..budget
    };
    let c = pipeline::train_config(Method::Vsdm, &one, 3, 6, 0).unwrap();
    assert_eq!((c.block, c.variational.batch), (1, 1));
    for (kappa, want) in [(None, 1.0), (Some(0.9), 0.9)] {
        let b = Budget { kappa, ..budget };
        let c = pipeline::train_config(Method::Vsmd, &b, 3, 6, 0).unwrap();
        match c.init {
            VarParams::Momentum { params, .. } => assert_eq!(params.kappa, Some(want)),
            other => panic!("{other:?}"),
        }
    }
    let e = Budget { batch: 0, ..budget }
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("--batch 0"), "{e}");
}

/// The network's width, heads, depth and patch come from the budget; patch 0 picks 6 steps per token when 6
/// divides both the context and the horizon, else 1.
#[test]
fn the_budget_shapes_the_network() {
    let budget = Budget {
        hidden: 24,
        heads: 3,
        layers: 5,
        patch: 2,
        ..Budget::smoke()
    };
    let w = WindowConfig::timegrad(6, Scaling::Std);
    let n = pipeline::net_config(Method::Vsmd, &budget, 7, &w, 4);
    assert_eq!(
        (
            n.hidden,
            n.heads,
            n.layers,
            n.patch,
            n.num_series,
            n.context,
            n.horizon
        ),
        (24, 3, 5, 2, 7, 18, 6)
    );
    assert_eq!((n.time_features, n.state_channels), (4, 2));
    let auto = Budget { patch: 0, ..budget };
    assert_eq!(pipeline::net_config(Method::Vsdm, &auto, 7, &w, 4).patch, 6);
    let w5 = WindowConfig::timegrad(5, Scaling::Std);
    assert_eq!(
        pipeline::net_config(Method::Vsdm, &auto, 7, &w5, 4).patch,
        1
    );
}

/// A checkpointed run reports the mean loss of its last tenth of updates (the metrics file's rows); run again
/// on its finished checkpoint it makes no update and reports no loss; with another learning rate the
/// checkpoint is refused, naming the setting.
#[test]
fn a_checkpointed_run_reports_its_loss_and_resumes_only_its_own_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_dataset(tmp.path());
    let window = WindowConfig::timegrad(6, Scaling::Std);
    let ckpt = tmp.path().join("run").join("checkpoints");
    let budget = Budget {
        iters: 15,
        ..Budget::smoke()
    };
    let dev = Device::Cpu;
    let run =
        |b: &Budget| pipeline::train(Method::Vsdm, b, &data, window, 3, &dev, Some((&ckpt, 5)));
    let first = run(&budget).unwrap();
    assert_eq!(first.updates, 15);
    let csv = std::fs::read_to_string(tmp.path().join("run").join("metrics.csv")).unwrap();
    let losses: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(losses.len(), 15);
    // The last tenth of 15 updates, rounded up: 2.
    let want = (losses[13] + losses[14]) / 2.0;
    let got = first.final_loss.unwrap();
    assert!((got - want).abs() <= 1e-12 * want.abs(), "{got} vs {want}");
    let again = run(&budget).unwrap();
    assert_eq!((again.updates, again.final_loss), (0, None));
    let other = Budget { lr: 2e-3, ..budget };
    let e = run(&other).err().unwrap().to_string();
    assert!(
        e.contains("other settings") && e.contains("lr: 0.001 → 0.002"),
        "{e}"
    );
}
