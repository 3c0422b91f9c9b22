//! Throughput of the U-Net: training steps (forward, backward and an optimiser update) per second on random
//! data, for the `bench` command and `docs/benchmarks/image.md`.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{Optimizer, VarMap};
use vsdm_core::optim::{AdamConfig, AdamW};
use vsdm_core::{NoiseRng, ScoreModel};

use crate::error::Result;
use crate::unet::{UNet, UNetConfig};

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Throughput {
    pub parameters: usize,
    pub batch: usize,
    /// Images per second of forward + backward + AdamW step.
    pub train_images_per_second: f64,
    /// Images per second of a forward pass alone.
    pub forward_images_per_second: f64,
    /// Tensors of one training loss's autograd graph that take part in the backward pass (variables and
    /// intermediate results: `Tensor::sorted_nodes`).
    pub graph_tensors: usize,
    /// Their bytes. candle 0.11.1's backward gives each of them (but the loss) a gradient by filling a zero
    /// tensor of its shape and adding every contribution to it (`backprop.rs`, `or_insert` + `add`): at least
    /// 4× these bytes of memory traffic per step on top of the gradient arithmetic itself.
    pub graph_bytes: u64,
}

/// The optimiser of the timed steps: rate 1e-4 and weight decay 0.01 in each (PyTorch's AdamW defaults, as in
/// `bench/unet_ddpmpp.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Adam {
    /// vsdm-core's AdamW with its fused step (two in-place ops per parameter tensor): what training uses.
    Fused,
    /// vsdm-core's AdamW as a chain of candle ops (the same bits, about 17 kernels per tensor).
    Chain,
    /// candle_nn's AdamW (this benchmark's optimiser until the fused step, 2026-12-05: the earlier tables used it).
    CandleNn,
}

/// The optimiser chosen by [`Adam`].
enum Optim {
    Core(AdamW),
    CandleNn(candle_nn::AdamW),
}

impl Optim {
    fn new(vm: &VarMap, adam: Adam) -> Result<Self> {
        let (lr, weight_decay) = (1e-4, 0.01);
        Ok(match adam {
            Adam::CandleNn => Self::CandleNn(candle_nn::AdamW::new(
                vm.all_vars(),
                candle_nn::ParamsAdamW {
                    lr,
                    weight_decay,
                    ..Default::default()
                },
            )?),
            Adam::Fused | Adam::Chain => {
                let vars = vm
                    .data()
                    .lock()
                    .expect("the variable map's lock is not poisoned")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let cfg = AdamConfig {
                    weight_decay,
                    ..AdamConfig::new(lr)
                };
                let mut opt = AdamW::new(vars, cfg)?;
                opt.set_fused(adam == Adam::Fused);
                Self::Core(opt)
            }
        })
    }

    fn backward_step(&mut self, loss: &Tensor) -> Result<()> {
        match self {
            Self::Core(o) => o.step(&loss.backward()?, 1.0)?,
            Self::CandleNn(o) => o.backward_step(loss)?,
        }
        Ok(())
    }
}

/// Number of scalar parameters of a network.
pub fn parameter_count(cfg: &UNetConfig) -> Result<usize> {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    UNet::new(vb, cfg)?;
    let n = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    Ok(n)
}

/// Times `iters` training steps (with the optimiser `adam`) and `iters` forward passes after one warm-up step of
/// each, with the activations in `compute` (f32 master weights either way).
pub fn throughput(
    cfg: &UNetConfig,
    batch: usize,
    iters: usize,
    compute: DType,
    adam: Adam,
    device: &Device,
) -> Result<Throughput> {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, device);
    let mut net = UNet::new_train(vb, cfg)?;
    net.set_compute_dtype(compute)?;
    let parameters = vm
        .all_vars()
        .iter()
        .map(|v| v.as_tensor().elem_count())
        .sum();
    let mut opt = Optim::new(&vm, adam)?;
    let mut rng = NoiseRng::new(0);
    let r = cfg.resolution;
    let x = rng.randn(&[batch, cfg.in_channels, r, r], device)?;
    let eps = rng.randn(&[batch, cfg.out_channels, r, r], device)?;
    let t = Tensor::full(0.5f32, batch, device)?;
    let cond = (cfg.label_dim > 0)
        .then(|| Tensor::zeros((batch, cfg.label_dim), DType::F32, device))
        .transpose()?;
    let loss = || -> Result<Tensor> {
        Ok((net.forward(&x, &t, cond.as_ref())? - &eps)?
            .sqr()?
            .mean_all()?)
    };
    // The warm-up step, whose graph is measured.
    let l = loss()?;
    let nodes = l.sorted_nodes();
    let graph_tensors = nodes.len();
    let graph_bytes = nodes
        .iter()
        .map(|n| (n.elem_count() * n.dtype().size_in_bytes()) as u64)
        .sum();
    drop(nodes);
    opt.backward_step(&l)?;
    drop(l);
    let mut step = || -> Result<()> {
        opt.backward_step(&loss()?)?;
        Ok(())
    };
    device.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        step()?;
    }
    device.synchronize()?;
    let train = (iters * batch) as f64 / t0.elapsed().as_secs_f64();
    // The forward passes run, as sampling does, on a network that records no graph: the same variables as
    // untracked views (as the trainer's EMA network; a network loaded from a file has plain tensors), with
    // dropout on, as PyTorch's `no_grad` forward of its training-mode module in `bench/unet_ddpmpp.py`. (Until
    // 2026-12-06 they ran on the training network itself, whose variables make every pass record its graph.)
    let mut plain = UNet::new_train(
        vsdm_core::init::untracked_var_builder(&vm, DType::F32, device),
        cfg,
    )?;
    plain.set_compute_dtype(compute)?;
    let fwd = || -> Result<()> {
        plain
            .forward(&x, &t, cond.as_ref())?
            .sum_all()?
            .to_dtype(DType::F32)?
            .to_scalar::<f32>()?;
        Ok(())
    };
    fwd()?;
    let t0 = Instant::now();
    for _ in 0..iters {
        fwd()?;
    }
    device.synchronize()?;
    let forward = (iters * batch) as f64 / t0.elapsed().as_secs_f64();
    Ok(Throughput {
        parameters,
        batch,
        train_images_per_second: train,
        forward_images_per_second: forward,
        graph_tensors,
        graph_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The measured graph holds every parameter (each variable is a tracked leaf: at least 4 bytes per f32
    /// parameter) and grows with the batch by the activations of the added image.
    #[test]
    fn graph_size_counts_parameters_and_grows_with_the_batch() {
        let cfg = UNetConfig::tiny();
        let one = throughput(&cfg, 1, 1, DType::F32, Adam::Fused, &Device::Cpu).unwrap();
        let two = throughput(&cfg, 2, 1, DType::F32, Adam::Fused, &Device::Cpu).unwrap();
        assert!(one.graph_bytes >= 4 * one.parameters as u64, "{one:?}");
        // At least the input-sized noise prediction and the 32×32 feature maps of one more image.
        let per_image = two.graph_bytes - one.graph_bytes;
        let r = cfg.resolution as u64;
        assert!(
            per_image > 4 * r * r * cfg.model_channels as u64,
            "{per_image}"
        );
    }
}
