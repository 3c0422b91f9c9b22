/* Group normalisation (optionally followed by SiLU) and its analytic backward as CUDA kernels, for f32 and bf16
 * activations (suffixes _f32 and _bf16; statistics, scale, shift and every sum in f32).
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
 *
 * bf16 activations are read into f32 exactly and only the activation-sized outputs (the value, dx) are rounded
 * back (to nearest, ties to even: `__float2bfloat16` on the GPU, `gn_f32_to_bf16` in the host build), so a bf16
 * network's norms need no cast kernels around them (each a pass over the activation both ways).
 */
#ifndef VSDM_CPU_EMULATION
#include <cuda_bf16.h>
#define GN_KERNEL(name) extern "C" __global__ void name
#define GN_DEVICE __device__ static inline
typedef __nv_bfloat16 gn_bf16;
#define GN_BF16_LOAD(v) __bfloat162float(v)
#define GN_BF16_STORE(f) __float2bfloat16(f)
#else
#define GN_KERNEL(name) static void name
#define GN_DEVICE static inline
typedef unsigned short gn_bf16;
/* bf16 is the upper half of an f32: widening is exact; narrowing rounds to nearest, ties to even (NaN kept). */
static inline float gn_bf16_to_f32(gn_bf16 v) {
  const unsigned u = (unsigned)v << 16;
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static inline gn_bf16 gn_f32_to_bf16(float f) {
  unsigned u;
  memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (gn_bf16)((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return (gn_bf16)(u >> 16);
}
#define GN_BF16_LOAD(v) gn_bf16_to_f32(v)
#define GN_BF16_STORE(f) gn_f32_to_bf16(f)
#endif
#define GN_F32_LOAD(v) (v)
#define GN_F32_STORE(f) (f)

/* dL/dy from dL/du at y (identity without SiLU). */
GN_DEVICE float gn_silu_grad(float y, float du, int silu) {
  if (!silu) return du;
  const float s = 1.0f / (1.0f + expf(-y));
  return du * s * (1.0f + y * (1.0f - s));
}

/* The four kernels for activations of type T (read with LOAD, written with STORE), names ending in SUFFIX. */
#define GN_KERNELS(SUFFIX, T, LOAD, STORE)                                                                    \
  /* Partial sums over each group row of x [rows, n]: Σ (x − shift[row]), or its square when `square`.         \
   * Thread t of a block writes part[row·blockDim + t]. */                                                    \
  GN_KERNEL(gn_sums_##SUFFIX)(const T *x, const float *shift, float *part, unsigned rows, unsigned n,         \
                              int square) {                                                                   \
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {                                 \
      const T *xr = x + row * n;                                                                              \
      const float s = shift[row];                                                                             \
      float acc = 0.0f;                                                                                       \
      for (unsigned i = threadIdx.x; i < n; i += blockDim.x) {                                                \
        const float d = LOAD(xr[i]) - s;                                                                      \
        acc += square ? d * d : d;                                                                            \
      }                                                                                                       \
      part[row * blockDim.x + threadIdx.x] = acc;                                                             \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* out = [SiLU]((x − μ)·r·γ_c + β_c) over rows (b, c) of S positions. */                                     \
  GN_KERNEL(gn_apply_##SUFFIX)(const T *x, const float *mean, const float *rstd, const float *gamma,          \
                               const float *beta, T *out, unsigned rows, unsigned c, unsigned g, unsigned s,  \
                               int silu) {                                                                    \
    const unsigned per_group = c / g;                                                                         \
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {                                 \
      const unsigned ch = (unsigned)(row % c);                                                                \
      const unsigned long long bg = (row / c) * g + ch / per_group;                                           \
      const float mu = mean[bg], a = rstd[bg] * gamma[ch], b = beta[ch];                                      \
      const T *xr = x + row * s;                                                                              \
      T *o = out + row * s;                                                                                   \
      for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {                                                \
        const float y = (LOAD(xr[i]) - mu) * a + b;                                                           \
        o[i] = STORE(silu ? y / (1.0f + expf(-y)) : y);                                                       \
      }                                                                                                       \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* Per (b, c) row, partial sums of dL/dy and of dL/dy·x̂ (part1, part2 [rows, blockDim]). */                 \
  GN_KERNEL(gn_grad_sums_##SUFFIX)(const T *x, const T *du, const float *mean, const float *rstd,             \
                                   const float *gamma, const float *beta, float *part1, float *part2,         \
                                   unsigned rows, unsigned c, unsigned g, unsigned s, int silu) {             \
    const unsigned per_group = c / g;                                                                         \
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {                                 \
      const unsigned ch = (unsigned)(row % c);                                                                \
      const unsigned long long bg = (row / c) * g + ch / per_group;                                           \
      const float mu = mean[bg], r = rstd[bg], ga = gamma[ch], be = beta[ch];                                 \
      const T *xr = x + row * s, *dr = du + row * s;                                                          \
      float acc1 = 0.0f, acc2 = 0.0f;                                                                         \
      for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {                                                \
        const float xh = (LOAD(xr[i]) - mu) * r;                                                              \
        const float d = gn_silu_grad(xh * ga + be, LOAD(dr[i]), silu);                                        \
        acc1 += d;                                                                                            \
        acc2 += d * xh;                                                                                       \
      }                                                                                                       \
      part1[row * blockDim.x + threadIdx.x] = acc1;                                                           \
      part2[row * blockDim.x + threadIdx.x] = acc2;                                                           \
    }                                                                                                         \
  }                                                                                                           \
                                                                                                              \
  /* dx = r·(γ_c·dL/dy − m1[bg] − x̂·m2[bg]) over rows (b, c). */                                               \
  GN_KERNEL(gn_grad_input_##SUFFIX)(const T *x, const T *du, const float *mean, const float *rstd,            \
                                    const float *gamma, const float *beta, const float *m1, const float *m2,  \
                                    T *dx, unsigned rows, unsigned c, unsigned g, unsigned s, int silu) {     \
    const unsigned per_group = c / g;                                                                         \
    for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {                                 \
      const unsigned ch = (unsigned)(row % c);                                                                \
      const unsigned long long bg = (row / c) * g + ch / per_group;                                           \
      const float mu = mean[bg], r = rstd[bg], ga = gamma[ch], be = beta[ch], a = m1[bg], b = m2[bg];         \
      const T *xr = x + row * s, *dr = du + row * s;                                                          \
      T *o = dx + row * s;                                                                                    \
      for (unsigned i = threadIdx.x; i < s; i += blockDim.x) {                                                \
        const float xh = (LOAD(xr[i]) - mu) * r;                                                              \
        const float d = gn_silu_grad(xh * ga + be, LOAD(dr[i]), silu);                                        \
        o[i] = STORE(r * (ga * d - a - xh * b));                                                              \
      }                                                                                                       \
    }                                                                                                         \
  }

GN_KERNELS(f32, float, GN_F32_LOAD, GN_F32_STORE)
GN_KERNELS(bf16, gn_bf16, GN_BF16_LOAD, GN_BF16_STORE)

/* Inverted dropout, y = x·f with f = 1/(1 − p) where the element is kept and 0 where it is dropped (a product,
 * so a NaN input stays NaN), for the residual blocks (`dropout.rs`). Here for this file's launch and host-build
 * machinery, not for the group norm. Whether element i (of the contiguous tensor) is kept is a function of the
 * 64-bit seed and i alone: splitmix64's output function of seed + (i + 1)·γ (its own state sequence, γ the
 * golden-ratio increment), whose upper 32 bits u keep the element when u ≥ `threshold` = round(p·2³²). So the
 * mask needs no random tensor and no storage: the backward recomputes it from the seed. `scale` holds f in f32;
 * the seed arrives as two 32-bit halves; n < 2³¹ (checked by the caller); `flag` is unused. */
GN_DEVICE unsigned long long gn_mix64(unsigned long long z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

#define GN_DROPOUT(SUFFIX, T, LOAD, STORE)                                                                     \
  GN_KERNEL(dropout_##SUFFIX)(const T *x, const float *scale, T *y, unsigned n, unsigned seed_lo,             \
                              unsigned seed_hi, unsigned threshold, int flag) {                               \
    const unsigned long long seed = ((unsigned long long)seed_hi << 32) | seed_lo;                            \
    const float f = scale[0];                                                                                 \
    (void)flag;                                                                                               \
    for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {            \
      const unsigned u = (unsigned)(gn_mix64(seed + (i + 1ull) * 0x9E3779B97F4A7C15ull) >> 32);               \
      y[i] = STORE(LOAD(x[i]) * (u >= threshold ? f : 0.0f));                                                 \
    }                                                                                                         \
  }

GN_DROPOUT(f32, float, GN_F32_LOAD, GN_F32_STORE)
GN_DROPOUT(bf16, gn_bf16, GN_BF16_LOAD, GN_BF16_STORE)
