//! Forecast export: the CSV is read back with the `csv` crate and checked against order statistics worked out by
//! hand; the fan chart is decoded by the `image` crate and its pixels inspected.

use vsdm_eval::export::forecast::{fan_chart, fan_charts, write_forecast_csv, CSV_QUANTILES};
use vsdm_eval::forecast::Window;

#[test]
fn csv_holds_gluonts_quantiles_per_window_series_and_step() {
    let dir = tempfile::tempdir().unwrap();
    // 5 samples × 2 steps × 2 series: series 0 is i at step 0 and 10 + i at step 1; series 1 is −i.
    let samples: Vec<f32> = (0..5)
        .flat_map(|i| {
            let i = i as f32;
            [i, -i, 10.0 + i, -i]
        })
        .collect();
    let truth = [2.5, 0.0, f64::NAN, 1.0];
    let w = Window::new(&samples, &truth, 5, 2, 2);
    let p = dir.path().join("f.csv");
    write_forecast_csv(&p, &[w, w], &["a".to_string()]).unwrap();
    let mut rd = csv::Reader::from_path(&p).unwrap();
    let header: Vec<String> = rd.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "window", "series", "step", "truth", "mean", "q0.05", "q0.1", "q0.25", "q0.5", "q0.75",
            "q0.9", "q0.95"
        ]
    );
    assert_eq!(CSV_QUANTILES.len() + 5, header.len());
    let rows: Vec<Vec<String>> = rd
        .records()
        .map(|r| r.unwrap().iter().map(String::from).collect())
        .collect();
    // 2 windows × 2 series × 2 steps, ordered window, series, step; series 1 is named by its index.
    assert_eq!(rows.len(), 8);
    // S = 5: the q-quantile is sorted sample round(4q), half to even: 0.05→0, 0.1→0, 0.25→1, 0.5→2, 0.75→3,
    // 0.9→4 (3.6), 0.95→4.
    assert_eq!(rows[0].join(","), "0,a,0,2.5,2,0,0,1,2,3,4,4");
    assert_eq!(rows[1].join(","), "0,a,1,,12,10,10,11,12,13,14,14");
    assert_eq!(rows[2].join(","), "0,1,0,0,-2,-4,-4,-3,-2,-1,0,0");
    assert_eq!(rows[7][..3].join(","), "1,1,1");
    // 2 samples × 3 steps × 1 series (a shape where T·D ≠ T + D): every sample −0 writes a mean and quantiles
    // of 0, not −0.
    let zeros = [-0.0f32; 6];
    let truth3 = [1.0, 2.0, 3.0];
    let p3 = dir.path().join("f3.csv");
    write_forecast_csv(&p3, &[Window::new(&zeros, &truth3, 2, 3, 1)], &[]).unwrap();
    let rows: Vec<String> = csv::Reader::from_path(&p3)
        .unwrap()
        .records()
        .map(|r| r.unwrap().iter().collect::<Vec<_>>().join(","))
        .collect();
    assert_eq!(
        rows,
        [
            "0,0,0,1,0,0,0,0,0,0,0,0",
            "0,0,1,2,0,0,0,0,0,0,0,0",
            "0,0,2,3,0,0,0,0,0,0,0,0"
        ]
    );
    let bad = Window::new(&samples[..3], &truth, 5, 2, 2);
    let e = write_forecast_csv(&p, &[w, bad], &[]).unwrap_err();
    assert!(e.to_string().contains("forecast window 1"), "{e}");
}

#[test]
fn fan_chart_draws_bands_median_and_truth() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("fan.png");
    // 40 samples spread over [0, 39] at every step; context and truth at 100 (above all samples).
    let samples: Vec<Vec<f64>> = (0..40).map(|i| vec![i as f64; 10]).collect();
    let context = [100.0; 20];
    let truth = [100.0; 10];
    fan_chart(&png, &context, &truth, &samples).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (800, 360));
    let px: Vec<[u8; 3]> = img.pixels().map(|p| p.0).collect();
    let black = px.iter().filter(|p| **p == [0, 0, 0]).count();
    let blue_line = px.iter().filter(|p| **p == [0, 0, 255]).count();
    let shaded = px
        .iter()
        .filter(|p| p[2] > p[0].saturating_add(20) && p[0] > 100)
        .count();
    assert!(black > 500, "context and truth lines: {black} black pixels");
    assert!(blue_line > 200, "median line: {blue_line} blue pixels");
    assert!(shaded > 10_000, "bands: {shaded} shaded pixels");
    // The horizon (right third) holds the bands; the context part (left two thirds) none.
    let shaded_left = img
        .enumerate_pixels()
        .filter(|(x, _, p)| *x < 480 && p[2] > p[0].saturating_add(20) && p[0] > 100)
        .count();
    assert_eq!(shaded_left, 0);
    for (bad, what) in [
        (vec![], "equal, non-zero length"),
        (vec![vec![1.0], vec![f64::NAN]], "NaN"),
    ] {
        let e = fan_chart(&png, &context, &[], &bad).unwrap_err();
        assert!(e.to_string().contains(what), "{e}");
    }
    let e = fan_chart(&png, &context, &[1.0; 3], &samples).unwrap_err();
    assert!(e.to_string().contains("3 truth values"), "{e}");
}

/// The rows and columns of the chart's pure black pixels (the context and truth lines).
fn black_extent(img: &image::RgbImage, rows: std::ops::Range<u32>) -> Option<(u32, u32, u32, u32)> {
    let px: Vec<(u32, u32)> = img
        .enumerate_pixels()
        .filter(|(_, y, p)| rows.contains(y) && p.0 == [0, 0, 0])
        .map(|(x, y, _)| (x, y))
        .collect();
    let xs = px.iter().map(|p| p.0);
    let ys = px.iter().map(|p| p.1);
    Some((xs.clone().min()?, xs.max()?, ys.clone().min()?, ys.max()?))
}

/// Where the chart puts its lines: the x axis runs over the time index from the first context step (left edge
/// of the 780 × 340 plot inside the 10-pixel margin) to the last horizon step (right edge), and the y axis over
/// the data's range with 5% of it added above and below. Context 10 for 20 steps, truth 30 for 10 steps, every
/// sample 20: the y axis is 9..31 and the x axis 0..29, so the context line sits at y = 10 + 340·21/22 ≈ 334
/// from x = 10 to 10 + 780·19/29 ≈ 521, the truth line at y ≈ 25 from x ≈ 548 to 790, the median at y = 180.
#[test]
fn fan_chart_places_context_truth_and_median_on_the_time_and_value_axes() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("axes.png");
    let samples: Vec<Vec<f64>> = vec![vec![20.0; 10]; 8];
    fan_chart(&png, &[10.0; 20], &[30.0; 10], &samples).unwrap();
    let img = image::open(&png).unwrap().to_rgb8();
    let near = |got: u32, want: f64| (got as f64 - want).abs() <= 3.0;
    let (x0, x1, y0, y1) = black_extent(&img, 180..360).expect("a context line");
    assert!(
        near(x0, 10.0) && near(x1, 10.0 + 780.0 * 19.0 / 29.0),
        "context line spans x {x0}..{x1}"
    );
    let y_context = 10.0 + 340.0 * 21.0 / 22.0;
    assert!(
        near(y0, y_context) && near(y1, y_context),
        "context line at y {y0}..{y1}"
    );
    let (x0, x1, y0, y1) = black_extent(&img, 0..180).expect("a truth line");
    assert!(
        near(x0, 10.0 + 780.0 * 20.0 / 29.0) && near(x1, 790.0),
        "truth line spans x {x0}..{x1}"
    );
    let y_truth = 10.0 + 340.0 / 22.0;
    assert!(
        near(y0, y_truth) && near(y1, y_truth),
        "truth line at y {y0}..{y1}"
    );
    let blue_rows: Vec<u32> = img
        .enumerate_pixels()
        .filter(|(_, _, p)| p.0 == [0, 0, 255])
        .map(|(_, y, _)| y)
        .collect();
    assert!(
        !blue_rows.is_empty() && blue_rows.iter().all(|&y| near(y, 180.0)),
        "median rows {:?}..{:?}",
        blue_rows.iter().min(),
        blue_rows.iter().max()
    );
}

#[test]
fn fan_charts_of_a_window_name_their_files() {
    let dir = tempfile::tempdir().unwrap();
    // 30 samples × 4 steps × 3 series, context of 6 steps.
    let samples: Vec<f32> = (0..30 * 4 * 3).map(|k| (k % 17) as f32).collect();
    let truth: Vec<f64> = (0..4 * 3).map(|k| k as f64).collect();
    let context: Vec<f64> = (0..6 * 3).map(|k| (k * 7 % 5) as f64).collect();
    let w = Window::new(&samples, &truth, 30, 4, 3);
    let names = ["MT 001".to_string()];
    let out = fan_charts(&dir.path().join("charts"), &w, &context, &names, 2).unwrap();
    let files: Vec<String> = out
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files, ["fan_MT_001.png", "fan_1.png"]);
    // Each chart is the one `fan_chart` draws from that series' own columns of the context, truth and samples.
    let column = |rows: &[f64], j: usize| -> Vec<f64> { rows.chunks(3).map(|r| r[j]).collect() };
    for (j, p) in out.iter().enumerate() {
        let own: Vec<Vec<f64>> = samples
            .chunks(4 * 3)
            .map(|sample| sample.chunks(3).map(|r| r[j] as f64).collect())
            .collect();
        let reference = dir.path().join(format!("reference_{j}.png"));
        fan_chart(&reference, &column(&context, j), &column(&truth, j), &own).unwrap();
        let (got, want) = (image::open(p).unwrap(), image::open(&reference).unwrap());
        assert_eq!(got.width(), 800);
        assert!(
            got.as_bytes() == want.as_bytes(),
            "chart {j} differs from its series' own"
        );
    }
    let e = fan_charts(dir.path(), &w, &context[..5], &[], 3).unwrap_err();
    assert!(e.to_string().contains("multiple of 3"), "{e}");
    // A truth of the wrong length, a window without samples, or without series, draws nothing.
    let short_truth = Window::new(&samples, &truth[..11], 30, 4, 3);
    let e = fan_charts(&dir.path().join("none"), &short_truth, &[], &[], 3).unwrap_err();
    assert!(e.to_string().contains("11 truth values"), "{e}");
    for (s, d) in [(0, 3), (30, 0)] {
        let w = Window::new(&samples[..s * 4 * d], &truth[..4 * d], s, 4, d);
        let e = fan_charts(&dir.path().join("none"), &w, &[], &[], 3).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{s} samples × 4 steps × {d} series")),
            "{e}"
        );
    }
}
