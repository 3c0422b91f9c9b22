/* AdamW as two element-wise kernels per parameter tensor (f32), for `optim::AdamW` on CUDA.
 *
 * The optimiser's step was a chain of about 17 candle kernels per parameter tensor (scaling the gradient, the
 * two moment updates, the bias corrections, the square root, the division, the weight decay and the update):
 * on the paper-scale U-Net (≈ 300 parameter tensors) several thousand launches and as many passes over the
 * parameters per step. Here the moments m and v of one tensor live in one buffer `mv` (m in its first n values,
 * v in the next n) and a step is two launches:
 *
 *   adamw_moments: g = G·s;  m ← m·β₁ + g·(1 − β₁);  v ← v·β₂ + g²·(1 − β₂)
 *   adamw_apply:   θ ← θ·(1 − lr·λ) − lr · (m/(1 − β₁ᵏ)) / (√(v/(1 − β₂ᵏ)) + ε)
 *
 * in f32, in the order and with the roundings of the chain it replaces: each product and sum rounded on its own
 * (`__fmul_rn`/`__fadd_rn` keep nvcc from contracting them into fused multiply-adds), the square root and the
 * division correctly rounded (nvcc's defaults), each `x·a` of the chain written `x·a + 0` as candle's affine
 * computes it. The factors arrive already rounded to f32 by the host, as candle's affine rounds its f64
 * arguments. So the CPU loop of `mod.rs`, the chain and this kernel agree to the last bit.
 *
 * Every kernel is a grid-stride loop without shared memory or barriers, so the file also compiles as C
 * (VSDM_CPU_EMULATION, `adamw_emu.c`), where the blocks and threads run in turn: the tests run this source on the
 * CPU against the Rust loop.
 */
#ifndef VSDM_CPU_EMULATION
#define AW_KERNEL(name) extern "C" __global__ void name
#define AW_MUL(a, b) __fmul_rn(a, b)
#define AW_ADD(a, b) __fadd_rn(a, b)
#define AW_SUB(a, b) __fsub_rn(a, b)
#else
#define AW_KERNEL(name) static void name
#define AW_MUL(a, b) ((a) * (b))
#define AW_ADD(a, b) ((a) + (b))
#define AW_SUB(a, b) ((a) - (b))
#endif

/* candle's affine x·mul + add, both operations rounded. */
#define AW_AFFINE(x, mul, add) AW_ADD(AW_MUL(x, mul), add)

/* g = grad·scale, then the moments of the n values: mv[i] = m, mv[n + i] = v. */
AW_KERNEL(adamw_moments)(const float *grad, float *mv, unsigned n, float scale, float beta1, float one_minus_beta1,
                         float beta2, float one_minus_beta2) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float g = AW_AFFINE(grad[i], scale, 0.0f);
    mv[i] = AW_ADD(AW_AFFINE(mv[i], beta1, 0.0f), AW_AFFINE(g, one_minus_beta1, 0.0f));
    mv[n + i] = AW_ADD(AW_AFFINE(mv[n + i], beta2, 0.0f), AW_AFFINE(AW_MUL(g, g), one_minus_beta2, 0.0f));
  }
}

/* The parameter update from the moments; `decay` is 1 − lr·λ, applied only when `decayed` (the chain skips the
 * product without weight decay), `inv_bc1`, `inv_bc2` are 1/(1 − β₁ᵏ), 1/(1 − β₂ᵏ). */
AW_KERNEL(adamw_apply)(const float *mv, float *theta, unsigned n, float lr, float decay, int decayed, float inv_bc1,
                       float inv_bc2, float eps) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    const float p = decayed ? AW_AFFINE(theta[i], decay, 0.0f) : theta[i];
    const float m_hat = AW_AFFINE(mv[i], inv_bc1, 0.0f);
    const float v_hat = AW_AFFINE(mv[n + i], inv_bc2, 0.0f);
    const float den = AW_AFFINE(sqrtf(v_hat), 1.0f, eps);
    theta[i] = AW_SUB(p, AW_AFFINE(m_hat / den, lr, 0.0f));
  }
}

/* The exponential moving average of the parameters, e ← e·d + θ·(1 − d), the trainer's companion of the step
 * (one launch per tensor where the chain took four: two products, a sum and the copy into the variable). */
AW_KERNEL(ema_update)(const float *theta, float *ema, unsigned n, float decay, float one_minus_decay) {
  for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
    ema[i] = AW_ADD(AW_AFFINE(ema[i], decay, 0.0f), AW_AFFINE(theta[i], one_minus_decay, 0.0f));
  }
}
