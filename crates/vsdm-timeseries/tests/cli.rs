//! The command line on the bundled data and weights (offline, a fresh cache, output in a temporary folder):
//! the forecast is labelled with the method the weights were trained with, a contradicting `--method` is
//! refused naming both, and bad flags (a training budget of zero updates among them) are refused.

use std::process::{Command, Output};

use vsdm_timeseries::data::registry::default_assets_dir;

/// The program with `args`, offline, its cache and output in `tmp`, ready to run.
fn command(tmp: &std::path::Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsdm-timeseries"));
    cmd.args(["--offline", "--cache-dir"])
        .arg(tmp.join("cache"))
        .arg("--out")
        .arg(tmp.join("out"))
        .args(args)
        .env("RUST_BACKTRACE", "0");
    cmd
}

/// [`command`], run to its end.
fn in_folder(tmp: &std::path::Path, args: &[&str]) -> Output {
    command(tmp, args).output().unwrap()
}

/// The error output of a run that must have failed.
fn refused(out: &Output) -> String {
    assert!(!out.status.success(), "accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn run(args: &[&str]) -> Option<(Output, tempfile::TempDir)> {
    let assets = default_assets_dir()?;
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vsdm-timeseries"))
        .args(["--offline", "--cache-dir"])
        .arg(tmp.path().join("cache"))
        .arg("--out")
        .arg(tmp.path().join("out"))
        .args(["--weights"])
        .arg(assets.join("timeseries-weights").join("exchange_rate-vsmd"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    Some((out, tmp))
}

#[test]
fn weights_name_the_method_and_a_contradicting_flag_is_refused() {
    let Some((out, tmp)) = run(&[
        "--steps",
        "2",
        "--samples",
        "4",
        "--max-windows",
        "1",
        "--charts",
        "0",
        "evaluate",
    ]) else {
        eprintln!("skipped: no assets/ folder next to the crate");
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without --method the row and the output folder take the weights' method (vsmd), not the default (vsdm).
    assert!(stdout.contains("| vsmd |"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("forecast: 4/4 samples"), "{stderr}");
    assert!(tmp
        .path()
        .join("out/exchange_rate/vsmd/forecast/metrics.json")
        .is_file());
    assert!(!tmp.path().join("out/exchange_rate/vsdm").exists());

    // The weights' config.json for their folder (a path copied from a listing) means the folder; another
    // file is named as not a weights folder.
    let assets = default_assets_dir().unwrap();
    let file = assets.join("timeseries-weights/exchange_rate-vsmd/config.json");
    let eval = [
        "--steps",
        "2",
        "--samples",
        "4",
        "--max-windows",
        "1",
        "--charts",
        "0",
    ];
    let out = in_folder(
        tmp.path(),
        &[
            &["--weights", file.to_str().unwrap()][..],
            &eval,
            &["evaluate"],
        ]
        .concat(),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("| vsmd |"),
        "{out:?}"
    );
    let other = assets.join("exchange_rate_nips.tar.gz");
    let out = in_folder(
        tmp.path(),
        &["--weights", other.to_str().unwrap(), "evaluate"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("a file, not a weights folder"),
        "{stderr}"
    );

    let (out, _tmp) = run(&["--method", "vp", "--steps", "2", "evaluate"]).unwrap();
    let stderr = refused(&out);
    assert!(
        stderr.contains("--method vp") && stderr.contains("trained with vsmd"),
        "{stderr}"
    );
    // VSDM's weights have no damping ratio: a --kappa beside them is refused, not ignored.
    let vsdm = assets.join("timeseries-weights/exchange_rate-vsdm");
    let out = in_folder(
        tmp.path(),
        &[
            &["--weights", vsdm.to_str().unwrap(), "--kappa", "0.9"][..],
            &eval,
            &["evaluate"],
        ]
        .concat(),
    );
    let stderr = refused(&out);
    assert!(
        stderr.contains("--kappa 0.9") && stderr.contains("are vsdm's, which has no damping ratio"),
        "{stderr}"
    );
}

/// Flags out of range (a training budget of zero updates among them) are refused before any work, naming the
/// flag.
#[test]
fn bad_flags_are_named() {
    if default_assets_dir().is_none() {
        eprintln!("skipped: no assets/ folder next to the crate (the bundled data set)");
        return;
    }
    // (--iters, further arguments, what the error must say)
    for (iters, args, want) in [
        ("0", &["train"][..], "--iters 0"),
        (
            "2",
            &["--sample-batch", "0", "evaluate"][..],
            "--sample-batch 0",
        ),
        ("2", &["--context", "0", "train"][..], "--context 0"),
        (
            "2",
            &["--prediction-length", "12", "train"][..],
            "--data only",
        ),
        (
            "2",
            &["--warmup-frac", "1.5", "train"][..],
            "--warmup-frac 1.5",
        ),
        ("2", &["--stages", "0", "train"][..], "--stages 0"),
        // Options are read after the subcommand too.
        ("2", &["train", "--stages", "0"][..], "--stages 0"),
        (
            "2",
            &["evaluate", "--max-windows", "0"][..],
            "--max-windows 0",
        ),
        (
            "2",
            &["bench", "--seeds", "0,1,0"][..],
            "--seeds lists 0 twice",
        ),
        (
            "2",
            &["bench", "--methods", "vp,vp"][..],
            "--methods lists vp twice",
        ),
        (
            "2",
            &["--data", "/no/such/series.csv", "train"][..],
            "--data /no/such/series.csv: no such file or folder",
        ),
        ("2", &["--validation", "0", "train"][..], "--validation 0"),
        (
            "2",
            &["--validation", "300", "train"][..],
            "--validation 300",
        ),
        ("2", &["--a-iters", "0", "train"][..], "--a-iters 0"),
        ("2", &["--n-traj", "0", "train"][..], "--n-traj 0"),
        ("2", &["--layers", "0", "train"][..], "--layers 0"),
        ("2", &["--lr", "5", "train"][..], "--lr 5"),
        ("2", &["--ema", "1", "train"][..], "--ema 1"),
        (
            "2",
            &["--traj-steps", "18446744073709551615", "train"][..],
            "--traj-steps 18446744073709551615: must be at most",
        ),
        (
            "2",
            &["--steps", "18446744073709551615", "evaluate"][..],
            "--steps 18446744073709551615: must be at most",
        ),
        ("2", &["--a-lr=-1", "train"][..], "--a-lr -1"),
        ("2", &["--kappa", "0.1", "train"][..], "--kappa 0.1"),
        // κ is VSMD's: beside VP or VSDM alone (the default method) it is refused, not ignored.
        (
            "2",
            &["--kappa", "0.9", "train"][..],
            "--kappa 0.9: the damping ratio is VSMD's",
        ),
        (
            "2",
            &["--method", "vp", "--kappa", "0.9", "train"][..],
            "--kappa 0.9: the damping ratio is VSMD's",
        ),
        (
            "2",
            &["--kappa", "0.9", "bench", "--methods", "vp,vsdm"][..],
            "--kappa 0.9: the damping ratio is VSMD's",
        ),
        // bench trains its own runs: a --method or --weights beside it would be ignored.
        ("2", &["--method", "vp", "bench"][..], "--method vp: bench"),
        ("2", &["--weights", "w", "bench"][..], "--weights w: bench"),
        // A negative number is a value, not a flag.
        ("2", &["--zeta", "-1", "train"][..], "--zeta -1"),
        ("2", &["--lr", "-1e-3", "train"][..], "--lr -0.001"),
        ("2", &["--beta-max", "inf", "train"][..], "--beta-max inf"),
        // … and so is a negative count, named as a value of its flag.
        ("-5", &["train"][..], "invalid value '-5' for '--iters "),
        (
            "2",
            &["--context", "-3", "train"][..],
            "invalid value '-3' for '--context ",
        ),
        (
            "2",
            &["bench", "--seeds", "0,-1"][..],
            "invalid value '-1' for '--seeds ",
        ),
        (
            "2",
            &["--beta-max", "5", "--constant-beta", "2", "train"][..],
            "--constant-beta",
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = in_folder(tmp.path(), &[&["--iters", iters], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(!tmp.path().join("out").exists(), "{args:?} wrote output");
    }
    // An output folder that is a file: named before any work.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("out"), b"a file").unwrap();
    let out = in_folder(tmp.path(), &["--iters", "2", "train"]);
    let stderr = refused(&out);
    assert!(
        stderr.contains("--out") && stderr.contains("a file, not a folder"),
        "{stderr}"
    );
    // A series too short for its test windows: the file and the flag are named.
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("short.csv");
    let rows: String = (0..100)
        .map(|h| format!("2020-01-{:02} {:02}:00:00,{h}\n", 1 + h / 24, h % 24))
        .collect();
    std::fs::write(&csv, format!("date,a\n{rows}")).unwrap();
    let out = in_folder(
        tmp.path(),
        &[
            "--iters",
            "2",
            "--data",
            csv.to_str().unwrap(),
            "--prediction-length",
            "30",
            "train",
        ],
    );
    let stderr = refused(&out);
    assert!(
        stderr.contains("short.csv with --prediction-length 30") && stderr.contains("no room"),
        "{stderr}"
    );
    // An archive that exists but is not unpacked is named with what to do.
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("exchange_rate.tar.gz");
    std::fs::write(&archive, b"not unpacked").unwrap();
    let out = in_folder(
        tmp.path(),
        &["--iters", "2", "--data", archive.to_str().unwrap(), "train"],
    );
    let stderr = refused(&out);
    assert!(stderr.contains("unpack it first"), "{stderr}");
}

/// VSMD's damping ratio: kept in the weights' configuration, and a checkpointed run refuses to go on with
/// another.
#[test]
fn kappa_is_kept_and_a_run_refuses_another() {
    if default_assets_dir().is_none() {
        eprintln!("skipped: no assets/ folder next to the crate (the bundled data set)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let small = ["--method", "vsmd", "--n-traj", "2", "--a-iters", "1"];
    let out = in_folder(
        tmp.path(),
        &[&small[..], &["--iters", "2", "--kappa", "0.9", "train"]].concat(),
    );
    assert!(out.status.success(), "{out:?}");
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            tmp.path()
                .join("out/exchange_rate/vsmd/weights/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let kappa = &cfg["config"]["init"]["Momentum"]["params"]["kappa"];
    assert_eq!(*kappa, 0.9, "{cfg}");
    let out = in_folder(
        tmp.path(),
        &[&small[..], &["--iters", "4", "--kappa", "1", "train"]].concat(),
    );
    let stderr = refused(&out);
    assert!(
        stderr.contains("other settings") && stderr.contains("kappa"),
        "{stderr}"
    );
    // Forecasting those weights with another κ is refused too (their own would be used).
    let out = in_folder(
        tmp.path(),
        &[
            &small[..],
            &["--kappa", "1", "--samples", "2", "--steps", "2", "forecast"],
        ]
        .concat(),
    );
    let stderr = refused(&out);
    assert!(
        stderr.contains("--kappa 1") && stderr.contains("κ = 0.9"),
        "{stderr}"
    );
}

/// Running the same training twice: the second run finds the finished checkpoint, says so instead of reporting
/// a loss of updates it did not make, and leaves the weights written by the first run untouched.
#[test]
fn a_finished_run_is_reported_and_its_weights_kept() {
    if default_assets_dir().is_none() {
        eprintln!("skipped: no assets/ folder next to the crate (the bundled data set)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let train = || {
        let out = in_folder(tmp.path(), &["--iters", "2", "train"]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let weights = tmp
        .path()
        .join("out/exchange_rate/vsdm/weights/model.safetensors");
    let first = train();
    assert!(first.contains("trained vsdm on exchange_rate"), "{first}");
    // stderr is a pipe here, not a terminal: the progress comes as plain lines.
    assert!(first.contains("training: 2/2 steps · loss "), "{first}");
    let metrics =
        std::fs::read_to_string(tmp.path().join("out/exchange_rate/vsdm/metrics.csv")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        3,
        "a header and two updates: {metrics}"
    );
    let written = std::fs::read(&weights).unwrap();
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    let second = train();
    assert!(second.contains("is already trained"), "{second}");
    assert!(!second.contains("final loss"), "{second}");
    assert_eq!(std::fs::read(&weights).unwrap(), written);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );
}

/// A checkpointed run refuses to go on under another window (the context and the scaling change no weight's
/// shape), naming what changed; weights refuse to be scored on windows they were not trained for; a damaged
/// checkpoint pointer is an error naming it, and the checkpoints stay; without a pointer, a fresh run in the
/// folder is refused and the earlier run's files stay.
#[test]
fn changed_settings_and_a_damaged_pointer_are_refused() {
    if default_assets_dir().is_none() {
        eprintln!("skipped: no assets/ folder next to the crate (the bundled data set)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = in_folder(tmp.path(), &[&["--checkpoint-every", "1"], args].concat());
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--iters", "2", "train"]);
    assert!(ok, "{err}");
    let (ok, err) = run(&["--iters", "2", "--context", "60", "train"]);
    assert!(!ok && err.contains("window.context: 90 → 60"), "{err}");
    let (ok, err) = run(&["--scaling", "std", "evaluate"]);
    assert!(
        !ok && err.contains("trained with scaling last (--scaling std)"),
        "{err}"
    );
    let ckpt = tmp.path().join("out/exchange_rate/vsdm/checkpoints");
    let count = || {
        std::fs::read_dir(&ckpt)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("ckpt-"))
            .count()
    };
    let before = count();
    std::fs::write(ckpt.join("latest"), "").unwrap();
    let (ok, err) = run(&["--iters", "3", "train"]);
    assert!(
        !ok && err.contains("latest") && err.contains("names no checkpoint"),
        "{err}"
    );
    assert_eq!(count(), before);
    // Without the pointer the run cannot be resumed, and training afresh in its place (here with another
    // seed) would replace its checkpoints and weights: refused, naming what the folder holds.
    let weights = tmp
        .path()
        .join("out/exchange_rate/vsdm/weights/model.safetensors");
    let kept = std::fs::read(&weights).unwrap();
    std::fs::remove_file(ckpt.join("latest")).unwrap();
    let (ok, err) = run(&["--iters", "2", "--seed", "7", "train"]);
    assert!(
        !ok && err.contains("holds an earlier run")
            && err.contains("checkpoints/ckpt-")
            && err.contains("weights/model.safetensors"),
        "{err}"
    );
    assert_eq!(count(), before);
    assert_eq!(std::fs::read(&weights).unwrap(), kept);
    // Removing the run is the way to train afresh there; a run stopped before its first checkpoint (only
    // its run.json written) starts over without being asked.
    std::fs::remove_dir_all(tmp.path().join("out/exchange_rate/vsdm")).unwrap();
    std::fs::create_dir_all(&ckpt).unwrap();
    std::fs::write(ckpt.join("run.json"), "{}").unwrap();
    let (ok, err) = run(&["--iters", "2", "--seed", "7", "train"]);
    assert!(ok, "{err}");
}

/// A CSV's column headers name its series in the forecast CSV and the fan charts.
#[test]
fn csv_columns_name_the_forecast_series() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("two.csv");
    let rows: String = (0..24 * 40)
        .map(|h| {
            let (d, t) = (h / 24, h % 24);
            let x = (h as f64 / 5.0).sin();
            let (m, day) = if d < 31 { (1, d + 1) } else { (2, d - 30) };
            format!("2020-{m:02}-{day:02} {t:02}:00:00,{x},{}\n", 2.0 * x)
        })
        .collect();
    std::fs::write(&csv, format!("date,alpha,beta\n{rows}")).unwrap();
    let args = [
        "--data",
        csv.to_str().unwrap(),
        "--iters",
        "2",
        "--samples",
        "2",
        "--steps",
        "2",
        "--max-windows",
        "1",
    ];
    let out = in_folder(tmp.path(), &[&args[..], &["train"]].concat());
    assert!(out.status.success(), "{out:?}");
    let out = in_folder(tmp.path(), &[&args[..], &["forecast"]].concat());
    assert!(out.status.success(), "{out:?}");
    let dir = tmp.path().join("out/two.csv/vsdm/forecast");
    assert!(dir.join("fan_alpha.png").is_file() && dir.join("fan_beta.png").is_file());
    let table = std::fs::read_to_string(dir.join("forecasts.csv")).unwrap();
    assert!(
        table.contains(",alpha,") && table.contains(",beta,"),
        "{table:.300}"
    );
}

/// Ctrl-C during training stops after the current update with a checkpoint (status 130), which the same command
/// then resumes.
#[test]
fn ctrl_c_leaves_a_checkpoint_to_resume() {
    if default_assets_dir().is_none() {
        eprintln!("skipped: no assets/ folder next to the crate (the bundled data set)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "--iters", "100000", "--hidden", "8", "--layers", "1", "train",
    ];
    let (seen, status) =
        vsdm_tests::interrupt_when(command(tmp.path(), &args), "training: 1/100000 steps");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("interrupted after update") && seen.contains("resumes it"),
        "{seen}"
    );
    let ckpt = tmp.path().join("out/exchange_rate/vsdm/checkpoints");
    let latest = std::fs::read_to_string(ckpt.join("latest")).unwrap();
    assert!(latest.starts_with("ckpt-"), "{latest}");
    // The same command goes on from that checkpoint (stopped again once it has).
    let mut cmd = command(tmp.path(), &args);
    cmd.env("RUST_LOG", "info");
    let (seen, status) = vsdm_tests::interrupt_when(cmd, "training: ");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("resuming from checkpoint"), "{seen}");
}
