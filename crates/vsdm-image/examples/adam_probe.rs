//! Times one AdamW step over the paper-scale U-Net's parameters (55.7M values in its tensors, f32) on the CPU:
//! vsdm-core's fused step (two in-place ops per tensor) against the same optimiser as a chain of candle ops and
//! against candle_nn's AdamW, and the trainer's EMA update of the same parameters fused and as candle's chain,
//! alternated in rounds. The gradients are fixed random tensors of the parameters'
//! shapes (the optimiser alone, no network); the three update the same variables in turn (timing only). `cargo run --release -p vsdm-image --example adam_probe [ROUNDS]`

use std::collections::BTreeMap;
use std::time::Instant;

use candle_core::{backprop::GradStore, DType, Device, Result, Tensor, Var};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use vsdm_core::optim::{AdamConfig, AdamW};
use vsdm_image::unet::{UNet, UNetConfig};

fn main() -> anyhow::Result<()> {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(5);
    let dev = Device::Cpu;
    let vm = VarMap::new();
    UNet::new(
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
        &UNetConfig::preset("ddpmpp")?,
    )?;
    let vars: BTreeMap<String, Var> = vm.data().lock().unwrap().clone().into_iter().collect();
    let n: usize = vars.values().map(|v| v.elem_count()).sum();
    // One gradient per variable: a loss Σ w·r over fixed random r has gradient r, stored for each variable.
    let mut rng = vsdm_core::NoiseRng::new(1);
    let mut loss: Option<Tensor> = None;
    for v in vars.values() {
        let r = rng.randn(v.dims(), &dev)?;
        let l = (v.as_tensor() * r)?.sum_all()?;
        loss = Some(match loss {
            None => l,
            Some(t) => (t + l)?,
        });
    }
    let grads: GradStore = loss.expect("the network has parameters").backward()?;
    let cfg = AdamConfig {
        weight_decay: 0.01,
        ..AdamConfig::new(1e-4)
    };
    let mut fused = AdamW::new(vars.clone(), cfg)?;
    let mut chain = AdamW::new(vars.clone(), cfg)?;
    chain.set_fused(false);
    let mut nn = candle_nn::AdamW::new(
        vm.all_vars(),
        candle_nn::ParamsAdamW {
            lr: 1e-4,
            weight_decay: 0.01,
            ..Default::default()
        },
    )?;
    println!(
        "{} tensors, {n} values; ms per step, {rounds} alternated rounds after a warm-up",
        vars.len()
    );
    let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        let t = Instant::now();
        f()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    // The EMA's own copies of the parameters, as the trainer keeps them.
    let ema: Vec<(Var, Var)> = vars
        .values()
        .map(|v| Ok((Var::from_tensor(&v.as_tensor().copy()?)?, v.clone())))
        .collect::<Result<_>>()?;
    let ema_fused = || -> Result<()> {
        for (e, v) in &ema {
            let native = vsdm_core::adamw::Backend::Native;
            vsdm_core::adamw::ema(e.as_tensor(), v.as_tensor(), 0.9999, native)?;
        }
        Ok(())
    };
    let ema_chain = || -> Result<()> {
        for (e, v) in &ema {
            e.set(&((e.as_tensor() * 0.9999)? + (v.as_tensor() * (1.0 - 0.9999))?)?)?;
        }
        Ok(())
    };
    let mut rows: [(&str, Vec<f64>); 5] = [
        ("fused", vec![]),
        ("chain", vec![]),
        ("candle_nn", vec![]),
        ("ema fused", vec![]),
        ("ema chain", vec![]),
    ];
    for round in 0..=rounds {
        let t = [
            time(&mut || {
                fused
                    .step(&grads, 1.0)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?,
            time(&mut || {
                chain
                    .step(&grads, 1.0)
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))
            })?,
            time(&mut || nn.step(&grads))?,
            time(&mut || ema_fused())?,
            time(&mut || ema_chain())?,
        ];
        if round > 0 {
            for (row, t) in rows.iter_mut().zip(t) {
                row.1.push(t);
            }
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for (i, (name, t)) in rows.iter().enumerate() {
        let base = median(&rows[if i < 3 { 1 } else { 4 }].1);
        println!(
            "{name:>10}: median {:8.1} ms ({:.2}× its chain)",
            median(t),
            median(t) / base
        );
    }
    Ok(())
}
