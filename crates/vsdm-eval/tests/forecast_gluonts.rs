//! Forecast metrics against values computed by GluonTS 0.17 and scoringrules 0.10 themselves
//! (`scripts/gluonts_fixtures.py`).

use serde_json::Value;
use vsdm_eval::forecast::{
    energy_score, evaluate, paper_quantiles, quantile_index, ForecastError, Metrics, Window,
};

struct Case {
    name: String,
    s: usize,
    t: usize,
    d: usize,
    samples: Vec<Vec<f32>>,
    truth: Vec<Vec<f64>>,
    expected: Value,
    expected_sum: Value,
    scoringrules: Value,
}

fn cases() -> Vec<Case> {
    let text = include_str!("fixtures/gluonts_metrics.json");
    let v: Value = serde_json::from_str(text).unwrap();
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let sh = &c["shape"];
            let (s, t, d) = (
                sh["samples"].as_u64().unwrap() as usize,
                sh["steps"].as_u64().unwrap() as usize,
                sh["series"].as_u64().unwrap() as usize,
            );
            let mut samples = Vec::new();
            let mut truth = Vec::new();
            for w in c["windows"].as_array().unwrap() {
                let flat: Vec<f32> = w["samples"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .flat_map(|a| {
                        a.as_array().unwrap().iter().flat_map(|b| {
                            b.as_array()
                                .unwrap()
                                .iter()
                                .map(|x| x.as_f64().unwrap() as f32)
                        })
                    })
                    .collect();
                assert_eq!(flat.len(), s * t * d);
                samples.push(flat);
                truth.push(
                    w["truth"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .flat_map(|row| {
                            row.as_array()
                                .unwrap()
                                .iter()
                                .map(|x| x.as_f64().unwrap_or(f64::NAN))
                        })
                        .collect(),
                );
            }
            Case {
                name: c["name"].as_str().unwrap().into(),
                s,
                t,
                d,
                samples,
                truth,
                expected: c["expected"].clone(),
                expected_sum: c["expected_sum"].clone(),
                scoringrules: c["scoringrules"].clone(),
            }
        })
        .collect()
}

fn windows(c: &Case) -> Vec<Window<'_>> {
    c.samples
        .iter()
        .zip(&c.truth)
        .map(|(s, y)| Window {
            samples: s,
            truth: y,
            num_samples: c.s,
            steps: c.t,
            series: c.d,
        })
        .collect()
}

fn close(name: &str, key: &str, got: f64, want: f64) {
    let rel = (got - want).abs() / want.abs().max(1e-12);
    assert!(
        rel <= 1e-6,
        "{name} {key}: {got} vs GluonTS {want} (relative error {rel:e})"
    );
}

fn compare(name: &str, m: &Metrics, e: &Value) {
    let pairs = [
        ("mean_wQuantileLoss", m.crps),
        ("ND", m.nd),
        ("NRMSE", m.nrmse),
        ("MSE", m.mse),
        ("RMSE", m.rmse),
        ("abs_error", m.abs_error),
        ("abs_target_sum", m.abs_target_sum),
        ("abs_target_mean", m.abs_target_mean),
    ];
    for (k, got) in pairs {
        close(name, k, got, e[k].as_f64().unwrap());
    }
    for (q, got) in paper_quantiles().iter().zip(&m.weighted_quantile_loss) {
        let k = format!("wQuantileLoss[{q}]");
        close(name, &k, *got, e[&k].as_f64().unwrap());
    }
    assert_eq!(
        m.masked_values as f64,
        e["num_masked_target_values"].as_f64().unwrap(),
        "{name}: masked values"
    );
}

#[test]
fn crps_crps_sum_nd_nrmse_mse_match_gluonts() {
    let cs = cases();
    assert!(
        cs.iter().any(|c| c.d == 1)
            && cs
                .iter()
                .any(|c| c.truth.iter().flatten().any(|x| x.is_nan()))
    );
    for c in &cs {
        let r = evaluate(&windows(c), &paper_quantiles()).unwrap();
        compare(&c.name, &r.marginal, &c.expected);
        compare(&format!("{} (sum)", c.name), &r.sum, &c.expected_sum);
        assert_eq!(r.marginal.items, c.samples.len() * c.d);
        assert_eq!(r.sum.items, c.samples.len());
    }
}

#[test]
fn f64_samples_give_the_same_metrics() {
    for c in &cases() {
        let wide: Vec<Vec<f64>> = c
            .samples
            .iter()
            .map(|w| w.iter().map(|&x| x as f64).collect())
            .collect();
        let ws: Vec<Window<f64>> = wide
            .iter()
            .zip(&c.truth)
            .map(|(s, y)| Window::new(s, y, c.s, c.t, c.d))
            .collect();
        let r = evaluate(&ws, &paper_quantiles()).unwrap();
        compare(&c.name, &r.marginal, &c.expected);
        compare(&format!("{} (sum)", c.name), &r.sum, &c.expected_sum);
    }
}

#[test]
fn sample_crps_and_energy_score_match_scoringrules() {
    for c in &cases() {
        let ws = windows(c);
        let r = evaluate(&ws, &paper_quantiles()).unwrap();
        let e = &c.scoringrules;
        close(
            &c.name,
            "crps_sample",
            r.marginal.crps_sample,
            e["crps_sample"].as_f64().unwrap(),
        );
        close(
            &c.name,
            "crps_sum_sample",
            r.sum.crps_sample,
            e["crps_sum_sample"].as_f64().unwrap(),
        );
        close(
            &c.name,
            "energy_score",
            energy_score(&ws).unwrap(),
            e["energy_score"].as_f64().unwrap(),
        );
    }
}

#[test]
fn quantile_index_rounds_half_to_even_like_numpy() {
    // np.round((11 - 1) * 0.05) = np.round(0.5) = 0; (S − 1) q = 2.5 → 2; 49.5 → 50.
    assert_eq!(quantile_index(11, 0.05), 0);
    assert_eq!(quantile_index(6, 0.5), 2);
    assert_eq!(quantile_index(100, 0.5), 50);
    assert_eq!(quantile_index(100, 0.05), 5);
}

#[test]
fn sample_crps_matches_the_closed_form_for_a_gaussian_forecast() {
    // For X ~ N(0, 1) and y = 0.3: CRPS = σ[z(2Φ(z) − 1) + 2φ(z) − 1/√π] with z = 0.3.
    let z: f64 = 0.3;
    let phi = (-z * z / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    // Φ(0.3) to 1e-12.
    let cdf = 0.617_911_422_188_953_4;
    let exact = z * (2.0 * cdf - 1.0) + 2.0 * phi - 1.0 / std::f64::consts::PI.sqrt();
    // Quasi-random normal samples: the inverse CDF at (i + ½)/S, from a fine trapezoid table of Φ on [−8, 8].
    let s = 4001;
    let n = 160_000;
    let h = 16.0 / n as f64;
    let pdf = |u: f64| (-u * u / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    let mut table = vec![0.0; n + 1];
    for k in 1..=n {
        let (a, b) = (-8.0 + (k - 1) as f64 * h, -8.0 + k as f64 * h);
        table[k] = table[k - 1] + 0.5 * h * (pdf(a) + pdf(b));
    }
    let inv = |p: f64| {
        let k = table.partition_point(|&c| c < p).clamp(1, n);
        let (c0, c1) = (table[k - 1], table[k]);
        -8.0 + (k - 1) as f64 * h + h * (p - c0) / (c1 - c0)
    };
    let samples: Vec<f32> = (0..s)
        .map(|i| inv((i as f64 + 0.5) / s as f64) as f32)
        .collect();
    let truth = [z];
    let r = evaluate(
        &[Window {
            samples: &samples,
            truth: &truth,
            num_samples: s,
            steps: 1,
            series: 1,
        }],
        &paper_quantiles(),
    )
    .unwrap();
    // crps_sample is normalised by Σ|y| = 0.3.
    assert!(
        (r.marginal.crps_sample * 0.3 - exact).abs() < 2e-3,
        "{} vs {exact}",
        r.marginal.crps_sample * 0.3
    );
    // The energy score of a 1-D forecast is its CRPS.
    let es = energy_score(&[Window {
        samples: &samples,
        truth: &truth,
        num_samples: s,
        steps: 1,
        series: 1,
    }])
    .unwrap();
    assert!((es - exact).abs() < 2e-3, "{es} vs {exact}");
}

#[test]
fn bad_input_is_named() {
    let s = vec![1f32; 10];
    let y = vec![1.0; 5];
    let e = evaluate(
        &[Window {
            samples: &s,
            truth: &y,
            num_samples: 2,
            steps: 3,
            series: 2,
        }],
        &paper_quantiles(),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            ForecastError::Shape {
                what: "samples",
                expected: 12,
                got: 10,
                ..
            }
        ),
        "{e}"
    );
    let s = vec![f32::NAN; 12];
    let y = vec![1.0; 6];
    let e = evaluate(
        &[Window {
            samples: &s,
            truth: &y,
            num_samples: 2,
            steps: 3,
            series: 2,
        }],
        &paper_quantiles(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
    let none: [Window; 0] = [];
    assert_eq!(
        evaluate(&none, &paper_quantiles()).unwrap_err(),
        ForecastError::NoWindows
    );
    let y = vec![1.0; 6];
    let s = vec![1f32; 12];
    let w = Window::new(&s, &y, 2, 3, 2);
    for bad in [1.5, 1.0, 0.0, -0.1, f64::NAN] {
        let e = evaluate(&[w], &[0.5, bad]).unwrap_err();
        assert!(
            matches!(e, ForecastError::Quantile(q) if q.to_bits() == bad.to_bits()),
            "{bad}: {e}"
        );
    }
    // A window with zero samples, steps or series (each alone), and a NaN among f64 samples.
    for (s, t, d) in [(0, 3, 2), (2, 0, 2), (2, 3, 0)] {
        let e = evaluate(
            &[Window::new(&[] as &[f32], &y[..t * d], s, t, d)],
            &paper_quantiles(),
        )
        .unwrap_err();
        assert_eq!(
            e,
            ForecastError::EmptyWindow { window: 0 },
            "{s} × {t} × {d}"
        );
    }
    let mut s64 = vec![1.0f64; 12];
    s64[5] = f64::NAN;
    assert_eq!(
        evaluate(&[Window::new(&s64, &y, 2, 3, 2)], &paper_quantiles()).unwrap_err(),
        ForecastError::NonFiniteSample {
            window: 0,
            index: 5
        }
    );
    let short = vec![1f32; 6];
    let e = evaluate(
        &[w, Window::new(&short, &y[..3], 2, 3, 1)],
        &paper_quantiles(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("window 1"), "{e}");
}

/// 100 samples × 24 steps × 370 series × 7 windows (electricity's test set): `cargo test --release -p vsdm-eval --
/// --ignored forecast_timing --nocapture`.
#[test]
#[ignore = "timing probe"]
fn forecast_timing() {
    let (s, t, d, w) = (100, 24, 370, 7);
    let mut state = 1u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let samples: Vec<Vec<f32>> = (0..w)
        .map(|_| (0..s * t * d).map(|_| next()).collect())
        .collect();
    let truth: Vec<Vec<f64>> = (0..w)
        .map(|_| (0..t * d).map(|_| next() as f64).collect())
        .collect();
    let ws: Vec<Window> = samples
        .iter()
        .zip(&truth)
        .map(|(a, b)| Window {
            samples: a,
            truth: b,
            num_samples: s,
            steps: t,
            series: d,
        })
        .collect();
    let start = std::time::Instant::now();
    let r = evaluate(&ws, &paper_quantiles()).unwrap();
    println!(
        "100×24×370×7: {:.3} s (CRPS {:.4}, CRPS-sum {:.4})",
        start.elapsed().as_secs_f64(),
        r.marginal.crps,
        r.sum.crps
    );
    let start = std::time::Instant::now();
    let es = energy_score(&ws).unwrap();
    println!(
        "energy score: {:.3} s ({es:.4})",
        start.elapsed().as_secs_f64()
    );
}
