//! From training to a FID across two programs, as the READMEs chain them: `vsdm-image train` → `vsdm-image
//! sample --npz --folder` → `vsdm-eval pack` of the PNG folder gives the same `.npz` → `vsdm-eval fid` of the
//! two is 0 (when the Inception weights are on this machine; skipped with a printed reason otherwise).

use std::path::Path;
use std::process::Command;

/// Runs a program, which must succeed; returns its standard output.
fn run(bin: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} {args:?}: {stdout}{}",
        bin.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn samples_travel_from_vsdm_image_to_vsdm_eval() {
    let (Some(image), Some(eval)) = (
        vsdm_tests::binary("vsdm-image"),
        vsdm_tests::binary("vsdm-eval"),
    ) else {
        println!("skipped: no vsdm-image or vsdm-eval binary beside the tests (run `cargo test --workspace`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).display().to_string();
    run(
        &image,
        &[
            "train",
            "--iters",
            "1",
            "--channels",
            "8",
            "--batch",
            "2",
            "--grid",
            "1",
            "--grid-steps",
            "1",
            "--sample-every",
            "0",
            "--out",
            &p("run"),
        ],
    );
    run(
        &image,
        &[
            "sample",
            "--weights",
            &p("run/weights"),
            "--n",
            "3",
            "--steps",
            "2",
            "--grid",
            &p("grid.png"),
            "--npz",
            &p("samples.npz"),
            "--folder",
            &p("pngs"),
        ],
    );
    let pngs = std::fs::read_dir(dir.path().join("pngs")).unwrap().count();
    assert_eq!(pngs, 3);
    // The PNG folder packed by the other program: the same images, the same file.
    run(&eval, &["pack", &p("pngs"), "--npz", &p("packed.npz")]);
    assert_eq!(
        std::fs::read(dir.path().join("samples.npz")).unwrap(),
        std::fs::read(dir.path().join("packed.npz")).unwrap(),
        "the sampler's npz and the packed PNG folder differ"
    );
    let weights = vsdm_eval::fid::default_weights_path();
    if !weights.is_file() {
        println!(
            "FID step skipped: no Inception weights at {} (vsdm-eval convert makes them)",
            weights.display()
        );
        return;
    }
    let out = run(
        &eval,
        &["fid", "--real", &p("samples.npz"), "--fake", &p("pngs")],
    );
    let fid: f64 = out.trim().lines().last().unwrap().parse().unwrap();
    // 0 up to rounding: three images leave 2,046 of the 2,048 covariance eigenvalues at rounding noise.
    assert!(
        fid.is_finite() && fid.abs() < 0.1,
        "FID of a set against itself: {fid}"
    );
}
