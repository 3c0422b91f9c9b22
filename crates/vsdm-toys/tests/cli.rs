//! The smoke version of `vsdm-toys shapes`, run as a user would, end to end (< 1 minute).

use std::process::Command;

#[test]
fn smoke_run_writes_the_report_and_pngs() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vsdm-toys"))
        .args([
            "shapes",
            "--smoke",
            "--seeds",
            "2",
            "--first-seed",
            "1",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let md = std::fs::read_to_string(dir.path().join("shapes.md")).unwrap();
    for label in [
        "VP β10",
        "VSDM β10",
        "VP β20",
        "VSDM β20",
        "CLD",
        "VSMD",
        "VSMD κ=0.9",
    ] {
        assert!(
            md.contains(&format!("| {label} | 100 |")),
            "missing {label} in\n{md}"
        );
    }
    assert!(md.contains("Gaussian-bridge check") && md.contains("## The claims"));
    assert!(md.contains("Seeds [1, 2]"), "{md}");
    assert!(md.contains("**A smoke run**"), "{md}");
    assert!(!md.contains("NaN"), "{md}");
    for f in ["spiral-vsdm10-samples.png", "checkerboard-vsmd-paths.png"] {
        let png = std::fs::read(dir.path().join("shapes").join(f)).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{f}");
    }
}

#[test]
fn bad_flags_are_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_vsdm-toys"))
        .args(["shapes", "--seeds", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--seeds"));
    let out = Command::new(env!("CARGO_BIN_EXE_vsdm-toys"))
        .args(["shapes", "--shape", "moons"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("moons"));
    // Refused before any work (no report, no PNG folder), naming the flag and the value.
    for (flag, want) in [
        ("--iters=0", "--iters 0"),
        ("--hidden=0", "--hidden 0"),
        ("--a-lr=-1", "--a-lr -1"),
        ("--gaussian-lr=NaN", "--gaussian-lr NaN"),
        (
            "--gaussian-lr=1e30",
            "--gaussian-lr 1000000000000000000000000000000",
        ),
        ("--method vp10 vp10", "--method vp10: given twice"),
        (
            "--shape gaussian spiral gaussian",
            "--shape gaussian: given twice",
        ),
        ("--zeta=3", "--zeta 3"),
        (
            "--hidden=18446744073709551612",
            "--hidden 18446744073709551612: must be at most",
        ),
        ("--first-seed=18446744073709551615", "past the largest seed"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut words = flag.split(' ');
        let out = Command::new(env!("CARGO_BIN_EXE_vsdm-toys"))
            .args(["shapes", "--smoke"])
            .args(words.next())
            .args(words)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(want),
            "{flag}: {stderr}"
        );
        assert!(
            !dir.path().join("shapes").exists(),
            "{flag}: work was started"
        );
    }
    // An output folder that is a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report");
    std::fs::write(&file, b"a file").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vsdm-toys"))
        .args(["shapes", "--smoke", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains("--out")
            && stderr.contains("a file, not a folder"),
        "{stderr}"
    );
}
