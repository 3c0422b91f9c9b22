use std::path::{Path, PathBuf};

use candle_core::Device;
use vsdm_core::hub::{Hub, HubRef};
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

    // A real CIFAR-10 JPEG cut short: the decoder alone would fill the missing scan with grey.
    let real = std::fs::read_dir(fixtures().join("folder"))
        .unwrap()
        .flatten()
        .flat_map(|d| std::fs::read_dir(d.path()).unwrap().flatten())
        .map(|f| f.path())
        .find(|p| p.extension().is_some_and(|e| e == "jpg"))
        .unwrap();
    let bytes = std::fs::read(&real).unwrap();
    let cut = cls.join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 7 / 10]).unwrap();
    let e = load_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("cut.jpg") && e.contains("truncated JPEG"), "{e}");
    std::fs::write(&cut, &bytes).unwrap();
    assert_eq!(load_folder(dir.path()).unwrap().len(), 1);
    // A link to an image that is gone is named, not skipped.
    let link = cls.join("moved.jpg");
    std::os::unix::fs::symlink(dir.path().join("nowhere.jpg"), &link).unwrap();
    let e = load_folder(dir.path()).unwrap_err().to_string();
    assert!(e.contains("moved.jpg") && e.contains("broken link"), "{e}");
    std::fs::remove_file(&link).unwrap();
    std::fs::remove_file(&cut).unwrap();

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
    // Only `data_batch_*.bin` are training batches: the test batch, checksums and notes beside them are not.
    std::fs::remove_file(&short).unwrap();
    for other in [
        "test_batch.bin",
        "data_batch_1.bin.md5",
        "data_batch_notes.txt",
    ] {
        std::fs::write(dir.path().join(other), b"not a batch").unwrap();
    }
    assert_eq!(open(dir.path()).unwrap(), back);
}

/// Files without a PNG or JPEG extension (any case) are skipped, not decoded; a 32-wide image of another height
/// is named like any other size.
#[test]
fn folders_skip_other_files_and_name_each_wrong_side() {
    let dir = tempfile::tempdir().unwrap();
    let cls = dir.path().join("cat");
    std::fs::create_dir(&cls).unwrap();
    let mut img = image::RgbImage::new(32, 32);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([x as u8 * 8, y as u8 * 8, 7]);
    }
    img.save_with_format(cls.join("a.PNG"), image::ImageFormat::Png)
        .unwrap();
    std::fs::write(cls.join("notes.txt"), b"not an image").unwrap();
    std::fs::write(cls.join("labels"), b"not an image either").unwrap();
    let set = load_folder(dir.path()).unwrap();
    assert_eq!(
        (set.len(), set.classes.as_slice()),
        (1, &["cat".to_string()][..])
    );
    // Red rises along a row, green down the picture.
    let px = |c: usize, y: usize, x: usize| set.image(0)[c * 1024 + y * 32 + x];
    assert_eq!((px(0, 3, 5), px(1, 3, 5), px(2, 3, 5)), (40, 24, 7));
    for (w, h) in [(32, 40), (40, 32)] {
        let odd = cls.join("odd.png");
        image::RgbImage::new(w, h).save(&odd).unwrap();
        let e = load_folder(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("odd.png") && e.contains(&format!("{w}×{h}")),
            "{e}"
        );
    }
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

/// The hub's parquet copy of CIFAR-10, in miniature: 24 real test images (airplanes, ships and trucks first, one
/// of most other classes) written by `scripts/hf_parquet_fixture.py` in the schema of `uoft-cs/cifar10`, with
/// Pillow's decode of the same source images beside it.
fn hf_fixture() -> (PathBuf, ImageSet) {
    let pil = load_binary_files(&[fixtures().join("hf-cifar10-pil.bin")]).unwrap();
    (fixtures().join("hf-cifar10.parquet"), pil)
}

/// Every image of `set` with rows and columns swapped, as a loader that confused height and width would give.
fn transposed(set: &ImageSet) -> ImageSet {
    let mut t = set.clone();
    for i in 0..set.len() {
        let img = set.image(i);
        let out = &mut t.pixels[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES];
        for c in 0..3 {
            for y in 0..SIDE {
                for x in 0..SIDE {
                    out[c * 1024 + y * SIDE + x] = img[c * 1024 + x * SIDE + y];
                }
            }
        }
    }
    t
}

#[test]
fn hub_parquet_equals_pillow_upright_and_not_transposed() {
    let (path, pil) = hf_fixture();
    let set = load_parquet(&path).unwrap();
    assert_eq!(set.len(), 24);
    assert_eq!(set.classes, CIFAR10_CLASSES);
    assert_eq!(&set.labels[..10], [0, 8, 9, 1, 2, 3, 4, 5, 7, 0]);
    assert_eq!(set.labels, pil.labels);
    // The PNG bytes are lossless: bit-identical to Pillow's decode of the source images.
    assert_eq!(set.pixels, pil.pixels);
    assert_upright(&set);
    // The transpose (height and width swapped) is a different picture for every image, and it moves the
    // sky to the left edge.
    let t = transposed(&set);
    for i in 0..set.len() {
        assert_ne!(set.image(i), t.image(i), "image {i} is symmetric");
    }
    let (tb, lr) = contrasts(&t, &[0, 8, 9]);
    assert!(
        lr > 20.0 && tb.abs() < 6.0,
        "transposed: top−bottom {tb:.1}, left−right {lr:.1}"
    );
    // `open` recognises a .parquet file.
    assert_eq!(open(&path).unwrap(), set);
    // Shards concatenate.
    let two = load_parquet_files(&[path.clone(), path]).unwrap();
    assert_eq!(two.len(), 48);
    assert_eq!(two.image(24), set.image(0));
}

/// Builds `<cache>/datasets--uoft-cs--cifar10` by hand as `huggingface-cli download` leaves it: the fixture as a
/// blob, linked from `snapshots/<commit>/<file>`, with `refs/<rev>` naming the commit.
fn hand_built_dataset_cache(cache: &Path, rev: &str, commit: &str, file: &str) {
    let repo = cache.join("datasets--uoft-cs--cifar10");
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::copy(fixtures().join("hf-cifar10.parquet"), repo.join("blobs/f0")).unwrap();
    let link = repo.join("snapshots").join(commit).join(file);
    std::fs::create_dir_all(link.parent().unwrap()).unwrap();
    let up = "../".repeat(Path::new(file).components().count() + 1);
    std::os::unix::fs::symlink(format!("{up}blobs/f0"), &link).unwrap();
    let r = repo.join("refs").join(rev);
    std::fs::create_dir_all(r.parent().unwrap()).unwrap();
    std::fs::write(r, commit).unwrap();
}

#[test]
fn hub_parquet_from_a_hand_built_cache_offline() {
    let (path, _) = hf_fixture();
    let want = load_parquet(&path).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let hub = Hub::new(cache.path(), None);
    hand_built_dataset_cache(
        cache.path(),
        "main",
        "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        "plain_text/train-00000-of-00001.parquet",
    );
    let set = open_source("hf:uoft-cs/cifar10", &hub, Split::Train).unwrap();
    assert_eq!(set, want);
    // candle-datasets' revision and layout.
    hand_built_dataset_cache(
        cache.path(),
        "refs/convert/parquet",
        "6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b6b",
        "plain_text/test/0000.parquet",
    );
    let set = open_source("hf:uoft-cs/cifar10@refs/convert/parquet", &hub, Split::Test).unwrap();
    assert_eq!(set, want);
    // The test split is not on main: the error names both layouts' files and how to fetch them.
    let e = open_source("hf:uoft-cs/cifar10", &hub, Split::Test)
        .map(|s| s.len())
        .unwrap_err()
        .to_string();
    for want in [
        "hf:uoft-cs/cifar10@main (dataset repository)",
        "plain_text/test-00000-of-00001.parquet is not in the local Hugging Face cache (offline)",
        "plain_text/test/0000.parquet",
        "huggingface-cli download --repo-type dataset uoft-cs/cifar10 plain_text/test-00000-of-00001.parquet",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
    let e = open_source("hf:uoft-cs", &hub, Split::Train)
        .map(|s| s.len())
        .unwrap_err()
        .to_string();
    assert!(e.contains("hf:uoft-cs") && e.contains("OWNER/NAME"), "{e}");
}

#[test]
fn hub_parquet_downloads_into_the_cache() {
    let (path, _) = hf_fixture();
    let want = load_parquet(&path).unwrap();
    let server = vsdm_core::hub::testing::FakeHub::new("1111111111111111111111111111111111111111")
        .with_file(
            vsdm_core::hub::RepoKind::Dataset,
            CIFAR10_REPO,
            "main",
            "plain_text/train-00000-of-00001.parquet",
            std::fs::read(&path).unwrap(),
        )
        .start()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let r: HubRef = "hf:uoft-cs/cifar10".parse().unwrap();
    let online = Hub::new(cache.path(), Some(server.endpoint().to_string())).with_progress(false);
    assert_eq!(open_hub(&online, &r, Split::Train).unwrap(), want);
    drop(server);
    assert_eq!(
        open_hub(&Hub::new(cache.path(), None), &r, Split::Train).unwrap(),
        want
    );
}

#[test]
fn bad_parquet_files_are_named_with_the_row() {
    let bad = fixtures().join("hf-bad");
    for (file, wants) in [
        (
            "columns.parquet",
            &["no column `label`", "img, fine_label"][..],
        ),
        (
            "row1-not-an-image.parquet",
            &["row 1:", "not a decodable image"][..],
        ),
        (
            "row1-16x24.parquet",
            &["row 1:", "16×24, expected 32×32"][..],
        ),
        (
            "row1-null-bytes.parquet",
            &["row 1:", "`img.bytes` is null"][..],
        ),
        (
            "row2-label-10.parquet",
            &["row 2:", "`label` = 10, expected 0–9"][..],
        ),
        (
            "img-binary.parquet",
            &["column `img` is not a struct with a `bytes` field"][..],
        ),
        (
            "img-no-bytes.parquet",
            &["column `img` is not a struct with a `bytes` field"][..],
        ),
        (
            "row0-label-2e63.parquet",
            &[
                "row 0:",
                "`label` = 9223372036854775813, beyond any class index",
            ][..],
        ),
        (
            "names-0.parquet",
            &["`huggingface` metadata: 0 label names, expected 1–256"][..],
        ),
        (
            "names-257.parquet",
            &["`huggingface` metadata: 257 label names, expected 1–256"][..],
        ),
    ] {
        let p = bad.join(file);
        let e = load_parquet(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        for w in wants {
            assert!(e.contains(w), "{file}: missing {w:?} in: {e}");
        }
    }

    // Shards of one split: a file of other class names is named, beside the first file's names; one of the
    // same names is appended, labels as read.
    let most = load_parquet(&bad.join("names-256.parquet")).unwrap();
    assert_eq!(
        (most.classes.len(), most.labels.as_slice()),
        (256, &[255u8][..])
    );
    let five = bad.join("classes-5.parquet");
    let own = load_parquet(&five).unwrap();
    assert_eq!(
        (own.classes.len(), own.labels.as_slice()),
        (5, &[0u8, 4][..])
    );
    let good_path = fixtures().join("hf-cifar10.parquet");
    let e = load_parquet_files(&[good_path.clone(), five])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("classes-5.parquet")
            && e.contains("differ from those of")
            && e.contains("airplane"),
        "{e}"
    );
    let one = load_parquet(&good_path).unwrap();
    let two = load_parquet_files(&[good_path.clone(), good_path]).unwrap();
    assert_eq!(two.len(), 2 * one.len());
    assert_eq!(two.labels[one.len()..], one.labels);
    assert!(load_parquet_files(&[]).is_err());

    // Not parquet at all, truncated, and corrupted in the middle: errors naming the file, never a panic.
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("hf-cifar10.parquet")).unwrap();
    let mut flipped = good.clone();
    for b in &mut flipped[good.len() / 3..good.len() / 3 + 2000] {
        *b = !*b;
    }
    let cases = [
        ("text.parquet", b"definitely not parquet".to_vec()),
        ("truncated.parquet", good[..good.len() / 2].to_vec()),
        ("flipped.parquet", flipped),
        ("empty.parquet", Vec::new()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = load_parquet(&p).unwrap_err().to_string();
        assert!(e.starts_with(&p.display().to_string()), "{name}: {e}");
    }
}

/// `take` keeps the first images whole (pixels, labels and class names) and all of them when asked for more;
/// `to_tensor` puts byte i·3072 + c·1024 + y·32 + x at [i, c, y, x] as byte/127.5 − 1 (0 → −1, 255 → 1).
#[test]
fn take_and_to_tensor_keep_the_documented_layout() {
    let mut rng = NoiseRng::new(2);
    let pixels: Vec<u8> = (0..3 * IMAGE_BYTES).map(|_| rng.index(256) as u8).collect();
    let set = ImageSet {
        pixels: pixels.clone(),
        labels: vec![4, 0, 9],
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let two = set.take(2);
    assert_eq!(two.len(), 2);
    assert_eq!(two.pixels, pixels[..2 * IMAGE_BYTES]);
    assert_eq!(
        (two.labels.as_slice(), &two.classes),
        (&[4u8, 0][..], &set.classes)
    );
    assert_eq!(set.take(5), set);
    assert!(set.take(0).is_empty() && set.take(0).pixels.is_empty());
    let t = set.to_tensor(&Device::Cpu).unwrap();
    assert_eq!(t.dims(), [3, 3, 32, 32]);
    for (i, c, y, x) in [(0, 0, 0, 0), (1, 2, 31, 0), (2, 1, 5, 31), (2, 2, 31, 31)] {
        let v = t
            .get(i)
            .unwrap()
            .get(c)
            .unwrap()
            .get(y)
            .unwrap()
            .get(x)
            .unwrap();
        let byte = pixels[i * IMAGE_BYTES + c * 1024 + y * 32 + x];
        assert_eq!(
            v.to_scalar::<f32>().unwrap(),
            byte as f32 / 127.5 - 1.0,
            "[{i}, {c}, {y}, {x}]"
        );
    }
    assert_eq!((to_unit(0), to_unit(255)), (-1.0, 1.0));
}

/// Class-conditional batches: each row's one-hot label is the label of the image drawn into that row (images
/// told apart by their pixels), every image is drawn, and the source says whether it is conditional.
#[test]
fn conditional_batches_carry_each_images_label() {
    let mut rng = NoiseRng::new(12);
    let pixels: Vec<u8> = (0..3 * IMAGE_BYTES).map(|_| rng.index(256) as u8).collect();
    let set = ImageSet {
        pixels,
        labels: vec![4, 0, 9],
        classes: CIFAR10_CLASSES.iter().map(|s| s.to_string()).collect(),
    };
    let images: Vec<Vec<f32>> = (0..3)
        .map(|i| set.image(i).iter().map(|&p| to_unit(p)).collect())
        .collect();
    let mut src = CifarSource::new(set.clone(), false, true).unwrap();
    assert!(src.conditional());
    let (x, cond) = src.next_batch(32, &mut rng, &Device::Cpu).unwrap();
    let rows = x.flatten_from(1).unwrap().to_vec2::<f32>().unwrap();
    let onehot = cond.unwrap().to_vec2::<f32>().unwrap();
    let mut seen = [false; 3];
    for (row, label) in rows.iter().zip(&onehot) {
        let i = images.iter().position(|im| im == row).unwrap();
        seen[i] = true;
        let mut want = vec![0f32; 10];
        want[set.labels[i] as usize] = 1.0;
        assert_eq!(*label, want, "image {i}");
    }
    assert_eq!(seen, [true; 3]);
    assert!(!CifarSource::new(set, true, false).unwrap().conditional());
}
