//! The candle U-Net against the PyTorch implementation of the same architecture (`bench/unet_ddpmpp.py`):
//! same tensor names, same parameter count, same outputs on the same weights.
//!
//! The fixture `tests/fixtures/unet-micro-torch.safetensors` holds random weights (every tensor drawn, so no
//! path is silenced by EDM's near-zero initialisations), inputs and PyTorch's output. Regenerate it with
//! `cargo test --release -p vsdm-image --test torch_reference -- --ignored` and
//! `python bench/unet_ddpmpp.py forward target/unet-micro-in.safetensors target/unet-micro.json
//! crates/vsdm-image/tests/fixtures/unet-micro-torch.safetensors`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use vsdm_core::{NoiseRng, ScoreModel};
use vsdm_image::{UNet, UNetConfig};

/// A small VSMD-shaped, class-conditional network: 6 input channels, labels, attention, up and down blocks.
fn micro() -> UNetConfig {
    UNetConfig {
        model_channels: 8,
        label_dim: 10,
        ..UNetConfig::tiny().for_momentum()
    }
}

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/unet-micro-torch.safetensors")
}

#[test]
fn matches_pytorch_on_the_same_weights() {
    let dev = Device::Cpu;
    let ts = candle_core::safetensors::load(fixture(), &dev).unwrap();
    let x = ts["x"].clone();
    let t = ts["t"].clone();
    let cond = ts["cond"].clone();
    let want = ts["torch_out"].clone();
    let weights: HashMap<String, Tensor> = ts
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "x" | "t" | "cond" | "torch_out"))
        .collect();
    let n_weights = weights.len();
    let vm = VarMap::new();
    UNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &micro()).unwrap();
    assert_eq!(
        vm.all_vars().len(),
        n_weights,
        "tensor count differs from PyTorch's state dict"
    );
    let net = UNet::new(
        VarBuilder::from_tensors(weights, DType::F32, &dev),
        &micro(),
    )
    .unwrap();
    let got = net.forward(&x, &t, Some(&cond)).unwrap();
    assert_eq!(got.dims(), want.dims());
    let err = vsdm_core::compare::max_abs_diff(&got, &want).unwrap();
    let scale = vsdm_core::compare::max_abs(&want).unwrap();
    assert!(
        scale > 0.1,
        "output scale {scale}: the fixture's weights are too small to test anything"
    );
    assert!(
        err < 1e-4 * scale.max(1.0),
        "max |candle − torch| = {err} (scale {scale})"
    );
}

/// The paper-scale DDPM++ has the parameter count PyTorch reports for the same architecture (55,732,739; EDM's
/// unconditional CIFAR-10 model adds 1,152 for its augmentation-label map: 55,733,891).
#[test]
fn ddpmpp_parameter_count_matches_pytorch() {
    let n = vsdm_image::bench::parameter_count(&UNetConfig::ddpmpp_cifar10()).unwrap();
    assert_eq!(n, 55_732_739);
    let n = vsdm_image::bench::parameter_count(&UNetConfig::tiny()).unwrap();
    assert_eq!(n, 749_891);
}

/// Writes the fixture's input half (weights and inputs) for the PyTorch script.
#[test]
#[ignore]
fn write_fixture_input() {
    let dev = Device::Cpu;
    let vm = VarMap::new();
    UNet::new(VarBuilder::from_varmap(&vm, DType::F32, &dev), &micro()).unwrap();
    let mut rng = NoiseRng::new(11);
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut names: Vec<(String, Vec<usize>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    names.sort();
    for (k, dims) in names {
        let fan_in: usize = dims.iter().skip(1).product::<usize>().max(1);
        let scale = if dims.len() == 1 {
            0.3
        } else {
            1.0 / (fan_in as f64).sqrt()
        };
        let mut w = (rng.randn(&dims, &dev).unwrap() * scale).unwrap();
        if dims.len() == 1 && k.ends_with(".weight") {
            w = (w + 1.0).unwrap(); // group-norm gains around 1
        }
        out.insert(k, w);
    }
    out.insert("x".into(), rng.randn(&[2, 6, 32, 32], &dev).unwrap());
    out.insert("t".into(), Tensor::new(&[0.2f32, 0.85], &dev).unwrap());
    let mut c = vec![0f32; 20];
    c[3] = 1.0;
    c[10 + 8] = 1.0;
    out.insert("cond".into(), Tensor::from_vec(c, (2, 10), &dev).unwrap());
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    candle_core::safetensors::save(&out, target.join("unet-micro-in.safetensors")).unwrap();
    std::fs::write(
        target.join("unet-micro.json"),
        serde_json::to_string_pretty(&micro()).unwrap(),
    )
    .unwrap();
}
