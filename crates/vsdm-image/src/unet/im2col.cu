// The patch matrix of a stride-1 convolution on CUDA, in the layout of `im2col.rs` (`[C·k·k, B, H'·W']`, rows
// ordered (channel, kernel row, kernel column), then image; each row is one image's H'·W' output positions).
//
// candle 0.11.1's own `im2col` kernel writes the transposed layout `[B, H'·W', C·k·k]`: consecutive threads read
// across kernel positions and channels (strided reads), and every element decodes its six indices with 64-bit
// divisions. On an H200 it took 35% of a paper-scale f32 training step and 43% of a bf16 one
// (docs/benchmarks/image.md). Here one block fills one row: its threads walk the row's output positions, so
// the writes are contiguous and the reads follow an input row; the row's indices are decoded once per thread
// with 32-bit arithmetic, and positions with 32-bit divisions by the output width.
//
// The kernels copy bits (16, 32 or 64 per element), so one kernel serves f16 and bf16, one f32 and one f64;
// zero padding is the all-zero bit pattern, +0.0 in every IEEE format.
//
// The file is also plain C++ when CPU_EMULATION is defined (tests/im2col_kernel.rs compiles it with a host
// compiler and runs every block and thread in loops against a direct definition of the patch matrix).

#ifndef CPU_EMULATION
#define IM2COL_GLOBAL extern "C" __global__ void
#else
#define IM2COL_GLOBAL inline void
#endif

template <typename T>
#ifndef CPU_EMULATION
__device__
#endif
void patch_rows(const T *x, T *cols, unsigned b, unsigned c, unsigned h, unsigned w, unsigned k, unsigned p,
                unsigned oh, unsigned ow) {
  const unsigned n = oh * ow;              // positions per row
  const unsigned long long rows = (unsigned long long)c * k * k * b;
  for (unsigned long long row = blockIdx.x; row < rows; row += gridDim.x) {
    const unsigned bi = (unsigned)(row % b);
    const unsigned r = (unsigned)(row / b);  // (channel, kernel row, kernel column)
    const unsigned kj = r % k;
    const unsigned ki = (r / k) % k;
    const unsigned ci = r / (k * k);
    const T *plane = x + ((unsigned long long)bi * c + ci) * h * w;
    T *out = cols + row * n;
    for (unsigned pos = threadIdx.x; pos < n; pos += blockDim.x) {
      const unsigned oy = pos / ow;
      const unsigned ox = pos - oy * ow;
      // Input coordinates oy + ki − p, ox + kj − p, tested without going negative.
      const unsigned iy = oy + ki;
      const unsigned ix = ox + kj;
      T v = 0;
      if (iy >= p && iy - p < h && ix >= p && ix - p < w) {
        v = plane[(iy - p) * w + (ix - p)];
      }
      out[pos] = v;
    }
  }
}

IM2COL_GLOBAL im2col_b16(const unsigned short *x, unsigned short *cols, unsigned b, unsigned c, unsigned h,
                         unsigned w, unsigned k, unsigned p, unsigned oh, unsigned ow) {
  patch_rows(x, cols, b, c, h, w, k, p, oh, ow);
}

IM2COL_GLOBAL im2col_b32(const unsigned int *x, unsigned int *cols, unsigned b, unsigned c, unsigned h,
                         unsigned w, unsigned k, unsigned p, unsigned oh, unsigned ow) {
  patch_rows(x, cols, b, c, h, w, k, p, oh, ow);
}

IM2COL_GLOBAL im2col_b64(const unsigned long long *x, unsigned long long *cols, unsigned b, unsigned c,
                         unsigned h, unsigned w, unsigned k, unsigned p, unsigned oh, unsigned ow) {
  patch_rows(x, cols, b, c, h, w, k, p, oh, ow);
}
