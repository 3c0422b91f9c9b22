//! The `vsdm-image` command as a user runs it: train a very small network for a few steps, resume it, sample
//! from the exported weights, and reject bad input with a message naming it.

use std::path::Path;
use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    run_env(args, None, None)
}

/// Runs the command with `HF_HOME` (and `HF_ENDPOINT`, else offline through `HF_HUB_OFFLINE`) when given.
fn run_env(args: &[&str], hf_home: Option<&Path>, endpoint: Option<&str>) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsdm-image"));
    if let Some(h) = hf_home {
        cmd.env("HF_HOME", h).env_remove("HF_HUB_CACHE");
    }
    match endpoint {
        Some(e) => cmd.env("HF_ENDPOINT", e).env_remove("HF_HUB_OFFLINE"),
        None => cmd.env("HF_HUB_OFFLINE", "1"),
    };
    let out = cmd.args(args).output().expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A very small network, batch and sample grid.
const TINY: [&str; 8] = [
    "--channels",
    "8",
    "--batch",
    "2",
    "--grid",
    "4",
    "--grid-steps",
    "2",
];

fn png_size(p: &Path) -> (u32, u32) {
    image::image_dimensions(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn train_resume_sample() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let r = run_dir.to_str().unwrap();
    let common = [&TINY[..], &["--out", r]].concat();
    // The variational stage's budget comes from the command line: one stage after the first update, with 2
    // trajectories of 3 steps and 2 iterations of c, as the checkpoint's trainer state records.
    let stage = [
        "--block",
        "1",
        "--n-traj",
        "2",
        "--traj-steps",
        "3",
        "--a-iters",
        "2",
    ];
    let (ok, text) = run(&[
        &["train", "--method", "vsmd", "--iters", "1"][..],
        &stage,
        &common,
    ]
    .concat());
    assert!(ok, "{text}");
    assert!(text.contains("1 steps this session (now at 1/1)"), "{text}");
    // Its output is a pipe, not a terminal: progress comes as plain lines (no bar is drawn there), and the
    // lines printed above the bar are not lost.
    assert!(text.contains("training: 1/1 steps · loss "), "{text}");
    assert!(text.contains("step 1: sample grid"), "{text}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run_dir.join("ckpt/ckpt-000000001/state.json")).unwrap(),
    )
    .unwrap();
    let v = &state["config"]["variational"];
    assert_eq!((&v["n_trajectories"], &v["steps"]), (&2.into(), &3.into()));
    assert_eq!(state["a_opt_step"], 2, "one stage of 2 iterations");
    assert_eq!(
        png_size(&run_dir.join("samples/step-0000001.png")),
        (70, 70)
    );

    // A resumed run keeps the settings it was started with: a training flag is refused, naming it ...
    let (ok, text) = run(&[&["train", "--resume", "--iters", "2"][..], &common].concat());
    assert!(!ok && text.contains("drop --batch, --channels"), "{text}");
    let (ok, text) = run(&["train", "--resume", "--out", r, "--n-traj", "4"]);
    assert!(!ok && text.contains("drop --n-traj"), "{text}");
    // ... while --iters moves its end, and the run keeps its own grid settings (4 images of 2 steps).
    let resume = ["train", "--resume", "--out", r];
    let (ok, text) = run(&[&resume[..], &["--iters", "2"]].concat());
    assert!(ok, "{text}");
    assert!(
        text.contains("resumed") && text.contains("1 steps this session (now at 2/2)"),
        "{text}"
    );
    assert!(text.contains("training: 2/2 steps"), "{text}");
    assert_eq!(
        png_size(&run_dir.join("samples/step-0000002.png")),
        (70, 70)
    );
    // The metrics log has one row per update, across the two sessions.
    let metrics = std::fs::read_to_string(run_dir.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = metrics
        .lines()
        .skip(1)
        .map(|l| &l[..l.find(',').unwrap()])
        .collect();
    assert_eq!(steps, ["1", "2"], "{metrics}");
    let (ok, text) = run(&resume);
    assert!(ok && text.contains("already at 2/2 updates"), "{text}");

    let w = run_dir.join("weights");
    // --class needs a class-conditional network.
    let (ok, text) = run(&["sample", "--weights", w.to_str().unwrap(), "--class", "cat"]);
    assert!(
        !ok && text.contains("--class = cat") && text.contains("unconditional"),
        "{text}"
    );
    // The run's folder for its weights folder: pointed to the right one.
    let (ok, text) = run(&["sample", "--weights", r, "--n", "1"]);
    assert!(
        !ok && text.contains(&format!("its weights are in {}", w.display())),
        "{text}"
    );
    // Output folders that do not exist yet are created.
    let grid = dir.path().join("new/g.png");
    let npz = dir.path().join("new2/s.npz");
    let folder = dir.path().join("imgs");
    let (ok, text) = run(&[
        "sample",
        "--weights",
        w.to_str().unwrap(),
        "--n",
        "3",
        "--batch",
        "2",
        "--steps",
        "2",
        "--grid",
        grid.to_str().unwrap(),
        "--npz",
        npz.to_str().unwrap(),
        "--folder",
        folder.to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    // VSMD samples with Heun on the probability flow by default: 2 steps cost 3 evaluations.
    assert!(text.contains("NFE 3"), "{text}");
    assert!(text.contains("sampling: 3/3 images"), "{text}");
    // The weights' own file for the folder (a path copied from a listing) means the folder.
    let (ok, text) = run(&[
        "sample",
        "--weights",
        w.join("model.safetensors").to_str().unwrap(),
        "--n",
        "1",
        "--steps",
        "1",
        "--grid",
        dir.path().join("one.png").to_str().unwrap(),
    ]);
    assert!(ok, "{text}");
    assert_eq!(png_size(&grid), (70, 70));
    assert_eq!(png_size(&folder.join("000002.png")), (32, 32));
    assert!(npz.exists());

    // The same weights published on the hub, found offline in a hand-built cache: HF_HOME/hub/models--…
    let hf = dir.path().join("hf");
    let repo = hf.join("hub/models--someone--vsdm-tiny");
    let commit = "89abcdef0123456789abcdef0123456789abcdef";
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    let snap = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap).unwrap();
    for (i, f) in ["model.safetensors", "config.json", "run.json"]
        .iter()
        .enumerate()
    {
        let blob = repo.join("blobs").join(format!("b{i}"));
        std::fs::copy(w.join(f), &blob).unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/b{i}"), snap.join(f)).unwrap();
    }
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let grid2 = dir.path().join("g2.png");
    let args = [
        "sample",
        "--weights",
        "hf:someone/vsdm-tiny",
        "--n",
        "2",
        "--steps",
        "2",
        "--grid",
        grid2.to_str().unwrap(),
    ];
    let (ok, text) = run_env(&args, Some(&hf), None);
    assert!(ok, "{text}");
    assert_eq!(png_size(&grid2), (70, 36));
    let (ok, text) = run_env(
        &["--offline", "sample", "--weights", "hf:someone/other"],
        Some(&hf),
        None,
    );
    assert!(
        !ok && text.contains("not in the local Hugging Face cache (offline)")
            && text.contains("huggingface-cli download someone/other model.safetensors"),
        "{text}"
    );

    // A new run (no --resume) in the folder of a finished one is refused, naming the ways on, and leaves it
    // as it was; with --overwrite it replaces it, once set up (a bad flag leaves the old run too).
    let weights = run_dir.join("weights/model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let (ok, text) = run(&[&["train", "--iters", "1"][..], &common].concat());
    assert!(
        !ok && text.contains(
            "holds a run (ckpt-000000002): --resume continues it, --overwrite replaces it"
        ),
        "{text}"
    );
    let (ok, text) = run(&[
        &[
            "train",
            "--iters",
            "1",
            "--overwrite",
            "--data",
            "/nonexistent",
        ][..],
        &common,
    ]
    .concat());
    assert!(!ok && text.contains("/nonexistent"), "{text}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    assert!(run_dir.join("ckpt/ckpt-000000002").is_dir());
    let (ok, text) = run(&[&["train", "--iters", "1", "--overwrite"][..], &common].concat());
    assert!(ok, "{text}");
    assert!(
        text.contains("replaced the run in") && text.contains("(now at 1/1)"),
        "{text}"
    );
    assert!(!run_dir.join("ckpt/ckpt-000000002").exists());
    assert_eq!(
        vsdm_core::trainer::latest_checkpoint(&run_dir.join("ckpt")).unwrap(),
        Some("ckpt-000000001".to_string())
    );

    // Weights whose run.json contradicts the other files: another method than config.json's variational
    // parameters, or a network without the attention layers whose tensors model.safetensors holds.
    let wdir = weights.parent().unwrap();
    let spec: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wdir.join("run.json")).unwrap()).unwrap();
    for (edit, want) in [
        (
            ("method", serde_json::json!("vp")),
            "method vp contradicts config.json",
        ),
        (
            ("attn_resolutions", serde_json::json!([])),
            "tensors the U-Net of run.json has no place for",
        ),
    ] {
        let copy = dir.path().join("edited");
        std::fs::create_dir_all(&copy).unwrap();
        for f in ["model.safetensors", "config.json"] {
            std::fs::copy(wdir.join(f), copy.join(f)).unwrap();
        }
        let mut v = spec.clone();
        match edit.0 {
            "method" => v["method"] = edit.1,
            key => v["unet"][key] = edit.1,
        }
        std::fs::write(copy.join("run.json"), v.to_string()).unwrap();
        let (ok, text) = run(&["sample", "--weights", copy.to_str().unwrap(), "--n", "1"]);
        assert!(!ok && text.contains(want), "{text}");
    }

    // A variational parameter far outside any trained value (a hand edit), and weights holding NaN: refused
    // at loading, naming the file and the entry, not sampled into overflowing or NaN images.
    let copy = dir.path().join("edited-values");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["model.safetensors", "config.json", "run.json"] {
        std::fs::copy(wdir.join(f), copy.join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(wdir.join("config.json")).unwrap()).unwrap();
    cfg["params"]["Diagonal"][3] = serde_json::json!(-1e6);
    std::fs::write(copy.join("config.json"), cfg.to_string()).unwrap();
    let (ok, text) = run(&["sample", "--weights", copy.to_str().unwrap(), "--n", "1"]);
    assert!(
        !ok && text.contains("config.json")
            && text.contains("`params`")
            && text.contains("(index 3)"),
        "{text}"
    );
    std::fs::copy(wdir.join("config.json"), copy.join("config.json")).unwrap();
    let dev = candle_core::Device::Cpu;
    let mut tensors = candle_core::safetensors::load(copy.join("model.safetensors"), &dev).unwrap();
    let name = tensors.keys().min().unwrap().clone();
    let t = (&tensors[&name] * f64::NAN).unwrap();
    tensors.insert(name.clone(), t);
    candle_core::safetensors::save(&tensors, copy.join("model.safetensors")).unwrap();
    let (ok, text) = run(&["sample", "--weights", copy.to_str().unwrap(), "--n", "1"]);
    assert!(
        !ok && text.contains("model.safetensors") && text.contains(&name) && text.contains("NaN"),
        "{text}"
    );

    // Outputs that cannot be written and values that would overflow are refused before any sampling.
    for (args, want) in [
        (
            &["--npz", "/proc/x.npz"][..],
            "/proc/x.npz: cannot be written",
        ),
        (&["--grid", "x.jpg"][..], "give a .png path"),
        (
            &["--steps", "18446744073709551615"][..],
            "--steps 18446744073709551615: must be at most",
        ),
        (&["--n", "100000000"][..], "--n 100000000: must be at most"),
    ] {
        let (ok, text) = run(&[
            &[
                "sample",
                "--weights",
                weights.parent().unwrap().to_str().unwrap(),
            ][..],
            args,
        ]
        .concat());
        assert!(!ok && text.contains(want), "{args:?}: {text}");
        assert!(
            !text.contains("images with"),
            "{args:?} sampled first: {text}"
        );
    }
    for (args, want) in [
        (
            &["--batch", "18446744073709551615"][..],
            "--batch 18446744073709551615: must be at most",
        ),
        (
            &["--traj-steps", "18446744073709551615"][..],
            "--traj-steps",
        ),
        (&["--grid", "0"][..], "--grid 0: must be at least 1"),
        (&["--iters", "0"][..], "--iters 0: must be at least 1"),
    ] {
        let other = dir.path().join("other");
        let (ok, text) = run(&[&["train", "--out", other.to_str().unwrap()][..], args].concat());
        assert!(
            !ok && text.contains(want) && !text.contains("panicked"),
            "{args:?}: {text}"
        );
        assert!(!other.exists(), "{args:?} wrote {}", other.display());
    }
}

/// `--data hf:uoft-cs/cifar10`: the hub's parquet copy (here the 24-image fixture), first downloaded from a
/// loopback stand-in for the hub (`HF_ENDPOINT`), then — the server gone — found in the cache offline.
#[test]
fn train_on_hub_parquet_data() {
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf-cifar10.parquet");
    let server = vsdm_core::hub::testing::FakeHub::new("2222222222222222222222222222222222222222")
        .with_file(
            vsdm_core::hub::RepoKind::Dataset,
            "uoft-cs/cifar10",
            "main",
            "plain_text/train-00000-of-00001.parquet",
            std::fs::read(&fixture).unwrap(),
        )
        .start()
        .unwrap();
    let out = dir.path().join("run");
    let head = ["train", "--data", "hf:uoft-cs/cifar10", "--iters", "1"];
    let args = [&head[..], &TINY, &["--out", out.to_str().unwrap()]].concat();
    let (ok, text) = run_env(&args, Some(&hf), Some(server.endpoint()));
    assert!(ok, "{text}");
    assert!(
        text.contains("on 24 images from hf:uoft-cs/cifar10"),
        "{text}"
    );
    let cached = hf.join("hub/datasets--uoft-cs--cifar10/snapshots/2222222222222222222222222222222222222222/plain_text/train-00000-of-00001.parquet");
    assert_eq!(
        std::fs::read(&cached).unwrap(),
        std::fs::read(&fixture).unwrap()
    );
    drop(server);
    std::fs::remove_dir_all(&out).unwrap();
    let (ok, text) = run_env(&[&["--offline"][..], &args].concat(), Some(&hf), None);
    assert!(ok, "{text}");
    // HF_HUB_CACHE takes precedence over HF_HOME.
    std::fs::remove_dir_all(&out).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vsdm-image"))
        .env("HF_HUB_CACHE", hf.join("hub"))
        .env("HF_HOME", dir.path().join("elsewhere"))
        .env("HF_HUB_OFFLINE", "1")
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Offline, a revision that is not cached names the expected path.
    let (ok, text) = run_env(
        &[
            "train",
            "--data",
            "hf:uoft-cs/cifar10@v9",
            "--out",
            dir.path().join("run2").to_str().unwrap(),
        ],
        Some(&hf),
        None,
    );
    assert!(
        !ok && text.contains("datasets--uoft-cs--cifar10/refs/v9"),
        "{text}"
    );
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("data_batch_1.bin");
    std::fs::write(&bad, [0u8; 100]).unwrap();
    let out = dir.path().join("run");
    let (ok, text) = run(&[
        "train",
        "--data",
        dir.path().to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        text.contains("data_batch_1.bin") && text.contains("100 bytes"),
        "{text}"
    );

    let (ok, text) = run(&["train", "--method", "ddim"]);
    assert!(!ok && text.contains("ddim"), "{text}");
    let (ok, text) = run(&["train", "--arch", "huge", "--out", out.to_str().unwrap()]);
    assert!(!ok && text.contains("huge"), "{text}");
    let (ok, text) = run(&["sample", "--weights", dir.path().to_str().unwrap()]);
    assert!(!ok && text.contains("model.safetensors"), "{text}");
    let (ok, text) = run(&["sample", "--weights", bad.to_str().unwrap()]);
    assert!(
        !ok && text.contains("data_batch_1.bin: a file, not a weights folder"),
        "{text}"
    );
    // bf16 training needs a GPU: said before any work starts, naming the flag.
    let (ok, text) = run(&[
        "train",
        "--precision",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        !ok && text.contains("--precision") && text.contains("--cuda"),
        "{text}"
    );
    let (ok, text) = run(&["train", "--precision", "f8"]);
    assert!(!ok && text.contains("f8"), "{text}");
    let o = out.to_str().unwrap();
    let (ok, text) = run(&["train", "--n-traj", "0", "--out", o]);
    assert!(!ok && text.contains("--n-traj 0"), "{text}");
    let wd = dir.path().to_str().unwrap();
    for args in [
        &["sample", "--weights", wd, "--n", "0"][..],
        &["sample", "--weights", wd, "--batch", "0"][..],
        &["bench", "--arch", "tiny", "--batch", "0"][..],
        &["bench", "--arch", "tiny", "--iters", "0"][..],
        &["check-device", "--arch", "tiny", "--steps", "0"][..],
    ] {
        let (ok, text) = run(args);
        let flag = args[args.len() - 2];
        assert!(
            !ok && text.contains(&format!("{flag} 0")),
            "{args:?}: {text}"
        );
    }
    // cuDNN's algorithm choice applies to --conv cudnn only; an unknown choice is named.
    let (ok, text) = run(&["--cudnn-algo", "find", "bench", "--arch", "tiny"]);
    assert!(
        !ok && text.contains("--cudnn-algo find") && text.contains("--conv cudnn"),
        "{text}"
    );
    let (ok, text) = run(&["--cudnn-algo", "fastest", "bench"]);
    assert!(!ok && text.contains("fastest"), "{text}");
    let (ok, text) = run(&["train", "--a-iters", "0", "--out", o]);
    assert!(!ok && text.contains("--a-iters 0"), "{text}");
    for (flag, v) in [
        ("--lr", "5"),
        ("--lr", "0"),
        ("--lr", "-1"),
        ("--ema", "1"),
        ("--zeta", "3"),
        ("--a-lr", "0"),
        ("--a-ema", "1.5"),
        ("--kappa", "0"),
        ("--kappa", "9"),
    ] {
        let (ok, text) = run(&["train", flag, v, "--out", o]);
        assert!(
            !ok && text.contains(&format!("{flag} {v}")),
            "{flag} {v}: {text}"
        );
    }
    // A negative count is named as a value of its flag (clap took it for an unknown flag before).
    for args in [
        &["train", "--out", o, "--iters", "-5"][..],
        &["train", "--out", o, "--sample-every", "-1"][..],
        &["sample", "--weights", wd, "--n", "-2"][..],
        &["bench", "--arch", "tiny", "--batch", "-4"][..],
    ] {
        let (ok, text) = run(args);
        let (flag, v) = (args[args.len() - 2], args[args.len() - 1]);
        assert!(
            !ok && text.contains(&format!("invalid value '{v}' for '{flag} ")),
            "{args:?}: {text}"
        );
    }
    // The variational stage's estimator and ζ, as in the time-series and shapes programs: kept in the
    // weights' configuration; a resumed run refuses to be given them again.
    let v = dir.path().join("debiased");
    let vs = v.to_str().unwrap();
    let tiny = [
        "--iters",
        "2",
        "--block",
        "1",
        "--n-traj",
        "2",
        "--traj-steps",
        "2",
        "--a-iters",
        "1",
        "--sample-every",
        "0",
        "--grid",
        "1",
        "--grid-steps",
        "1",
        "--out",
        vs,
    ];
    let (ok, text) = run(&[&["train", "--debias", "true", "--zeta", "1"][..], &tiny[..]].concat());
    assert!(ok, "{text}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(v.join("weights/config.json")).unwrap())
            .unwrap();
    let var = &cfg["config"]["variational"];
    assert!(var["debias"] == true && var["zeta"] == 1.0, "{var}");
    let (ok, text) = run(&["train", "--resume", "--debias", "false", "--out", vs]);
    assert!(!ok && text.contains("drop --debias"), "{text}");
    // VSMD's damping ratio and the variational rate and EMA: kept in the weights' configuration and used by
    // the sampler that reads them; κ is refused for the other methods.
    let (ok, text) = run(&["train", "--method", "vp", "--a-lr", "1e-3", "--out", o]);
    assert!(
        !ok && text.contains("--a-lr") && text.contains("VP"),
        "{text}"
    );
    let (ok, text) = run(&["train", "--method", "vsdm", "--kappa", "0.9", "--out", o]);
    assert!(
        !ok && text.contains("--kappa 0.9") && text.contains("vsmd"),
        "{text}"
    );
    let k = dir.path().join("under");
    let mut under = tiny.to_vec();
    *under.last_mut().unwrap() = k.to_str().unwrap();
    let (ok, text) = run(&[
        &[
            "train", "--method", "vsmd", "--kappa", "0.9", "--a-lr", "1e-3", "--a-ema", "0.5",
        ][..],
        &under[..],
    ]
    .concat());
    assert!(ok, "{text}");
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(k.join("weights/config.json")).unwrap())
            .unwrap();
    let c = &cfg["config"];
    assert!(
        c["init"]["Momentum"]["params"]["kappa"] == 0.9
            && c["variational"]["adam"]["lr"] == 1e-3
            && c["variational"]["ema_decay"] == 0.5,
        "{c}"
    );
    let grid = dir.path().join("under.png");
    let (ok, text) = run(&[
        "sample",
        "--weights",
        k.join("weights").to_str().unwrap(),
        "--n",
        "2",
        "--steps",
        "2",
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(ok && grid.is_file(), "{text}");
    let (ok, text) = run(&[
        "train",
        "--resume",
        "--kappa",
        "1",
        "--out",
        k.to_str().unwrap(),
    ]);
    assert!(!ok && text.contains("drop --kappa"), "{text}");
    // An output folder that is a file: named before any data is read.
    let (ok, text) = run(&["train", "--out", bad.to_str().unwrap()]);
    assert!(
        !ok && text.contains("--out") && text.contains("a file, not a folder"),
        "{text}"
    );

    for m in ["nan", "0", "-2"] {
        let (ok, text) = run(&["train", &format!("--minutes={m}"), "--out", o]);
        assert!(!ok && text.contains("--minutes"), "{m}: {text}");
    }
}

/// A resumed run goes on with the images it was started on (recorded in `run.json`), not the bundled subset;
/// Ctrl-C stops after the current update with a checkpoint (status 130) that `--resume` continues; a folder
/// whose run stopped before its first checkpoint is not offered to `--resume`.
#[test]
fn resume_keeps_its_data_and_ctrl_c_leaves_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // Four 32×32 images in two class folders.
    let data = dir.path().join("imgs");
    for (class, shade) in [("cat", 40u8), ("dog", 200)] {
        std::fs::create_dir_all(data.join(class)).unwrap();
        for i in 0..2u8 {
            let img = image::RgbImage::from_pixel(32, 32, image::Rgb([shade, 30 * i, 90]));
            img.save(data.join(class).join(format!("{i}.png"))).unwrap();
        }
    }
    let run_dir = dir.path().join("run");
    let r = run_dir.to_str().unwrap();
    let small = [&TINY[..], &["--sample-every", "0", "--out", r]].concat();
    let d = data.to_str().unwrap();
    let (ok, text) = run(&[&["train", "--iters", "1", "--data", d][..], &small].concat());
    assert!(
        ok && text.contains(&format!("on 4 images from {d}")),
        "{text}"
    );
    // The run folder records the images; the weights to publish do not carry this machine's paths.
    let recorded = std::fs::read_to_string(run_dir.join("run.json")).unwrap();
    let published = std::fs::read_to_string(run_dir.join("weights/run.json")).unwrap();
    assert!(
        recorded.contains(d) && !published.contains(d),
        "{published}"
    );
    let (ok, text) = run(&[
        "train",
        "--resume",
        "--iters",
        "2",
        "--out",
        r,
        "--grid",
        "4",
        "--grid-steps",
        "2",
    ]);
    assert!(
        ok && text.contains(&format!("on 4 images from {d}")) && text.contains("now at 2/2"),
        "{text}"
    );

    // A class-conditional network samples one class on request (by name or number).
    let cond = dir.path().join("cond");
    let c = cond.to_str().unwrap();
    let (ok, text) = run(&[
        &["train", "--conditional", "--iters", "1"][..],
        &TINY[..],
        &["--sample-every", "0", "--out", c],
    ]
    .concat());
    assert!(ok, "{text}");
    let grid = dir.path().join("dogs.png");
    let cw = cond.join("weights");
    let sample = |class: &str| {
        run(&[
            "sample",
            "--weights",
            cw.to_str().unwrap(),
            "--n",
            "2",
            "--steps",
            "2",
            "--class",
            class,
            "--grid",
            grid.to_str().unwrap(),
        ])
    };
    let (ok, text) = sample("dog");
    assert!(ok && grid.is_file(), "{text}");
    let (ok, text) = sample("10");
    assert!(
        !ok && text.contains("--class = 10") && text.contains("below 10"),
        "{text}"
    );

    // Ctrl-C once the first update is reported (stderr is a pipe: plain progress lines).
    let ctrl = dir.path().join("ctrl");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsdm-image"));
    cmd.args([&["train", "--iters", "100000", "--data", d][..], &TINY[..]].concat())
        .args(["--sample-every", "0", "--ckpt-every", "0", "--out"])
        .arg(&ctrl)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "info");
    let (seen, status) = vsdm_tests::interrupt_when(cmd, "training: 1/100000 steps");
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("interrupted after"), "{seen}");
    // A pipe gets plain log lines: no terminal colour codes.
    assert!(
        seen.contains(" INFO ") && !seen.contains('\u{1b}'),
        "{seen:?}"
    );
    let latest = std::fs::read_to_string(ctrl.join("ckpt/latest")).unwrap();
    assert!(latest.starts_with("ckpt-"), "{latest}");
    assert!(ctrl.join("weights/model.safetensors").is_file());
    let c = ctrl.to_str().unwrap();
    let (ok, text) = run(&["train", "--resume", "--out", c, "--minutes", "0.001"]);
    assert!(ok && text.contains("resumed"), "{text}");
    // A run whose planned last update also meets the limit ends as planned, not "at the time limit".
    let done = dir.path().join("done");
    let d = done.to_str().unwrap();
    let one = [
        "train",
        "--iters",
        "1",
        "--minutes",
        "0.001",
        "--grid",
        "1",
        "--grid-steps",
        "1",
        "--out",
        d,
    ];
    let (ok, text) = run(&one);
    assert!(ok && !text.contains("time limit reached"), "{text}");
    assert!(text.contains("1 steps this session (now at 1/1)"), "{text}");

    // A run stopped before its first checkpoint: --overwrite is the way out, not --resume.
    let early = dir.path().join("early");
    std::fs::create_dir_all(&early).unwrap();
    std::fs::copy(run_dir.join("run.json"), early.join("run.json")).unwrap();
    let e = early.to_str().unwrap();
    let (ok, text) = run(&["train", "--out", e]);
    assert!(
        !ok && text.contains("stopped before its first checkpoint") && text.contains("--overwrite"),
        "{text}"
    );
    let (ok, text) = run(&["train", "--resume", "--out", e]);
    assert!(!ok && text.contains("nothing to resume"), "{text}");
}

/// `fid` finds the Inception weights where `vsdm-eval` does when `--inception` is not given
/// ($VSDM_FID_WEIGHTS, else the cache), and a missing file is named with the command that creates it.
#[test]
fn fid_finds_the_inception_weights_as_vsdm_eval_does() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("ref");
    std::fs::create_dir_all(&reference).unwrap();
    for i in 0..2u8 {
        image::RgbImage::from_pixel(32, 32, image::Rgb([i * 100, 50, 50]))
            .save(reference.join(format!("{i}.png")))
            .unwrap();
    }
    let fid = |env: &[(&str, &Path)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vsdm-image"));
        cmd.env_remove("VSDM_FID_WEIGHTS")
            .env("HF_HUB_OFFLINE", "1")
            .args(["fid", "--weights", "w", "--n", "2", "--reference"])
            .arg(&reference);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let named = dir.path().join("named.safetensors");
    let e = fid(&[("VSDM_FID_WEIGHTS", &named)]);
    assert!(
        e.contains(&named.display().to_string()) && e.contains("vsdm-eval convert"),
        "{e}"
    );
    let cache = dir.path().join("cache");
    let e = fid(&[("XDG_CACHE_HOME", &cache)]);
    let want = cache.join("vsdm/inception_fid.safetensors");
    assert!(e.contains(&want.display().to_string()), "{e}");
    // A relative XDG_CACHE_HOME is ignored (XDG): the home's cache.
    let e = fid(&[("XDG_CACHE_HOME", Path::new("rel")), ("HOME", dir.path())]);
    let want = dir.path().join(".cache/vsdm/inception_fid.safetensors");
    assert!(e.contains(&want.display().to_string()), "{e}");
}
