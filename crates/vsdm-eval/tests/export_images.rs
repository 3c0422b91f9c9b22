//! Image export: what is written is read back by independent decoders (the `image` crate's PNG decoder; the
//! `.npz` by NumPy in `scripts/fid_reference.py npz-check`, and here by the crate's own reader), and bad input is
//! named in the error.

use candle_core::{Device, Tensor};
use vsdm_eval::export::{read_npz_u8, save_grid_png, save_npz_u8, save_png_folder, ExportError};

/// `[n, 3, h, w]` u8 images whose pixel (i, c, y, x) is `(31·i + 7·c + 5·y + 3·x) mod 256`.
fn pattern(n: usize, h: usize, w: usize) -> (Tensor, impl Fn(usize, usize, usize, usize) -> u8) {
    let f = |i: usize, c: usize, y: usize, x: usize| ((31 * i + 7 * c + 5 * y + 3 * x) % 256) as u8;
    let mut v = Vec::new();
    for i in 0..n {
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    v.push(f(i, c, y, x));
                }
            }
        }
    }
    (Tensor::from_vec(v, (n, 3, h, w), &Device::Cpu).unwrap(), f)
}

#[test]
fn grid_places_images_row_major_with_black_padding() {
    let dir = tempfile::tempdir().unwrap();
    let (t, f) = pattern(5, 4, 6);
    let p = dir.path().join("grid.png");
    save_grid_png(&t, &p, 3).unwrap();
    let img = image::open(&p).unwrap().to_rgb8();
    // 3 columns × 2 rows of 6×4 cells, 2 px padding: width 3·8+2, height 2·6+2.
    assert_eq!(img.dimensions(), (26, 14));
    for i in 0..5 {
        let (x0, y0) = (2 + (i % 3) * 8, 2 + (i / 3) * 6);
        for y in 0..4 {
            for x in 0..6 {
                let px = img.get_pixel((x0 + x) as u32, (y0 + y) as u32).0;
                for (c, &v) in px.iter().enumerate() {
                    assert_eq!(v, f(i, c, y, x), "image {i} ({x},{y}) channel {c}");
                }
            }
        }
    }
    // Padding and the empty sixth cell are black.
    assert_eq!(img.get_pixel(0, 0).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(1, 5).0, [0, 0, 0]);
    assert_eq!(img.get_pixel(2 + 2 * 8 + 1, 2 + 6 + 1).0, [0, 0, 0]);
}

#[test]
fn float_images_are_quantised_like_a_png_of_the_sample() {
    let dir = tempfile::tempdir().unwrap();
    // [-1, 1] → round((x+1)·127.5): -1 → 0, -0.2 → round(102) = 102, 0.6 → round(204) = 204, 1 → 255.
    let t = Tensor::from_vec(vec![-1f32, -0.2, 0.6, 1.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    let files = save_png_folder(&t, dir.path(), 7).unwrap();
    assert_eq!(files, vec![dir.path().join("000007.png")]);
    let img = image::open(&files[0]).unwrap();
    assert_eq!(img.color(), image::ColorType::L8);
    assert_eq!(img.to_luma8().into_raw(), vec![0, 102, 204, 255]);
}

#[test]
fn png_folder_and_npz_hold_the_same_pixels() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = pattern(3, 5, 4);
    let files = save_png_folder(&t, &dir.path().join("pngs"), 0).unwrap();
    let npz = dir.path().join("s.npz");
    save_npz_u8(&t, &npz).unwrap();
    let back = read_npz_u8(&npz).unwrap();
    assert_eq!(
        (back.n, back.height, back.width, back.channels),
        (3, 5, 4, 3)
    );
    for (i, f) in files.iter().enumerate() {
        assert_eq!(
            f.file_name().unwrap().to_str().unwrap(),
            format!("{i:06}.png")
        );
        assert_eq!(image::open(f).unwrap().to_rgb8().into_raw(), back.image(i));
    }
    // And the tensor round trip.
    let t2 = back.to_nchw(&Device::Cpu).unwrap();
    assert_eq!(
        t2.flatten_all().unwrap().to_vec1::<u8>().unwrap(),
        t.flatten_all().unwrap().to_vec1::<u8>().unwrap()
    );
}

#[test]
fn npz_layout_is_numpy_uint8_nhwc() {
    // The exact bytes NumPy writes for `np.save(f, np.zeros((1, 1, 1, 3), np.uint8))`: version 1.0 header padded
    // to 128 bytes - 10, descriptor `|u1`, C order.
    let dir = tempfile::tempdir().unwrap();
    let t = Tensor::from_vec(vec![9u8, 8, 7], (1, 3, 1, 1), &Device::Cpu).unwrap();
    let p = dir.path().join("one.npz");
    save_npz_u8(&t, &p).unwrap();
    let mut z = zip::ZipArchive::new(std::fs::File::open(&p).unwrap()).unwrap();
    let mut member = z.by_name("arr_0.npy").unwrap();
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut member, &mut bytes).unwrap();
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 1, 1, 3), }";
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    assert_eq!(hlen, 118);
    let text = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert_eq!(text.trim_end(), header);
    assert!(text.ends_with('\n'));
    assert_eq!(&bytes[10 + hlen..], &[9, 8, 7]);
}

#[test]
fn bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.png");
    let four = Tensor::zeros((1, 4, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = save_grid_png(&four, &p, 2).unwrap_err().to_string();
    assert!(e.contains("g.png") && e.contains("4"), "{e}");
    let flat = Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        save_npz_u8(&flat, &dir.path().join("x.npz")),
        Err(ExportError::Input { .. })
    ));
    let inf = Tensor::from_vec(vec![0f32, f32::INFINITY, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
    let e = save_png_folder(&inf, dir.path(), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("inf") && e.contains("channel 1"), "{e}");
    // An npz whose arr_0 is float, not uint8 NHWC.
    let bad = dir.path().join("bad.npz");
    let a = vsdm_eval::export::npz::NpyArray::new(
        vec![2, 2],
        vsdm_eval::export::npz::NpyData::F32(vec![0.0; 4]),
    )
    .unwrap();
    vsdm_eval::export::npz::write_npz(&bad, &[("arr_0", &a)]).unwrap();
    let e = read_npz_u8(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.npz") && e.contains("float32 [2, 2]"), "{e}");
    let e = read_npz_u8(&dir.path().join("missing.npz"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing.npz"), "{e}");
}

#[test]
fn cli_pack_turns_a_png_folder_into_a_sample_archive() {
    let dir = tempfile::tempdir().unwrap();
    let (t, _) = pattern(4, 3, 5);
    let pngs = dir.path().join("pngs");
    save_png_folder(&t, &pngs, 0).unwrap();
    let npz = dir.path().join("packed.npz");
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_vsdm-eval"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[
        "pack".as_ref(),
        pngs.as_os_str(),
        "--every".as_ref(),
        "2".as_ref(),
        "--npz".as_ref(),
        npz.as_os_str(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = read_npz_u8(&npz).unwrap();
    // Every 2nd file in path order: images 0 and 2.
    assert_eq!(
        (back.n, back.height, back.width, back.channels),
        (2, 3, 5, 3)
    );
    let want = read_npz_u8(&{
        let p = dir.path().join("all.npz");
        save_npz_u8(&t, &p).unwrap();
        p
    })
    .unwrap();
    assert_eq!(back.image(0), want.image(0));
    assert_eq!(back.image(1), want.image(2));
    let out = run(&["pack".as_ref(), pngs.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--npz and/or --grid"));
    // A grid under another type's name.
    let jpg = dir.path().join("grid.jpg");
    let out = run(&[
        "pack".as_ref(),
        pngs.as_os_str(),
        "--grid".as_ref(),
        jpg.as_os_str(),
    ]);
    assert!(!out.status.success() && !jpg.exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("give a .png path"));
    // An empty selection is refused rather than written as an empty archive.
    let empty = dir.path().join("empty.npz");
    let out = run(&[
        "pack".as_ref(),
        pngs.as_os_str(),
        "--limit".as_ref(),
        "0".as_ref(),
        "--npz".as_ref(),
        empty.as_os_str(),
    ]);
    assert!(!out.status.success() && !empty.exists());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--limit 0"));
    // A grid of no columns is named by its flag, before the images are read; so is a negative count.
    for n in ["0", "-2"] {
        let png = dir.path().join("cols.png");
        let out = run(&[
            "pack".as_ref(),
            pngs.as_os_str(),
            "--ncols".as_ref(),
            n.as_ref(),
            "--grid".as_ref(),
            png.as_os_str(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !png.exists(), "{err}");
        let want = match n {
            "0" => "--ncols 0: must be at least 1".to_string(),
            _ => format!("invalid value '{n}' for '--ncols <NCOLS>'"),
        };
        assert!(err.contains(&want), "{err}");
    }
}
