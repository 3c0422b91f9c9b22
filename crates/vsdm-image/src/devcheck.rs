//! Device agreement: the same seeded run on two devices (the CPU and CUDA) must give the same numbers.
//!
//! Both trainers are built from the same seed, so their initial weights, batches and noise come from the
//! project's own seeded RNG and are identical on both devices; the comparison then isolates the arithmetic
//! of the devices' kernels. Dropout stays on: its masks are a function of a seed that both trainers derive from
//! the run's seed and the update's number (`unet::dropout`), so both devices drop the same elements (the dropout
//! kernel alone is also compared on a fixed seed by [`kernel_agreement`]). Errors are relative in the max norm: ‖b − a‖∞ / ‖a‖∞, per tensor, the worst tensor
//! reported.

use candle_core::{DType, Device, Tensor};
use vsdm_core::compare::rel_err;
use vsdm_core::{InMemory, NoiseRng, ScoreModel};

use crate::error::Result;
use crate::method::{train_config, Budget, RunSpec};
use crate::train::new_trainer;
use crate::unet::{UNet, UNetConfig};

/// What [`compare`] measured: relative errors of device `b` against device `a`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceAgreement {
    pub parameters: usize,
    pub batch: usize,
    /// The initial weights (drawn on the CPU by the seeded RNG): expected exactly 0.
    pub init_weights: f64,
    /// The network's output on the same input.
    pub forward: f64,
    /// The method's denoising loss on the same batch, time indices and noise.
    pub loss: f64,
    /// The gradient of that loss, worst parameter tensor.
    pub gradient: f64,
    /// Name of the parameter tensor with the worst gradient error.
    pub gradient_worst: String,
    /// Weights after `steps` full training steps (AdamW, clipping, EMA, variational stages), worst tensor.
    pub weights_after: f64,
    /// The weight change of those steps (p_after − p_init), worst tensor: the strict view of the same numbers.
    pub update_after: f64,
    /// The EMA weights after those steps, worst tensor.
    pub ema_after: f64,
    /// The variational parameters (A or c) after those steps (0 when there are none or none were updated).
    pub variational_after: f64,
    pub steps: usize,
    /// Variational stages run during those steps.
    pub stages: usize,
}

fn rel_err_vec(a: &[f64], b: &[f64]) -> f64 {
    let n = a.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let d = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    if n > 0.0 {
        d / n
    } else {
        d
    }
}

/// Runs the same seeded computation on devices `a` and `b` and returns how far `b` is from `a`.
///
/// With `spec`'s dropout (the same masks on both devices: the forward pass below is seeded explicitly, the
/// loss and the steps by the trainers). The training steps use a variational stage after every `block` network
/// updates (`block = 1`: after each), so the backward simulation and the A (or c) update are compared too.
pub fn compare(
    spec: &RunSpec,
    batch: usize,
    steps: usize,
    block: usize,
    a: &Device,
    b: &Device,
) -> Result<DeviceAgreement> {
    let spec = spec.clone();
    let mut budget = Budget::cpu();
    budget.batch = batch;
    budget.block = block.max(1);
    budget.iters = steps.max(1) + 10;
    budget.n_traj = batch;
    budget.traj_steps = 10;
    budget.a_iters = 2;
    let mut tc = train_config(spec.method, &budget, 7);
    tc.warmup = 0;
    tc.cooldown = 0;
    let mut ta = new_trainer(&spec, tc.clone(), a)?;
    let mut tb = new_trainer(&spec, tc, b)?;
    let wa0 = ta.weights();
    let wb0 = tb.weights();
    let parameters = wa0.iter().map(|(_, t)| t.elem_count()).sum();
    let mut init_weights = 0f64;
    for ((_, x), (_, y)) in wa0.iter().zip(&wb0) {
        init_weights = init_weights.max(rel_err(x, y)?);
    }

    // Inputs drawn once on the CPU.
    let cfg = &spec.unet;
    let mut rng = NoiseRng::new(11);
    let r = cfg.resolution;
    let x = rng.randn(&[batch, cfg.in_channels, r, r], &Device::Cpu)?;
    let t = Tensor::from_vec(
        (0..batch)
            .map(|i| (0.05 + 0.9 * i as f64 / batch.max(2) as f64) as f32)
            .collect::<Vec<_>>(),
        batch,
        &Device::Cpu,
    )?;
    let cond = (cfg.label_dim > 0)
        .then(|| {
            let labels: Vec<u32> = (0..batch as u32)
                .map(|i| i % cfg.label_dim as u32)
                .collect();
            let l = Tensor::new(labels.as_slice(), &Device::Cpu)?;
            candle_nn::encoding::one_hot(l, cfg.label_dim, 1f32, 0f32)
        })
        .transpose()?;
    let images = (rng.randn(&[4 * batch, 3, r, r], &Device::Cpu)? * 0.5)?.clamp(-1f32, 1f32)?;
    let on = |d: &Device, t: &Tensor| t.to_device(d);

    ta.model().set_noise_seed(1);
    tb.model().set_noise_seed(1);
    let fa = ta.model().forward(
        &on(a, &x)?,
        &on(a, &t)?,
        cond.as_ref().map(|c| on(a, c)).transpose()?.as_ref(),
    )?;
    let fb = tb.model().forward(
        &on(b, &x)?,
        &on(b, &t)?,
        cond.as_ref().map(|c| on(b, c)).transpose()?.as_ref(),
    )?;
    let forward = rel_err(&fa, &fb)?;

    // The method's loss and its gradient on the same batch (the trainers' RNGs advance identically).
    let x0a = on(a, &images.narrow(0, 0, batch)?)?;
    let x0b = on(b, &images.narrow(0, 0, batch)?)?;
    let ca = cond.as_ref().map(|c| on(a, c)).transpose()?;
    let cb = cond.as_ref().map(|c| on(b, c)).transpose()?;
    let la = ta.score_loss(&x0a, ca.as_ref())?;
    let lb = tb.score_loss(&x0b, cb.as_ref())?;
    let loss = rel_err(&la, &lb)?;
    let ga = la.backward()?;
    let gb = lb.backward()?;
    let (mut gradient, mut gradient_worst) = (0f64, String::new());
    for ((name, va), (_, vbt)) in wa0.iter().zip(&wb0) {
        if let (Some(x), Some(y)) = (ga.get(va), gb.get(vbt)) {
            let e = rel_err(x, y)?;
            if e > gradient {
                gradient = e;
                gradient_worst = name.clone();
            }
        }
    }

    // Full training steps on the same data.
    let wa_init: Vec<Tensor> = wa0
        .iter()
        .map(|(_, t)| t.copy())
        .collect::<candle_core::Result<_>>()?;
    let mut da = InMemory::new(on(a, &images)?)?;
    let mut db = InMemory::new(on(b, &images)?)?;
    let mut stages = 0;
    for _ in 0..steps {
        let ra = ta.step(&mut da)?;
        tb.step(&mut db)?;
        stages += usize::from(ra.stage.is_some());
    }
    let (mut weights_after, mut update_after) = (0f64, 0f64);
    for (((_, pa), (_, pb)), p0) in ta.weights().iter().zip(&tb.weights()).zip(&wa_init) {
        weights_after = weights_after.max(rel_err(pa, pb)?);
        let p0 = p0.to_device(pa.device())?;
        update_after =
            update_after.max(rel_err(&(pa - &p0)?, &(pb.to_device(pa.device())? - &p0)?)?);
    }
    let mut ema_after = 0f64;
    for ((_, x), (_, y)) in ta.ema_weights().iter().zip(&tb.ema_weights()) {
        ema_after = ema_after.max(rel_err(x, y)?);
    }
    let variational_after = rel_err_vec(ta.params().values(), tb.params().values());
    Ok(DeviceAgreement {
        parameters,
        batch,
        init_weights,
        forward,
        loss,
        gradient,
        gradient_worst,
        weights_after,
        update_after,
        ema_after,
        variational_after,
        steps,
        stages,
    })
}

/// Tolerances of [`precision_agreement`] for 16-bit activations (relative L2 of the output, of the worst
/// parameter's gradient). bf16 keeps 8 significant bits (unit rounding 2⁻⁹), f16 11; a 20-to-60-layer network
/// accumulates a few of those per layer, so the bounds are loose by design: they catch a broken cast (errors of
/// order 1, a missing gradient) rather than grade the rounding. Measured values are printed by `check-device`.
pub const LOW_PRECISION_TOL: (f64, f64) = (5e-2, 2e-1);

/// What [`precision_agreement`] measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PrecisionAgreement {
    /// Relative L2 error of the output.
    pub forward: f64,
    /// Relative L2 error of the gradient, worst parameter tensor.
    pub gradient: f64,
    pub gradient_worst: String,
}

/// ‖b − a‖₂ / ‖a‖₂ on the CPU in f64.
fn rel_l2(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let b = b.to_device(&Device::Cpu)?.to_dtype(DType::F64)?;
    let d = (&b - &a)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
    let n = a.sqr()?.sum_all()?.to_scalar::<f64>()?;
    Ok(if n > 0.0 { (d / n).sqrt() } else { d.sqrt() })
}

/// The training network with activations in `dtype` against the same network in f32, on `device`: the same
/// seeded f32 weights, input, times and target; output and gradient of the ε-MSE loss. Every gradient must
/// exist and be f32 (the master weights). EDM's zero-initialised last convolutions of each branch (1e-5 of the
/// usual scale) are first given a trained network's scale (N(0, 0.05²)), as their initial outputs would sit
/// below f16's normal range. Dropout is off.
pub fn precision_agreement(
    cfg: &UNetConfig,
    batch: usize,
    dtype: DType,
    device: &Device,
) -> Result<PrecisionAgreement> {
    let mut cfg = cfg.clone();
    cfg.dropout = 0.0;
    let vm = candle_nn::VarMap::new();
    let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(21), DType::F32, device);
    let mut net = UNet::new_train(vb, &cfg)?;
    let mut rng = NoiseRng::new(22);
    // Sorted by name, so that the rescaling below draws the same values for the same tensors on every run.
    let vars: Vec<(String, candle_core::Var)> = {
        let data = vm
            .data()
            .lock()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut v: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    for (name, v) in &vars {
        if name.ends_with("conv1.weight")
            || name.ends_with("proj.weight")
            || name.ends_with("aux_conv.weight")
        {
            v.set(&(rng.randn(v.dims(), device)? * 0.05)?)?;
        }
    }
    let r = cfg.resolution;
    let x = rng.randn(&[batch, cfg.in_channels, r, r], device)?;
    let eps = rng.randn(&[batch, cfg.out_channels, r, r], device)?;
    let t = Tensor::from_vec(
        (0..batch)
            .map(|i| (0.05 + 0.9 * i as f64 / batch.max(2) as f64) as f32)
            .collect::<Vec<_>>(),
        batch,
        device,
    )?;
    let cond = (cfg.label_dim > 0)
        .then(|| Tensor::zeros((batch, cfg.label_dim), DType::F32, device))
        .transpose()?;
    let mut run = |dt: DType| -> Result<(Tensor, Vec<Option<Tensor>>)> {
        net.set_compute_dtype(dt)?;
        let y = net.forward(&x, &t, cond.as_ref())?;
        if y.dtype() != DType::F32 {
            return Err(candle_core::Error::Msg(format!(
                "{dt:?} network returned {:?}, not f32",
                y.dtype()
            ))
            .into());
        }
        let g = (&y - &eps)?.sqr()?.mean_all()?.backward()?;
        Ok((
            y,
            vars.iter()
                .map(|(_, v)| g.get(v.as_tensor()).cloned())
                .collect(),
        ))
    };
    let (ya, ga) = run(DType::F32)?;
    let (yb, gb) = run(dtype)?;
    let forward = rel_l2(&ya, &yb)?;
    let (mut gradient, mut gradient_worst) = (0f64, String::new());
    for ((name, _), (a, b)) in vars.iter().zip(ga.iter().zip(&gb)) {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(
                candle_core::Error::Msg(format!("{dtype:?}: no gradient for {name}")).into(),
            );
        };
        if b.dtype() != DType::F32 {
            return Err(candle_core::Error::Msg(format!(
                "{dtype:?}: gradient of {name} is {:?}, not f32",
                b.dtype()
            ))
            .into());
        }
        let e = rel_l2(a, b)?;
        if e > gradient || e.is_nan() {
            gradient = e;
            gradient_worst = name.clone();
        }
    }
    Ok(PrecisionAgreement {
        forward,
        gradient,
        gradient_worst,
    })
}

/// Tolerances of [`conv_agreement`] (relative max-norm error against candle's f32 convolution): exact f32
/// arithmetic (the 1e-5), TF32 tensor cores (inputs rounded to 10 mantissa bits, unit rounding 2⁻¹¹ ≈
/// 4.9e-4, errors of a few units after accumulation) and bf16 activations (8 bits, 2⁻⁹ ≈ 2e-3; the same
/// loose output bound as [`LOW_PRECISION_TOL`]).
pub const CONV_TOL: [(&str, f64); 3] = [("f32", 1e-5), ("tf32", 5e-3), ("bf16", 5e-2)];

/// The convolution cases of `check-device`: the paper-scale network's 3×3 and 1×1 convolutions at 32×32,
/// 16×16 and 8×8 (batch, in, out channels, side, kernel; "same" padding).
pub const CONV_CASES: [(usize, usize, usize, usize, usize); 5] = [
    (8, 3, 128, 32, 3),
    (8, 128, 128, 32, 3),
    (8, 256, 256, 16, 3),
    (8, 512, 256, 8, 3),
    (8, 256, 128, 16, 1),
];

/// What [`conv_agreement`] measured for one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConvAgreement {
    /// `b×ci×h×h ⊛ co×ci×k×k`.
    pub case: String,
    pub forward: f64,
    pub input_gradient: f64,
    pub weight_gradient: f64,
    pub bias_gradient: f64,
}

impl ConvAgreement {
    pub fn worst(&self) -> f64 {
        self.forward
            .max(self.input_gradient)
            .max(self.weight_gradient)
            .max(self.bias_gradient)
    }
}

/// `y` in f32 followed by the gradients of ⟨probe, y⟩ (`probe` a CPU tensor, moved to `y`'s device) for
/// `vars`, in their order; an error naming `what` when one of them received none.
fn probed(y: Tensor, probe: &Tensor, vars: &[candle_core::Var], what: &str) -> Result<Vec<Tensor>> {
    let y = y.to_dtype(DType::F32)?;
    let g = (&y * probe.to_device(y.device())?)?.sum_all()?.backward()?;
    let mut r = vec![y];
    for v in vars {
        r.push(
            g.get(v.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("{what}: a gradient is missing")))?,
        );
    }
    Ok(r)
}

/// The layer convolution with its bias ([`crate::unet::fastconv::conv2d_bias`], whatever backward this thread
/// selected) on `device` with activations in `dtype`, against candle's own `conv2d` plus a broadcast bias and
/// their backward on the CPU in f32: fresh seeded inputs per case, the value and the three gradients of
/// ⟨probe, y⟩; relative max-norm errors.
pub fn conv_agreement(
    cases: &[(usize, usize, usize, usize, usize)],
    dtype: DType,
    device: &Device,
) -> Result<Vec<ConvAgreement>> {
    let mut rng = NoiseRng::new(31);
    let mut out = Vec::with_capacity(cases.len());
    let cpu = Device::Cpu;
    for &(b, ci, co, h, k) in cases {
        let p = k / 2;
        let inputs = [
            rng.randn(&[b, ci, h, h], &cpu)?,
            (rng.randn(&[co, ci, k, k], &cpu)? * (1.0 / ((ci * k * k) as f64).sqrt()))?,
            rng.randn(&[co], &cpu)?,
        ];
        let probe = rng.randn(&[b, co, h, h], &cpu)?;
        let run = |dev: &Device, dt: DType, reference: bool| -> Result<Vec<Tensor>> {
            let vars = inputs
                .iter()
                .map(|t| candle_core::Var::from_tensor(&t.to_device(dev)?.to_dtype(dt)?))
                .collect::<candle_core::Result<Vec<_>>>()?;
            let [x, w, bias] = [0, 1, 2].map(|i| vars[i].as_tensor());
            let y = if reference {
                x.conv2d(w, p, 1, 1, 1)?
                    .broadcast_add(&bias.reshape((1, co, 1, 1))?)?
            } else {
                crate::unet::fastconv::conv2d_bias(x, w, bias, p)?
            };
            probed(y, &probe, &vars, &format!("conv {b}×{ci}×{h}×{h}"))
        };
        let (a, z) = (run(&cpu, DType::F32, true)?, run(device, dtype, false)?);
        out.push(ConvAgreement {
            case: format!("{b}×{ci}×{h}×{h} ⊛ {co}×{ci}×{k}×{k}"),
            forward: rel_err(&a[0], &z[0])?,
            input_gradient: rel_err(&a[1], &z[1])?,
            weight_gradient: rel_err(&a[2], &z[2])?,
            bias_gradient: rel_err(&a[3], &z[3])?,
        });
    }
    Ok(out)
}

/// The group-norm cases of `check-device`: the paper-scale network's normalisations at 32×32, 16×16 and 8×8
/// (batch, channels, side, groups, followed by SiLU), EDM's min(32, C/4) groups.
pub const NORM_CASES: [(usize, usize, usize, usize, bool); 4] = [
    (8, 128, 32, 32, true),
    (8, 256, 16, 32, true),
    (8, 512, 8, 32, false),
    (8, 3, 32, 1, false),
];

/// What [`norm_agreement`] measured for one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NormAgreement {
    /// `b×c×h×h`, groups, SiLU.
    pub case: String,
    pub value: f64,
    pub input_gradient: f64,
    pub scale_gradient: f64,
    pub shift_gradient: f64,
}

impl NormAgreement {
    pub fn worst(&self) -> f64 {
        self.value
            .max(self.input_gradient)
            .max(self.scale_gradient)
            .max(self.shift_gradient)
    }
}

/// The U-Net's group normalisation ([`crate::unet::fastnorm::group_norm`], whatever backward this thread selected:
/// on CUDA with `--norm kernel`, the crate's own kernels) on `device` with activations in `dtype` (f32 scale and
/// shift, as in the network), against candle_nn's
/// `GroupNorm` (and candle's SiLU) with candle's own backward on the CPU: fresh seeded inputs per case with a
/// mean far from 0 and a scale near 1, the value and the gradients of ⟨probe, y⟩ for x, γ and β; relative
/// max-norm errors.
pub fn norm_agreement(
    cases: &[(usize, usize, usize, usize, bool)],
    dtype: DType,
    device: &Device,
) -> Result<Vec<NormAgreement>> {
    let mut rng = NoiseRng::new(37);
    let cpu = Device::Cpu;
    let mut out = Vec::with_capacity(cases.len());
    for &(b, c, h, groups, silu) in cases {
        let eps = 1e-5;
        let inputs = [
            ((rng.randn(&[b, c, h, h], &cpu)? * 2.0)? + 3.0)?,
            ((rng.randn(&[c], &cpu)? * 0.2)? + 1.0)?,
            (rng.randn(&[c], &cpu)? * 0.2)?,
        ];
        let probe = rng.randn(&[b, c, h, h], &cpu)?;
        let run = |dev: &Device, reference: bool| -> Result<Vec<Tensor>> {
            // Activations in `dtype` on the device under test; scale and shift stay f32, as in the network.
            let vars = inputs
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let t = t.to_device(dev)?;
                    let t = if i == 0 && !reference {
                        t.to_dtype(dtype)?
                    } else {
                        t
                    };
                    candle_core::Var::from_tensor(&t)
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            let [x, gamma, beta] = [0, 1, 2].map(|i| vars[i].as_tensor());
            let y = if reference {
                let gn = candle_nn::GroupNorm::new(gamma.clone(), beta.clone(), c, groups, eps)?;
                let y = candle_core::Module::forward(&gn, x)?;
                if silu {
                    candle_nn::ops::silu(&y)?
                } else {
                    y
                }
            } else {
                // As the network's norm layer normalises.
                crate::unet::fastnorm::group_norm_autocast(x, gamma, beta, groups, eps, silu)?
            };
            probed(y, &probe, &vars, &format!("group norm {b}×{c}×{h}×{h}"))
        };
        let (a, z) = (run(&cpu, true)?, run(device, false)?);
        out.push(NormAgreement {
            case: format!(
                "{b}×{c}×{h}×{h}, {groups} group{}{}",
                if groups == 1 { "" } else { "s" },
                if silu { ", SiLU" } else { "" }
            ),
            value: rel_err(&a[0], &z[0])?,
            input_gradient: rel_err(&a[1], &z[1])?,
            scale_gradient: rel_err(&a[2], &z[2])?,
            shift_gradient: rel_err(&a[3], &z[3])?,
        });
    }
    Ok(out)
}

/// What [`kernel_agreement`] measured for one element-wise kernel: of `values` compared, how many differ from
/// the CPU's in any bit, and the relative max-norm error.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KernelAgreement {
    pub kernel: String,
    pub values: usize,
    pub differing: usize,
    pub error: f64,
}

/// Counts the values of `b` that differ from `a`'s in any bit (both read as f32) and the relative error.
fn bitwise(kernel: String, a: &Tensor, b: &Tensor) -> Result<KernelAgreement> {
    let a = a
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let b = b
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?;
    let (va, vb) = (a.to_vec1::<f32>()?, b.to_vec1::<f32>()?);
    Ok(KernelAgreement {
        kernel,
        values: va.len(),
        differing: va
            .iter()
            .zip(&vb)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count(),
        error: rel_err(&a, &b)?,
    })
}

/// The element-wise kernels whose CPU loops compute the same f32 operations in the same order (so the same
/// bits are expected): the dropout product of a fixed seed (`unet::dropout`, f32 and bf16, a
/// 128×256×16×16 activation) and three AdamW steps and EMA updates (`vsdm_core::adamw`, 1,000,003 values, weight
/// decay and a gradient scale), on `device` against the CPU from the same inputs.
pub fn kernel_agreement(device: &Device) -> Result<Vec<KernelAgreement>> {
    use vsdm_core::adamw::{ema, step, Backend, Factors};
    use vsdm_core::optim::AdamConfig;
    let cpu = Device::Cpu;
    let mut rng = NoiseRng::new(41);
    let mut out = Vec::new();
    let x = rng.randn(&[128, 256, 16, 16], &cpu)?;
    let mask = crate::unet::dropout::DropMask {
        seed: 0x0123_4567_89AB_CDEF,
        p: 0.13,
    };
    for dt in [DType::F32, DType::BF16] {
        let x = x.to_dtype(dt)?;
        let a = mask.apply(&x)?;
        let b = mask.apply(&x.to_device(device)?)?;
        out.push(bitwise(format!("dropout ({dt:?})"), &a, &b)?);
    }
    let n = 1_000_003;
    let cfg = AdamConfig {
        weight_decay: 0.01,
        ..AdamConfig::new(2e-4)
    };
    let theta = rng.randn(&[n], &cpu)?;
    let mv = rng.randn(&[2 * n], &cpu)?.abs()?;
    let grads = (0..3)
        .map(|_| rng.randn(&[n], &cpu))
        .collect::<vsdm_core::Result<Vec<_>>>()?;
    let run = |dev: &Device| -> Result<(Tensor, Tensor, Tensor)> {
        // Copies: on the CPU `to_device` shares the storage, which the steps update in place.
        let (th, mv) = (theta.to_device(dev)?.copy()?, mv.to_device(dev)?.copy()?);
        let avg = th.copy()?;
        for (k, g) in grads.iter().enumerate() {
            let f = Factors::new(&cfg, 2e-4, k + 1, 0.7);
            step(&th, &mv, &g.to_device(dev)?, f, Backend::Native)?;
            ema(&avg, &th, 0.999, Backend::Native)?;
        }
        Ok((th, mv, avg))
    };
    let (a, b) = (run(&cpu)?, run(device)?);
    out.push(bitwise("AdamW parameters (3 steps)".into(), &a.0, &b.0)?);
    out.push(bitwise("AdamW moments".into(), &a.1, &b.1)?);
    out.push(bitwise("EMA (3 updates)".into(), &a.2, &b.2)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The harness of `check-device`'s group-norm table, on the CPU: the analytic backward (fused with SiLU)
    /// agrees with candle_nn's `GroupNorm`, candle's SiLU and their autograd to 1e-5 in every case, with and
    /// without SiLU, one channel per group and several; bf16 activations within their tolerance.
    #[test]
    fn norm_agreement_on_the_cpu() {
        let cases = [(2, 16, 8, 4, true), (2, 8, 4, 2, false), (2, 4, 3, 4, true)];
        let rows = norm_agreement(&cases, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(rows.len(), cases.len());
        for r in rows {
            assert!(r.worst() < 1e-5, "{r:?}");
        }
        // bf16 activations (through the layer's casts on the CPU): within check-device's 2e-2, and the
        // comparison sees the rounding.
        for r in norm_agreement(&cases, DType::BF16, &Device::Cpu).unwrap() {
            eprintln!("{r:?}");
            assert!(r.worst() < 2e-2 && r.worst() > 1e-4, "{r:?}");
        }
    }

    /// Mixed precision keeps f32 master weights (the function itself fails on an output or gradient that is not
    /// f32, or a variable without a gradient). With f64 activations the values agree to f32 rounding (the casts
    /// carry the gradients unchanged); with f16 activations (11-bit significand, relative rounding 2⁻¹¹ per
    /// operation) within 1% on the output and 5% on each parameter's gradient (relative L2), tighter than the
    /// loose [`LOW_PRECISION_TOL`] of `check-device`. bf16 runs the same casts, but candle 0.11.1's CPU
    /// convolution has no bf16 kernel, so bf16 is checked on the GPU (`vsdm-image --cuda check-device`).
    #[test]
    fn precision_agreement_on_the_cpu() {
        let cfg = UNetConfig::tiny();
        let r = precision_agreement(&cfg, 2, DType::F64, &Device::Cpu).unwrap();
        assert!(r.forward < 1e-5 && r.gradient < 1e-4, "{r:?}");
        eprintln!("{r:?}");
        let r = precision_agreement(&cfg, 2, DType::F16, &Device::Cpu).unwrap();
        let (to, tg) = LOW_PRECISION_TOL;
        // Above f32 rounding in both: the comparison sees the precision, and names the worst tensor.
        assert!(
            r.forward > 1e-5 && r.forward < 1e-2 && r.gradient > 1e-5 && r.gradient < 5e-2,
            "{r:?}"
        );
        assert!(
            r.gradient_worst.ends_with(".weight") || r.gradient_worst.ends_with(".bias"),
            "{r:?}"
        );
        assert!(r.forward < to && r.gradient < tg, "{r:?}");
        eprintln!("{r:?}");
    }

    /// The layer convolution agrees with candle's plain conv2d, bias addition and their backward on the CPU:
    /// the GEMM backward in f32 to 1e-5 (`--conv cudnn` and `--conv patch` run it too on CPU tensors), f16
    /// activations within the 16-bit tolerance and above f32 rounding (the comparison sees the precision).
    #[test]
    fn conv_agreement_on_the_cpu() {
        use crate::unet::fastconv::{set_conv_backward, ConvBackward};
        let cases = [(2, 3, 8, 8, 3), (2, 8, 4, 6, 1)];
        for mode in [ConvBackward::Gemm, ConvBackward::Cudnn, ConvBackward::Patch] {
            set_conv_backward(mode);
            let rows = conv_agreement(&cases, DType::F32, &Device::Cpu).unwrap();
            assert_eq!(rows.len(), cases.len());
            for r in rows {
                assert!(r.worst() < CONV_TOL[0].1, "{mode:?}: {r:?}");
            }
        }
        set_conv_backward(ConvBackward::Gemm);
        for r in conv_agreement(&cases, DType::F16, &Device::Cpu).unwrap() {
            assert!(r.worst() > 1e-5 && r.worst() < CONV_TOL[2].1, "f16: {r:?}");
        }
    }

    /// The network comparison with dropout on, CPU against CPU: the two trainers draw the same masks (the
    /// forward pass, the loss, the gradients and the weights after two steps agree exactly), which is what lets
    /// `check-device` keep dropout on; and dropout does act (a differently seeded forward pass differs).
    #[test]
    fn compare_with_dropout_on_the_cpu() {
        use crate::method::Method;
        let cpu = Device::Cpu;
        let unet = UNetConfig {
            model_channels: 8,
            dropout: 0.3,
            ..UNetConfig::tiny()
        };
        let spec = RunSpec {
            method: Method::Vsdm,
            unet: unet.clone(),
            precision: Default::default(),
            data: Default::default(),
            output: None,
        };
        let r = compare(&spec, 2, 2, 1, &cpu, &cpu).unwrap();
        assert_eq!(
            [r.forward, r.loss, r.gradient, r.weights_after, r.ema_after],
            [0.0; 5],
            "{r:?}"
        );
        // What it counted: the network's parameters, the batch, the steps and a variational stage after each.
        let vm = candle_nn::VarMap::new();
        UNet::new_train(
            candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &cpu),
            &unet,
        )
        .unwrap();
        let parameters: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(
            (r.parameters, r.batch, r.steps, r.stages),
            (parameters, 2, 2, 2),
            "{r:?}"
        );
        let vm = candle_nn::VarMap::new();
        let net = UNet::new_train(
            candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &cpu),
            &unet,
        )
        .unwrap();
        // Random weights: the initial second convolution of each block is (near) zero, which would hide the mask.
        let mut rng = NoiseRng::new(2);
        for v in vm.all_vars() {
            v.set(&(rng.randn(v.dims(), &cpu).unwrap() * 0.2).unwrap())
                .unwrap();
        }
        let x = rng.randn(&[2, 3, 32, 32], &cpu).unwrap();
        let t = Tensor::new(&[0.3f32, 0.7], &cpu).unwrap();
        let run = |seed| {
            net.set_noise_seed(seed);
            net.forward(&x, &t, None).unwrap()
        };
        assert_eq!(rel_err(&run(5), &run(5)).unwrap(), 0.0);
        assert!(rel_err(&run(5), &run(6)).unwrap() > 1e-3);
    }

    /// The harness of `check-device`'s element-wise table, on the CPU against itself: every row compares the
    /// values it names and finds no difference (on a GPU the same rows compare the kernels).
    #[test]
    fn kernel_agreement_on_the_cpu() {
        let rows = kernel_agreement(&Device::Cpu).unwrap();
        assert_eq!(rows.len(), 5);
        for r in rows {
            assert!(
                r.values >= 1_000_003 && r.differing == 0 && r.error == 0.0,
                "{r:?}"
            );
        }
    }

    /// The error measures against hand-computed values: the max-norm error relative to the first argument's
    /// max norm (absolute where it is 0), the L2 error likewise, and the bitwise count, in which −0 differs
    /// from 0 and one unit in the last place counts.
    #[test]
    fn error_measures_against_hand_computed_values() {
        assert_eq!(rel_err_vec(&[1.0, -4.0, 2.0], &[1.5, -4.0, 1.0]), 0.25);
        assert_eq!(rel_err_vec(&[0.0, 0.0], &[0.0, -0.5]), 0.5);
        assert_eq!(rel_err_vec(&[], &[]), 0.0);
        let cpu = Device::Cpu;
        let t = |v: &[f32]| Tensor::new(v, &cpu).unwrap();
        assert!((rel_l2(&t(&[3.0, 4.0]), &t(&[3.0, 5.0])).unwrap() - 0.2).abs() < 1e-12);
        assert!((rel_l2(&t(&[0.0, 0.0]), &t(&[3.0, 4.0])).unwrap() - 5.0).abs() < 1e-12);
        let up = f32::from_bits(2f32.to_bits() + 1);
        let r = bitwise(
            "k".into(),
            &t(&[1.0, 0.0, 3.0, 2.0]),
            &t(&[1.0, -0.0, 3.0, up]),
        )
        .unwrap();
        assert_eq!((r.kernel.as_str(), r.values, r.differing), ("k", 4, 2));
        assert_eq!(r.error, (up as f64 - 2.0) / 3.0);
        let h = |v: &[f32]| t(v).to_dtype(DType::BF16).unwrap();
        let r = bitwise("h".into(), &h(&[1.0, 2.0, 4.0]), &h(&[1.0, 2.0, -4.0])).unwrap();
        assert_eq!((r.values, r.differing, r.error), (3, 1, 2.0));
    }

    #[test]
    fn compute_precision_is_set_and_checked() {
        let vm = candle_nn::VarMap::new();
        let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
        let mut net = UNet::new(vb, &UNetConfig::tiny()).unwrap();
        assert_eq!(net.compute_dtype(), DType::F32);
        net.set_compute_dtype(DType::BF16).unwrap();
        assert_eq!(net.compute_dtype(), DType::BF16);
        assert!(net.set_compute_dtype(DType::U8).is_err());
    }
}
