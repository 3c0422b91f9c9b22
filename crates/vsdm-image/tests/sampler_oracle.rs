//! The image sampling path with a perfect denoiser: for data x_0 ~ N(m, diag s²) on the image shape, the exact
//! ε-prediction at every grid time is known, and `sample_with_eps` (the path `vsdm-image sample` drives) must
//! then reproduce N(m, diag s²). Guards the image-shaped (channel × height × width) diagonal case end to end:
//! prior, ε → score conversion, Euler–Maruyama and the data part of the state.
//!
//! The oracle's only inputs from the process are its kernel coefficients, read through the public `perturb`
//! (z = α x_0 + σ ε, so α = perturb(1, 0) and σ = perturb(0, 1) per element); the posterior mean of ε given z
//! for Gaussian data, σ (z − α m) / (α² s² + σ²), is then standard Gaussian conditioning, independent of the
//! sampler's code.

use candle_core::{DType, Device, Tensor};
use vsdm_core::process::Marginals;
use vsdm_core::sampler::sample_with_eps;
use vsdm_core::{BetaSchedule, ForwardProcess, NoiseRng, SamplerConfig, SamplerKind, VarParams};

const SHAPE: [usize; 3] = [3, 4, 4];
/// Sampling error of a mean: s/√4000 ≤ 0.0064, so 4 of those; a broken path is off by orders of magnitude.
const TOL_MEAN: f32 = 0.025;

fn check(params: VarParams, what: &str) {
    let dev = Device::Cpu;
    let n: usize = SHAPE.iter().product();
    let m: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin() * 0.6).collect();
    let s: Vec<f32> = (0..n)
        .map(|i| 0.1 + 0.3 * ((i * 7 % 11) as f32 / 10.0))
        .collect();
    let mt = Tensor::from_vec(m.clone(), &SHAPE, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let st = Tensor::from_vec(s.clone(), &SHAPE, &dev)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let process = params
        .process(BetaSchedule::vsdm_default(), &SHAPE, &dev)
        .unwrap();
    let cfg = SamplerConfig::new(SamplerKind::EulerMaruyama, 400);
    let times = cfg.grid(process.schedule().t_max()).unwrap();
    let marg = process.marginals(&times, &dev).unwrap();
    let ones = Tensor::ones((1, SHAPE[0], SHAPE[1], SHAPE[2]), DType::F32, &dev).unwrap();
    let zeros = ones.zeros_like().unwrap();
    let coef = |k: usize| {
        let idx = Tensor::new(&[k as u32], &dev).unwrap();
        let alpha = marg.perturb(&ones, &idx, &zeros).unwrap().0;
        let sigma = marg.perturb(&zeros, &idx, &ones).unwrap().0;
        (alpha, sigma)
    };
    let batch = 4000;
    let mut rng = NoiseRng::new(5);
    // Start from the exact marginal at T, N(α_T m, α_T² s² + σ_T²), not the prior N(0, Σ_T): with β_max = 10
    // the forward process keeps α_T = e^{−½ d ∫β} of the data mean (15% for VP, more for small or negative
    // d), and that prior mismatch is the method's, not the sampler's.
    let kt = (0..times.len())
        .max_by(|&i, &j| times[i].total_cmp(&times[j]))
        .unwrap();
    let (at, sgt) = coef(kt);
    let sd_t = ((at.sqr().unwrap() * st.sqr().unwrap()).unwrap() + sgt.sqr().unwrap())
        .unwrap()
        .sqrt()
        .unwrap();
    let xi = rng.randn(&process.state_shape(batch), &dev).unwrap();
    let z_t = xi
        .broadcast_mul(&sd_t)
        .unwrap()
        .broadcast_add(&(at * &mt).unwrap())
        .unwrap();
    let run = sample_with_eps(
        &process,
        &cfg,
        z_t,
        |z, t| {
            let k = times
                .iter()
                .position(|&u| (u - t).abs() < 1e-12)
                .expect("sampler time on its grid");
            let (a, sg) = coef(k);
            let var = ((a.sqr()? * st.sqr()?)? + sg.sqr()?)?;
            let r = z.broadcast_sub(&(a * &mt)?)?;
            Ok(r.broadcast_mul(&sg)?.broadcast_div(&var)?)
        },
        &mut rng,
        false,
    )
    .unwrap();
    let x = process
        .data_part(&run.state)
        .unwrap()
        .flatten_from(1)
        .unwrap();
    let mean = x.mean(0).unwrap().to_vec1::<f32>().unwrap();
    let var = x
        .broadcast_sub(&x.mean_keepdim(0).unwrap())
        .unwrap()
        .sqr()
        .unwrap()
        .mean(0)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let worst = (0..n).map(|i| (mean[i] - m[i]).abs()).fold(0f32, f32::max);
    eprintln!("{what}: worst error of a mean {worst}");
    for i in 0..n {
        let sd = var[i].sqrt();
        // Sampling error of the sd: s/√8000 ≤ 0.0045, plus the 400-step discretisation.
        assert!(
            (mean[i] - m[i]).abs() < TOL_MEAN,
            "{what}: element {i} mean {} vs {}",
            mean[i],
            m[i]
        );
        assert!(
            (sd - s[i]).abs() < 0.03 + 0.1 * s[i],
            "{what}: element {i} sd {sd} vs {}",
            s[i]
        );
    }
}

#[test]
fn perfect_denoiser_reproduces_gaussian_images_vp() {
    check(VarParams::None, "VP");
}

#[test]
fn perfect_denoiser_reproduces_gaussian_images_vsdm_diagonal() {
    // a in [−0.4, 0.7]: d = 1 − 2a in [−0.4, 1.8], expanding directions included.
    let n: usize = SHAPE.iter().product();
    let a = (0..n)
        .map(|i| -0.4 + 1.1 * ((i * 5 % 13) as f64 / 12.0))
        .collect();
    check(VarParams::Diagonal(a), "VSDM");
}
