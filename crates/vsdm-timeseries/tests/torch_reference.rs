//! The candle forecasting network against a PyTorch implementation of the same architecture
//! (`bench/forecast_net.py`, written with `nn.Linear`, `nn.LayerNorm` and `F.scaled_dot_product_attention`):
//! same tensor names, the same output on the same weights, and the same gradient of every weight. The gradients
//! check the network's own attention op ([`vsdm_timeseries::model`]'s `attention`, whose backward is written by
//! hand) against PyTorch's autograd inside the whole network.
//!
//! The fixture `tests/fixtures/forecast-micro-torch.safetensors` holds random weights (every tensor drawn, so
//! layer-norm gains and biases are not at their neutral values), inputs, a probe (the loss is
//! Σ output ⊙ probe), PyTorch's output and PyTorch's gradients. Regenerate it with
//! `cargo test --release -p vsdm-timeseries --test torch_reference -- --ignored` and
//! `python bench/forecast_net.py forward target/forecast-micro-in.safetensors target/forecast-micro.json
//! crates/vsdm-timeseries/tests/fixtures/forecast-micro-torch.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use vsdm_core::compare::{max_abs, max_abs_diff};
use vsdm_core::{NoiseRng, ScoreModel};
use vsdm_timeseries::model::{ForecastNet, NetConfig};

/// A VSMD-shaped network (2 state channels), 3 series (so the series attention is on), patches of 2 steps,
/// 2 heads, 2 blocks.
fn micro() -> NetConfig {
    NetConfig {
        hidden: 8,
        heads: 2,
        layers: 2,
        ff: 12,
        patch: 2,
        ..NetConfig::small(3, 6, 4, 2, 2)
    }
}

const INPUTS: [&str; 4] = ["x", "t", "cond", "probe"];

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/forecast-micro-torch.safetensors")
}

#[test]
fn matches_pytorch_in_value_and_every_gradient() {
    let dev = Device::Cpu;
    let ts = candle_core::safetensors::load(fixture(), &dev).unwrap();
    let weights: HashMap<String, Tensor> = ts
        .iter()
        .filter(|(k, _)| !INPUTS.contains(&k.as_str()) && !k.starts_with("torch_"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // The same tensor names and shapes as a freshly built network.
    let fresh = VarMap::new();
    ForecastNet::new(VarBuilder::from_varmap(&fresh, DType::F32, &dev), micro()).unwrap();
    let fresh = fresh.data().lock().unwrap().clone();
    assert_eq!(fresh.len(), weights.len(), "tensor count");
    for (name, var) in &fresh {
        let w = weights
            .get(name)
            .unwrap_or_else(|| panic!("{name} is not in PyTorch's state dict"));
        assert_eq!(var.dims(), w.dims(), "{name}");
    }
    // Every weight a variable, so that the loss's gradient reaches it.
    let vars: HashMap<String, Var> = weights
        .iter()
        .map(|(k, v)| (k.clone(), Var::from_tensor(v).unwrap()))
        .collect();
    let tensors = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    let net =
        ForecastNet::new(VarBuilder::from_tensors(tensors, DType::F32, &dev), micro()).unwrap();
    let got = net.forward(&ts["x"], &ts["t"], Some(&ts["cond"])).unwrap();
    let want = &ts["torch_out"];
    assert_eq!(got.dims(), want.dims());
    let scale = max_abs(want).unwrap();
    assert!(
        scale > 0.1,
        "output scale {scale}: the fixture's weights are too small to test anything"
    );
    let err = max_abs_diff(&got, want).unwrap();
    assert!(
        err < 1e-5 * scale.max(1.0),
        "output: max |candle − torch| = {err} (scale {scale})"
    );

    let grads = (got * &ts["probe"])
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (name, var) in &vars {
        let want = &ts[&format!("torch_grad.{name}")];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        let scale = max_abs(want).unwrap();
        assert!(scale > 0.0, "{name}: PyTorch's gradient is zero");
        let err = max_abs_diff(g, want).unwrap();
        assert!(
            err <= 1e-4 * scale,
            "{name}: gradient max |candle − torch| = {err} (scale {scale})"
        );
    }
}

/// Writes the fixture's input half (weights, inputs, probe) and the config for the PyTorch script.
#[test]
#[ignore]
fn write_fixture_input() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    ForecastNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), micro()).unwrap();
    let mut rng = NoiseRng::new(17);
    let mut names: Vec<(String, Vec<usize>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for (k, dims) in names {
        let fan_in = dims.last().copied().unwrap_or(1).max(1);
        let scale = if dims.len() == 1 {
            0.3
        } else {
            1.0 / (fan_in as f64).sqrt()
        };
        let mut w = (rng.randn(&dims, &dev).unwrap() * scale).unwrap();
        if k.contains(".ln") && k.ends_with(".weight") {
            w = (w + 1.0).unwrap(); // layer-norm gains around 1
        }
        out.insert(k, w);
    }
    let cfg = micro();
    let (b, d, k) = (3, cfg.num_series, cfg.state_channels);
    let l = cfg.context + cfg.horizon;
    out.insert(
        "x".into(),
        rng.randn(&[b, k, d, cfg.horizon], &dev).unwrap(),
    );
    out.insert(
        "t".into(),
        Tensor::new(&[0.05f32, 0.5, 0.93], &dev).unwrap(),
    );
    out.insert(
        "cond".into(),
        rng.randn(&[b, 1 + cfg.time_features, d, l], &dev).unwrap(),
    );
    out.insert(
        "probe".into(),
        rng.randn(&[b, 1, d, cfg.horizon], &dev).unwrap(),
    );
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    candle_core::safetensors::save(&out, target.join("forecast-micro-in.safetensors")).unwrap();
    std::fs::write(
        target.join("forecast-micro.json"),
        serde_json::to_string_pretty(&cfg).unwrap(),
    )
    .unwrap();
}
