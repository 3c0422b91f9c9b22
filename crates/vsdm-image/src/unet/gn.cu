/* Group normalisation (optionally followed by SiLU) and its analytic backward as CUDA kernels, f32.
 *
 * On an H200 the U-Net's group norms ran as chains of candle's element-wise kernels (`bmul`, `badd`, `bsub`:
 * 28–38% of a paper-scale training step, docs/benchmarks/image.md), about 6 passes over the activation in the
 * forward value and 18 in the backward. Here the value is 3 passes (two reductions, one write) and the backward 5
 * (two reductions for the statistics, one for the per-channel sums, one for dx). The formulas are those of
 * `fastnorm.rs`: with x̂ = (x − μ)·r, r = 1/√(σ² + ε), y = γ_c·x̂ + β_c, u = SiLU(y) when `silu`,
 *
 *   dL/dy = dL/du · σ(y)·(1 + y·(1 − σ(y)))        (dL/du itself without SiLU)
 *   dx    = r·(γ_c·dL/dy − m1 − x̂·m2),  m1 = mean_group(γ·dL/dy),  m2 = mean_group(γ·dL/dy·x̂)
 *
 * Layouts: x is [B, C, S] contiguous (S = H·W), G groups of C/G channels, so group (b, g) is the contiguous run
 * of n = (C/G)·S values at (b·G + g)·n. Every kernel strides over its rows by blocks and over a row by threads,
 * with no shared memory and no barriers: each thread writes its own partial sum, which the host adds up (small
 * tensors). That also lets the file compile as C (VSDM_CPU_EMULATION, `gn_emu.c`), where each block and thread
 * runs in turn, so the same source is tested on the CPU (`gnkernel.rs`'s tests).
 */
#ifndef VSDM_CPU_EMULATION
#define GN_KERNEL(name) extern "C" __global__ void name
#define GN_DEVICE __device__ static inline
#else
#define GN_KERNEL(name) static void name
#define GN_DEVICE static inline
#endif

/* dL/dy from dL/du at y (identity without SiLU). */
GN_DEVICE float gn_silu_grad(float y, float du, int silu) {
  if (!silu) return du;
  const float s = 1.0f / (1.0f + expf(-y));
  return du * s * (1.0f + y * (1.0f - s));
}

/* Partial sums over each group row of x [rows, n]: Σ (x − shift[row]), or its square when `square`. Thread t of
 * a block writes part[row·blockDim + t]. */
GN_KERNEL(gn_sums)(const float *x, const float *shift, float *part, unsigned rows, unsigned n, int square) {
  for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const float *xr = x + row * n;
    const float s = shift[row];
    float acc = 0.0f;
    for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {
      const float d = xr[i] - s;
      acc += square ? d * d : d;
    }
    part[row * blockDim.x + threadIdx.x] = acc;
  }
}

/* out = [SiLU]((x − μ)·r·γ_c + β_c) over rows (b, c) of S positions. */
GN_KERNEL(gn_apply)(const float *x, const float *mean, const float *rstd, const float *gamma, const float *beta,
                    float *out, unsigned rows, unsigned c, unsigned g, unsigned s, int silu) {
  const unsigned per_group = c / g;
  for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const unsigned ch = (unsigned)(row % c);
    const unsigned long long bg = (row / c) * g + ch / per_group;
    const float mu = mean[bg], a = rstd[bg] * gamma[ch], b = beta[ch];
    const float *xr = x + row * s;
    float *o = out + row * s;
    for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {
      const float y = (xr[i] - mu) * a + b;
      o[i] = silu ? y / (1.0f + expf(-y)) : y;
    }
  }
}

/* Per (b, c) row, partial sums of dL/dy and of dL/dy·x̂ (part1, part2 [rows, blockDim]). */
GN_KERNEL(gn_grad_sums)(const float *x, const float *du, const float *mean, const float *rstd, const float *gamma,
                        const float *beta, float *part1, float *part2, unsigned rows, unsigned c, unsigned g,
                        unsigned s, int silu) {
  const unsigned per_group = c / g;
  for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const unsigned ch = (unsigned)(row % c);
    const unsigned long long bg = (row / c) * g + ch / per_group;
    const float mu = mean[bg], r = rstd[bg], ga = gamma[ch], be = beta[ch];
    const float *xr = x + row * s, *dr = du + row * s;
    float acc1 = 0.0f, acc2 = 0.0f;
    for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {
      const float xh = (xr[i] - mu) * r;
      const float d = gn_silu_grad(xh * ga + be, dr[i], silu);
      acc1 += d;
      acc2 += d * xh;
    }
    part1[row * blockDim.x + threadIdx.x] = acc1;
    part2[row * blockDim.x + threadIdx.x] = acc2;
  }
}

/* dx = r·(γ_c·dL/dy − m1[bg] − x̂·m2[bg]) over rows (b, c). */
GN_KERNEL(gn_grad_input)(const float *x, const float *du, const float *mean, const float *rstd,
                         const float *gamma, const float *beta, const float *m1, const float *m2, float *dx,
                         unsigned rows, unsigned c, unsigned g, unsigned s, int silu) {
  const unsigned per_group = c / g;
  for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const unsigned ch = (unsigned)(row % c);
    const unsigned long long bg = (row / c) * g + ch / per_group;
    const float mu = mean[bg], r = rstd[bg], ga = gamma[ch], be = beta[ch], a = m1[bg], b = m2[bg];
    const float *xr = x + row * s, *dr = du + row * s;
    float *o = dx + row * s;
    for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {
      const float xh = (xr[i] - mu) * r;
      const float d = gn_silu_grad(xh * ga + be, dr[i], silu);
      o[i] = r * (ga * d - a - xh * b);
    }
  }
}
