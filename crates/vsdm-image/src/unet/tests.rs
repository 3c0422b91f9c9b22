use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use vsdm_core::{NoiseRng, ScoreModel};

use super::*;

fn build(cfg: &UNetConfig, seed: u64) -> (VarMap, UNet) {
    let vm = VarMap::new();
    let vb =
        vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(seed), DType::F32, &Device::Cpu);
    let net = UNet::new(vb, cfg).unwrap();
    (vm, net)
}

/// The (name, variable) pairs of a var map.
fn named_vars(vm: &VarMap) -> Vec<(String, Var)> {
    let data = vm.data().lock().unwrap();
    data.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn randn(rng: &mut NoiseRng, shape: &[usize]) -> Tensor {
    rng.randn(shape, &Device::Cpu).unwrap()
}

fn times(v: &[f32]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

#[test]
fn output_has_the_data_shape() {
    let mut rng = NoiseRng::new(1);
    let (_, net) = build(&UNetConfig::tiny(), 0);
    let x = randn(&mut rng, &[2, 3, 32, 32]);
    let y = net.forward(&x, &times(&[0.1, 0.9]), None).unwrap();
    assert_eq!(y.dims(), &[2, 3, 32, 32]);

    // VSMD: position and velocity in, velocity noise out.
    let (_, net) = build(&UNetConfig::tiny().for_momentum(), 0);
    let z = randn(&mut rng, &[3, 6, 32, 32]);
    let y = net.forward(&z, &times(&[0.1, 0.5, 0.9]), None).unwrap();
    assert_eq!(y.dims(), &[3, 3, 32, 32]);
}

#[test]
fn bad_inputs_are_errors_naming_the_shape() {
    let (_, net) = build(&UNetConfig::tiny(), 0);
    let x = Tensor::zeros((2, 6, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = net
        .forward(&x, &times(&[0.1, 0.2]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("[2, 6, 32, 32]"), "{e}");
    // The image side: either axis, or both.
    for (h, w) in [(32, 16), (16, 32), (16, 16)] {
        let x = Tensor::zeros((1, 3, h, w), DType::F32, &Device::Cpu).unwrap();
        let e = net
            .forward(&x, &times(&[0.1]), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("[1, 3, {h}, {w}]")), "{e}");
    }
    let x = Tensor::zeros((2, 3, 32, 32), DType::F32, &Device::Cpu).unwrap();
    let e = net
        .forward(&x, &times(&[0.1]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("time input"), "{e}");
    let cfg = UNetConfig {
        label_dim: 10,
        ..UNetConfig::tiny()
    };
    let (_, net) = build(&cfg, 0);
    let e = net
        .forward(&x, &times(&[0.1, 0.2]), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("class-conditional"), "{e}");
    assert!(UNetConfig::preset("huge").is_err());
    let bad = UNetConfig {
        resolution: 31,
        ..UNetConfig::tiny()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("resolution"));
}

/// Every trainable tensor must receive a non-zero gradient: an op without a backward (fused softmax, layer norm,
/// bilinear upsampling in candle 0.11) would silently leave some at zero.
#[test]
fn every_parameter_gets_a_nonzero_gradient() {
    let cfg = UNetConfig {
        label_dim: 10,
        ..UNetConfig::tiny().for_momentum()
    };
    let (vm, net) = build(&cfg, 3);
    let mut rng = NoiseRng::new(4);
    let z = randn(&mut rng, &[2, 6, 32, 32]);
    let target = randn(&mut rng, &[2, 3, 32, 32]);
    let labels = Tensor::new(
        &[
            [0f32, 1., 0., 0., 0., 0., 0., 0., 0., 0.],
            [0., 0., 0., 0., 0., 0., 0., 1., 0., 0.],
        ],
        &Device::Cpu,
    )
    .unwrap();
    let y = net.forward(&z, &times(&[0.3, 0.7]), Some(&labels)).unwrap();
    let loss = (y - target).unwrap().sqr().unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let vars = named_vars(&vm);
    assert!(vars.len() > 50, "{} variables", vars.len());
    let mut dead = Vec::new();
    for (name, v) in &vars {
        let g = grads.get(v.as_tensor());
        let m = g.map(|g| {
            g.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        });
        if !m.is_some_and(|m| m > 0.0 && m.is_finite()) {
            dead.push(name.clone());
        }
    }
    assert!(dead.is_empty(), "no gradient for {dead:?}");
}

/// The tensor names follow EDM's `SongUNet` module tree.
#[test]
fn weights_are_named_like_the_module_tree() {
    let (vm, _) = build(&UNetConfig::tiny(), 0);
    let data = vm.data().lock().unwrap();
    let shape = |k: &str| {
        data.get(k)
            .unwrap_or_else(|| panic!("missing {k}"))
            .dims()
            .to_vec()
    };
    assert_eq!(shape("map_layer0.weight"), [128, 32]);
    assert_eq!(shape("map_layer1.bias"), [128]);
    assert_eq!(shape("enc.32x32_conv.weight"), [32, 3, 3, 3]);
    assert_eq!(shape("enc.32x32_block0.conv0.weight"), [32, 32, 3, 3]);
    assert_eq!(shape("enc.16x16_down.conv0.weight"), [32, 32, 3, 3]);
    assert_eq!(shape("enc.16x16_down.skip.weight"), [32, 32, 1, 1]);
    assert_eq!(shape("enc.16x16_block0.skip.weight"), [64, 32, 1, 1]);
    assert_eq!(shape("enc.16x16_block0.qkv.weight"), [192, 64, 1, 1]);
    assert_eq!(shape("enc.16x16_block0.norm2.weight"), [64]);
    assert_eq!(shape("dec.16x16_in0.proj.weight"), [64, 64, 1, 1]);
    assert_eq!(shape("dec.16x16_block0.conv0.weight"), [64, 128, 3, 3]);
    assert_eq!(shape("dec.16x16_block1.affine.weight"), [64, 128]);
    assert_eq!(shape("dec.32x32_up.conv0.weight"), [64, 64, 3, 3]);
    // Skips pop in reverse: 16×16 takes block0 (64) then the down block (32); 32×32 takes block0 (32) then
    // the stem conv (32).
    assert_eq!(shape("dec.16x16_block1.conv0.weight"), [64, 96, 3, 3]);
    assert_eq!(shape("dec.32x32_block0.conv0.weight"), [32, 96, 3, 3]);
    assert_eq!(shape("dec.32x32_block1.conv0.weight"), [32, 64, 3, 3]);
    assert_eq!(shape("dec.32x32_aux_norm.weight"), [32]);
    assert_eq!(shape("dec.32x32_aux_conv.weight"), [3, 32, 3, 3]);
    assert!(!data.contains_key("dec.16x16_in1.qkv.weight"));
    assert!(!data.contains_key("enc.32x32_block0.skip.weight"));
}

#[test]
fn resampling_matches_its_definition() {
    let x = Tensor::arange(0f32, 8., &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 2))
        .unwrap();
    let up = upsample2(&x).unwrap();
    let want_up = x.upsample_nearest2d(4, 4).unwrap();
    assert_eq!(
        up.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        want_up.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    // Several images and planes, odd sizes: the CPU kernel (untracked) and the broadcast (tracked) alike.
    let y = randn(&mut NoiseRng::new(3), &[2, 3, 5, 3]);
    let want = y.upsample_nearest2d(10, 6).unwrap();
    let tracked = candle_core::Var::from_tensor(&y).unwrap();
    for got in [
        upsample2(&y).unwrap(),
        upsample2(tracked.as_tensor()).unwrap(),
    ] {
        assert_eq!(
            got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            want.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
    let down = downsample2(&up).unwrap();
    assert_eq!(
        down.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    let pooled = x.avg_pool2d(2).unwrap();
    assert_eq!(
        downsample2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap(),
        pooled.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

/// The CPU resampling ops' gradients against candle's chains (a broadcast, whose backward sums each 2×2 block;
/// two sums over middle axes and a scaling, whose backward spreads a quarter): random values, several images
/// and planes, sides up to 10, a gradient probe read through a transpose; odd sides (either or both) upsample,
/// and downsample as before (an error from the chain's reshape).
#[test]
fn resampling_gradients_match_candles_chains() {
    let mut rng = NoiseRng::new(21);
    for dims in [
        [2usize, 3, 4, 6],
        [1, 2, 10, 2],
        [3, 1, 5, 3],
        // One side odd: the width (3, and 1, which halves to nothing), the height.
        [2, 2, 4, 3],
        [1, 1, 4, 1],
        [1, 2, 3, 4],
    ] {
        let x = candle_core::Var::from_tensor(&randn(&mut rng, &dims)).unwrap();
        let (b, c, h, w) = (dims[0], dims[1], dims[2], dims[3]);
        let up_chain = x
            .as_tensor()
            .reshape((b, c, h, 1, w, 1))
            .unwrap()
            .broadcast_as((b, c, h, 2, w, 2))
            .unwrap()
            .reshape((b, c, 2 * h, 2 * w))
            .unwrap();
        let mut pairs = vec![(upsample2(x.as_tensor()).unwrap(), up_chain, "up")];
        if h % 2 == 0 && w % 2 == 0 {
            let down_chain = x
                .as_tensor()
                .reshape((b, c, h / 2, 2, w / 2, 2))
                .unwrap()
                .sum(5)
                .unwrap()
                .sum(3)
                .unwrap()
                .affine(0.25, 0.0)
                .unwrap();
            pairs.push((downsample2(x.as_tensor()).unwrap(), down_chain, "down"));
        } else {
            assert!(downsample2(x.as_tensor()).is_err(), "{dims:?}: odd sides");
        }
        for (got, want, what) in pairs {
            let probe = randn(&mut rng, want.dims());
            let grad = |y: &Tensor| {
                let loss = (y.transpose(2, 3).unwrap() * probe.transpose(2, 3).unwrap())
                    .unwrap()
                    .sum_all()
                    .unwrap();
                loss.backward().unwrap().get(x.as_tensor()).unwrap().clone()
            };
            let d = vsdm_core::compare::max_abs_diff(&got, &want).unwrap();
            assert!(d == 0.0, "{dims:?} {what}: value {d}");
            let d = vsdm_core::compare::max_abs_diff(&grad(&got), &grad(&want)).unwrap();
            assert!(d < 1e-6, "{dims:?} {what}: gradient {d}");
        }
    }
}

#[test]
fn softmax_matches_the_fused_kernel() {
    let mut rng = NoiseRng::new(9);
    let x = randn(&mut rng, &[3, 5, 7]);
    let a = layers::softmax_wide(&x).unwrap();
    let b = candle_nn::ops::softmax_last_dim(&x).unwrap();
    let d = vsdm_core::compare::max_abs_diff(&a, &b).unwrap();
    assert!(d < 1e-6, "{d}");
    // An f64 input stays in f64 (to 1e-12 of exp(x)/Σexp(x) worked in f64 here, where an f32 pass is
    // ~1e-8 off); a bf16 one comes back in f32.
    let x64 = x.to_dtype(DType::F64).unwrap();
    let s = layers::softmax_wide(&x64).unwrap();
    assert_eq!(s.dtype(), DType::F64);
    let rows: Vec<Vec<f64>> = x64.reshape((15, 7)).unwrap().to_vec2().unwrap();
    let got: Vec<Vec<f64>> = s.reshape((15, 7)).unwrap().to_vec2().unwrap();
    for (r, g) in rows.iter().zip(&got) {
        let z: f64 = r.iter().map(|v| v.exp()).sum();
        for (v, g) in r.iter().zip(g) {
            assert!((v.exp() / z - g).abs() < 1e-12, "{} vs {g}", v.exp() / z);
        }
    }
    let half = layers::softmax_wide(&x.to_dtype(DType::BF16).unwrap()).unwrap();
    assert_eq!(half.dtype(), DType::F32);
}

/// The whole tiny U-Net: every parameter's gradient of a loss agrees between candle's own backwards (conv2d's
/// conv_transpose2d input gradient, candle_nn's op-by-op group norm) and this crate's ([`fastconv`],
/// [`fastnorm`]), switched one at a time and together (f32, ≤ 1e-5 relative in the max norm, worst tensor).
#[test]
fn unet_gradients_agree_between_backwards() {
    use fastconv::{set_conv_backward, ConvBackward};
    use fastnorm::{set_norm_backward, NormBackward};
    let cfg = UNetConfig::tiny();
    let (vm, net) = build(&cfg, 9);
    // Non-zero weights everywhere (EDM zero-initialises some convolutions).
    let mut rng = NoiseRng::new(9);
    for v in vm.all_vars() {
        v.set(&(randn(&mut rng, v.dims()) * 0.05).unwrap()).unwrap();
    }
    let x = randn(&mut rng, &[2, 3, 32, 32]);
    let t = times(&[0.3, 0.8]);
    let target = randn(&mut rng, &[2, 3, 32, 32]);
    let vars = named_vars(&vm);
    let grads = |conv, norm| {
        set_conv_backward(conv);
        set_norm_backward(norm);
        let y = net.forward(&x, &t, None).unwrap();
        let g = (y - &target)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .backward()
            .unwrap();
        vars.iter()
            .map(|(_, v)| g.get(v.as_tensor()).unwrap().clone())
            .collect::<Vec<_>>()
    };
    let reference = grads(ConvBackward::Candle, NormBackward::Candle);
    for (conv, norm) in [
        (ConvBackward::Gemm, NormBackward::Candle),
        (ConvBackward::Candle, NormBackward::Fused),
        (ConvBackward::Gemm, NormBackward::Fused),
    ] {
        let g = grads(conv, norm);
        let (mut worst, mut name) = (0f64, "");
        for ((n, _), (a, b)) in vars.iter().zip(reference.iter().zip(&g)) {
            let e = super::testutil::rel(a, b);
            if e > worst {
                (worst, name) = (e, n);
            }
        }
        assert!(
            worst < 1e-5,
            "{conv:?}/{norm:?}: worst relative gradient difference {worst:e} ({name})"
        );
    }
    set_conv_backward(ConvBackward::Gemm);
    set_norm_backward(NormBackward::Fused);
}

/// A dropout mask zeroes about a fraction p of the values, multiplies the others by exactly 1/(1 − p), and the
/// block's fused tail passes the same factors back as the gradient.
#[test]
fn dropout_zeroes_a_fraction_and_rescales_the_rest() {
    let dev = Device::Cpu;
    let p = 0.25;
    let n = 40_000;
    let mask = layers::dropout_mask(p, None).unwrap();
    assert!(layers::dropout_mask(0.0, None).is_none());
    // Through a 1×1 identity convolution with no skip: y = dropout(x).
    let x = candle_core::Var::from_tensor(
        &(Tensor::ones((1, 1, 200, 200), DType::F32, &dev).unwrap() * 2.0).unwrap(),
    )
    .unwrap();
    let w = candle_core::Var::from_tensor(&Tensor::ones((1, 1, 1, 1), DType::F32, &dev).unwrap())
        .unwrap();
    let b = candle_core::Var::from_tensor(&Tensor::zeros(1, DType::F32, &dev).unwrap()).unwrap();
    let skip = Tensor::zeros((1, 1, 200, 200), DType::F32, &dev).unwrap();
    let y = fastconv::residual(
        x.as_tensor(),
        w.as_tensor(),
        b.as_tensor(),
        &skip,
        Some(&mask),
        1.0,
        0,
    )
    .unwrap();
    let g = y.sum_all().unwrap().backward().unwrap();
    let yv = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let gv = g
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let scale = (1.0 / (1.0 - p)) as f32;
    let zeros = yv.iter().filter(|v| **v == 0.0).count();
    assert!(yv
        .iter()
        .all(|v| *v == 0.0 || (*v - 2.0 * scale).abs() < 1e-6));
    assert!(yv.iter().zip(&gv).all(|(y, g)| (*y == 0.0) == (*g == 0.0)));
    assert!(gv.iter().all(|g| *g == 0.0 || (*g - scale).abs() < 1e-6));
    // Binomial(n, p): standard deviation √(n p (1 − p)) ≈ 87; allow 5 of them.
    let expected = p * n as f64;
    assert!(
        (zeros as f64 - expected).abs() < 5.0 * (expected * (1.0 - p)).sqrt(),
        "{zeros} zeros, expected ≈ {expected}"
    );
}

/// The presets by their names, the structure names a network's config reports (checkpoints and weights
/// record it), and each invalid field named with its value and rule.
#[test]
fn presets_structure_names_and_invalid_fields() {
    let tiny = UNetConfig::tiny();
    let paper = UNetConfig::ddpmpp_cifar10();
    // The documented structures: EDM's DDPM++ CIFAR-10 (`--arch=ddpmpp`) and the tiny one, which drops nothing.
    let shape = |c: &UNetConfig| {
        let l = (c.model_channels, c.channel_mult.clone(), c.num_blocks);
        (l, c.attn_resolutions.clone(), c.dropout)
    };
    assert_eq!(shape(&paper), ((128, vec![2, 2, 2], 4), vec![16], 0.13));
    assert_eq!(shape(&tiny), ((32, vec![1, 2], 1), vec![16], 0.0));
    assert_eq!(UNetConfig::preset("tiny").unwrap(), tiny);
    assert_eq!(UNetConfig::preset("ddpmpp").unwrap(), paper);
    assert_eq!(UNetConfig::preset("paper").unwrap(), paper);
    let e = UNetConfig::preset("huge").unwrap_err().to_string();
    assert!(e.contains("arch = huge"), "{e}");
    assert_eq!((tiny.arch_name(), paper.arch_name()), ("tiny", "ddpmpp"));
    // Channel counts, dropout, labels and the input channels leave the structure's name alone ...
    let narrow = UNetConfig {
        model_channels: 8,
        dropout: 0.1,
        label_dim: 10,
        ..tiny.clone().for_momentum()
    };
    assert_eq!(narrow.arch_name(), "tiny");
    // ... the levels, blocks per level and attention resolutions each make another one.
    for custom in [
        UNetConfig {
            channel_mult: vec![1, 2, 2],
            ..tiny.clone()
        },
        UNetConfig {
            num_blocks: 2,
            ..tiny.clone()
        },
        UNetConfig {
            attn_resolutions: vec![8],
            ..tiny.clone()
        },
        UNetConfig {
            num_blocks: 2,
            ..paper.clone()
        },
        UNetConfig {
            attn_resolutions: vec![],
            ..paper.clone()
        },
    ] {
        assert_eq!(custom.arch_name(), "custom", "{custom:?}");
    }
    for ok in [
        tiny.clone(),
        paper.clone(),
        // The smallest image three levels halve twice, dropout at 0, the fewest channels groups of 4 allow.
        UNetConfig {
            resolution: 4,
            model_channels: 4,
            ..paper.clone()
        },
    ] {
        ok.validate().unwrap();
    }
    let bad = |edit: &dyn Fn(&mut UNetConfig), expect: &str| {
        let mut cfg = paper.clone();
        edit(&mut cfg);
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(expect), "{expect}: {e}");
    };
    bad(&|c| c.channel_mult.clear(), "channel_mult = []");
    bad(&|c| c.resolution = 0, "resolution = 0");
    bad(
        &|c| c.resolution = 34,
        "resolution = 34: must be divisible by 2^2",
    );
    bad(&|c| c.in_channels = 0, "in_channels = 0");
    bad(&|c| c.out_channels = 0, "out_channels = 0");
    bad(&|c| c.model_channels = 0, "model_channels = 0");
    bad(&|c| c.channel_mult_emb = 0, "channel_mult_emb = 0");
    bad(
        &|c| c.model_channels = 6,
        "model_channels = 6: must be a positive multiple of 4",
    );
    bad(&|c| c.channel_mult = vec![2, 0, 2], "found 0");
    bad(&|c| c.num_blocks = 0, "num_blocks = 0");
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        bad(&|c| c.time_scale = t, "time_scale");
    }
    for d in [1.0, -0.1, f64::NAN] {
        bad(&|c| c.dropout = d, "dropout");
    }
}

/// The decoder's blocks, (input, output) channels, as EDM's DDPM++ lays them out for the tiny config (32 and 64
/// channels at 32×32 and 16×16, one block a level): at the lowest resolution two blocks without a skip, then
/// each level's blocks take the concatenated skips of the encoder in reverse (the 16×16 block's 64 and the
/// downsampling block's 32; then the 32×32 block's 32 and the input convolution's 32) after the upsampling block.
#[test]
fn decoder_blocks_take_the_encoders_skips_in_reverse() {
    let (_, net) = build(&UNetConfig::tiny(), 0);
    let io: Vec<(usize, usize)> = net
        .dec
        .iter()
        .map(|b| (b.in_channels(), b.out_channels()))
        .collect();
    assert_eq!(
        io,
        [
            (64, 64),
            (64, 64),
            (128, 64),
            (96, 64),
            (64, 64),
            (96, 32),
            (64, 32)
        ]
    );
}

/// EDM's initialisation (`training/networks.py`, `weight_init`'s `xavier_uniform`): weights uniform on ±gain ·
/// √(6 / (fan_in + fan_out)) with the fans counting the kernel's positions (3×3: 9 · channels), zero biases,
/// "same" padding. 18,432 and 32,768 draws (candle's unseeded generator): the largest lies within 1 % of the
/// bound (all below 0.99 of it: probability < 10⁻⁸⁰), the mean square is bound²/3 within 5 % (7 and 10
/// standard deviations).
#[test]
fn layers_take_edms_xavier_uniform_initialisation() {
    let vm = VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let check = |w: &Tensor, bound: f64, what: &str| {
        let v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let max = v.iter().fold(0f64, |m, x| m.max(x.abs() as f64));
        let ms = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>() / v.len() as f64;
        assert!(
            max <= bound && max > 0.99 * bound,
            "{what}: max {max}, bound {bound}"
        );
        let want = bound * bound / 3.0;
        assert!(
            (ms / want - 1.0).abs() < 0.05,
            "{what}: mean square {ms}, want {want}"
        );
    };
    let c = layers::conv(32, 64, 3, 0.5, vb.pp("c")).unwrap();
    layers::linear(256, 128, 2.0, vb.pp("l")).unwrap();
    let data = vm.data().lock().unwrap();
    let bound = 0.5 * (6.0f64 / (32.0 * 9.0 + 64.0 * 9.0)).sqrt();
    check(data["c.weight"].as_tensor(), bound, "3×3 conv");
    check(
        data["l.weight"].as_tensor(),
        2.0 * (6.0f64 / 384.0).sqrt(),
        "linear",
    );
    for name in ["c.bias", "l.bias"] {
        let b = data[name].as_tensor().to_vec1::<f32>().unwrap();
        assert!(b.iter().all(|&x| x == 0.0), "{name}");
    }
    drop(data);
    // "Same" padding: a 3×3 and a 1×1 convolution keep the image's side.
    let x = Tensor::ones((1, 32, 5, 7), DType::F32, &Device::Cpu).unwrap();
    use candle_core::Module;
    assert_eq!(c.forward(&x).unwrap().dims(), [1, 64, 5, 7]);
    let one = layers::conv(32, 8, 1, 1.0, vb.pp("one")).unwrap();
    assert_eq!(one.forward(&x).unwrap().dims(), [1, 8, 5, 7]);
}

/// A training network draws fresh dropout masks on each pass after a seed (`set_noise_seed`) and the same
/// masks again after the same seed, so that a resumed run repeats its passes; an inference network has none.
#[test]
fn dropout_masks_are_fresh_each_pass_and_repeat_after_the_seed() {
    let cfg = UNetConfig {
        dropout: 0.3,
        ..UNetConfig::tiny()
    };
    let vm = VarMap::new();
    let vb = vsdm_core::init::seeded_var_builder(&vm, NoiseRng::new(4), DType::F32, &Device::Cpu);
    let net = UNet::new_train(vb.clone(), &cfg).unwrap();
    let eval = UNet::new(vb, &cfg).unwrap();
    let mut rng = NoiseRng::new(2);
    let x = randn(&mut rng, &[2, 3, 32, 32]);
    let t = times(&[0.2, 0.7]);
    let pass = |n: &UNet| -> Vec<f32> {
        let y = n.forward(&x, &t, None).unwrap();
        y.flatten_all().unwrap().to_vec1().unwrap()
    };
    let gap = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    };
    net.set_noise_seed(7);
    let (first, second) = (pass(&net), pass(&net));
    net.set_noise_seed(7);
    let again = pass(&net);
    net.set_noise_seed(8);
    let other = pass(&net);
    assert_eq!(first, again, "the same seed, other masks");
    assert!(
        gap(&first, &second) > 1e-4 * gap(&first, &pass(&eval)),
        "a second pass repeated the masks"
    );
    assert!(gap(&first, &other) > 0.0, "another seed, the same masks");
    assert_eq!(pass(&eval), pass(&eval));
}
