use std::path::{Path, PathBuf};

use candle_core::Device;
use vsdm_core::{DataSource, NoiseRng};

use super::*;
use crate::error::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The bundled 1000-image training subset (100 per class), decoded from the JPEG set by Pillow.
pub(crate) fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../assets/image/cifar10-train-1000.bin")
}

/// Mean brightness of the top 8 rows minus the bottom 8, and of the left 8 columns minus the right 8, over the
/// images of the given classes.
fn contrasts(set: &ImageSet, classes: &[u8]) -> (f64, f64) {
    let (mut tb, mut lr, mut n) = (0.0, 0.0, 0.0);
    for i in (0..set.len()).filter(|&i| classes.contains(&set.labels[i])) {
        let img = set.image(i);
        let px = |c: usize, y: usize, x: usize| img[c * 1024 + y * 32 + x] as f64;
        for c in 0..3 {
            for a in 0..8 {
                for b in 0..32 {
                    tb += px(c, a, b) - px(c, 31 - a, b);
                    lr += px(c, b, a) - px(c, b, 31 - a);
                }
            }
        }
        n += 3.0 * 8.0 * 32.0;
    }
    (tb / n, lr / n)
}

/// Real photographs of airplanes, ships and trucks have bright sky at the top; a loader that swapped height and
/// width (as candle-datasets' hub loader does) would move that contrast to the left–right axis.
fn assert_upright(set: &ImageSet) {
    let (tb, lr) = contrasts(set, &[0, 8, 9]);
    assert!(
        tb > 20.0 && lr.abs() < 6.0,
        "top−bottom {tb:.1}, left−right {lr:.1}"
    );
}

#[test]
fn folder_loader_agrees_with_pillow() {
    let set = load_folder(&fixtures().join("folder")).unwrap();
    let pil = load_binary_files(&[fixtures().join("folder-pil.bin")]).unwrap();
    assert_eq!(set.classes, ["airplane", "ship"]);
    assert_eq!(set.labels, [0, 0, 1, 1]);
    assert_eq!(set.labels, pil.labels);
    // The PNG is lossless: bit-identical.
    assert_eq!(set.image(3), pil.image(3));
    // JPEG decoders may differ by rounding in the IDCT and colour conversion.
    for i in 0..3 {
        let d: Vec<i32> = set
            .image(i)
            .iter()
            .zip(pil.image(i))
            .map(|(&a, &b)| (a as i32 - b as i32).abs())
            .collect();
        let max = *d.iter().max().unwrap();
        let mean = d.iter().sum::<i32>() as f64 / d.len() as f64;
        assert!(max <= 8 && mean < 1.5, "image {i}: max {max}, mean {mean}");
    }
}

#[test]
fn corrupt_or_wrong_sized_images_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cls = dir.path().join("cat");
    std::fs::create_dir(&cls).unwrap();
    let bad = cls.join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let e = load_folder(dir.path()).unwrap_err();
    assert!(
        matches!(e, Error::BadFile { ref path, .. } if path == &bad),
        "{e}"
    );
    std::fs::remove_file(&bad).unwrap();

    let big = cls.join("big.png");
    image::RgbImage::new(16, 40).save(&big).unwrap();
    let e = load_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("big.png") && e.contains("16×40"), "{e}");

    let empty = tempfile::tempdir().unwrap();
    let e = load_folder(empty.path()).unwrap_err().to_string();
    assert!(e.contains("no class sub-folders"), "{e}");
    assert!(open(&empty.path().join("missing")).is_err());
}

#[test]
fn binary_batches_round_trip_and_bad_sizes_are_named() {
    let set = load_folder(&fixtures().join("folder")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("data_batch_1.bin");
    write_binary(&set, &p).unwrap();
    let back = open(dir.path()).unwrap();
    assert_eq!(back.pixels, set.pixels);
    assert_eq!(back.labels, set.labels);

    let short = dir.path().join("data_batch_2.bin");
    std::fs::write(&short, vec![0u8; RECORD_BYTES * 2 - 5]).unwrap();
    let e = load_binary_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("data_batch_2.bin") && e.contains("6141 bytes"),
        "{e}"
    );

    let mut bad_label = vec![0u8; RECORD_BYTES];
    bad_label[0] = 12;
    std::fs::write(&short, bad_label).unwrap();
    let e = load_binary_dir(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains("data_batch_2.bin") && e.contains("label 12"),
        "{e}"
    );
}

#[test]
fn bundled_subset_is_real_and_upright() {
    let set = open(&bundled()).unwrap();
    assert_eq!(set.len(), 1000);
    for c in 0..10u8 {
        assert_eq!(set.labels.iter().filter(|&&l| l == c).count(), 100);
    }
    assert_upright(&set);
    // Pixel statistics of CIFAR-10 (per-channel means 125.3, 123.0, 113.9 over the full training set).
    let means: Vec<f64> = (0..3)
        .map(|c| {
            let s: f64 = (0..set.len())
                .map(|i| {
                    set.image(i)[c * 1024..(c + 1) * 1024]
                        .iter()
                        .map(|&p| p as f64)
                        .sum::<f64>()
                })
                .sum();
            s / (set.len() * 1024) as f64
        })
        .collect();
    for (m, want) in means.iter().zip([125.3, 123.0, 113.9]) {
        assert!((m - want).abs() < 6.0, "channel means {means:?}");
    }
}

#[test]
fn source_flips_and_scales() {
    let set = load_folder(&fixtures().join("folder")).unwrap().take(1);
    let img: Vec<f32> = set.image(0).iter().map(|&p| to_unit(p)).collect();
    let mirrored: Vec<f32> = img
        .chunks_exact(32)
        .flat_map(|row| row.iter().rev().copied())
        .collect();
    assert_ne!(img, mirrored);
    let mut src = CifarSource::new(set.clone(), true, true).unwrap();
    let mut rng = NoiseRng::new(5);
    let (x, cond) = src.next_batch(64, &mut rng, &Device::Cpu).unwrap();
    assert_eq!(x.dims(), &[64, 3, 32, 32]);
    assert_eq!(cond.unwrap().to_vec2::<f32>().unwrap()[7], [1.0, 0.0]);
    let rows = x.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    let flipped = rows.iter().filter(|r| **r == mirrored).count();
    let plain = rows.iter().filter(|r| **r == img).count();
    assert_eq!(flipped + plain, 64);
    assert!(
        flipped > 16 && plain > 16,
        "{flipped} flipped, {plain} plain"
    );
    let (lo, hi) = rows
        .iter()
        .flatten()
        .fold((1f32, -1f32), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(
        lo >= -1.0 && hi <= 1.0 && lo < -0.5 && hi > 0.5,
        "{lo} {hi}"
    );

    let mut src = CifarSource::new(set, false, false).unwrap();
    let (x, cond) = src.next_batch(8, &mut rng, &Device::Cpu).unwrap();
    assert!(cond.is_none());
    let rows = x.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    assert!(rows.iter().all(|r| *r == img));
}

/// The full JPEG set from the shared data folder (skipped when absent): the folder loader reads all 10,000 test
/// images upright, and its decode of the training JPEGs agrees with Pillow's (the bundled subset).
#[test]
fn full_jpeg_set_when_available() {
    let tarball = Path::new("/work/shared/data/cifar10/cifar10-jpeg-q75.tar.gz");
    if !tarball.exists() {
        eprintln!("skipped: {} is absent", tarball.display());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::open(tarball).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    for entry in ar.entries().unwrap() {
        let mut e = entry.unwrap();
        let p = e.path().unwrap().to_path_buf();
        let keep = p.starts_with("test")
            || (p.starts_with("train")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().as_ref() < "0100.jpg"));
        if keep {
            e.unpack_in(dir.path()).unwrap();
        }
    }
    let test = load_folder(&dir.path().join("test")).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.classes, CIFAR10_CLASSES);
    assert_upright(&test);
    let train = open(dir.path()).unwrap();
    let pil = open(&bundled()).unwrap();
    assert_eq!(train.labels, pil.labels);
    let diff: u64 = train
        .pixels
        .iter()
        .zip(&pil.pixels)
        .map(|(&a, &b)| (a as i64 - b as i64).unsigned_abs())
        .sum();
    let mean = diff as f64 / train.pixels.len() as f64;
    assert!(mean < 1.0, "mean |Δ| between decoders {mean}");
}
