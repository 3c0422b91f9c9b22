//! The CUDA patch kernel (`src/unet/im2col.cu`) checked without a GPU: the same source compiled as C++ with a
//! host compiler (`CPU_EMULATION`), every block and thread of a launch run in loops, and the result compared
//! with a direct definition of the patch matrix — element (row = (c, i, j, image), position (y, x)) is the
//! input at (image, c, y + i − p, x + j − p), or 0 outside the image. Launches with fewer blocks than rows
//! and fewer threads than positions exercise the kernel's strides; 16-, 32- and 64-bit elements each.
//! Skips, saying why, where no C++ compiler runs (`CXX`, else `c++`, else `g++`).

use std::path::Path;
use std::process::Command;

const HARNESS: &str = r#"
#define CPU_EMULATION
#include <cstdio>
#include <cstdlib>
#include <vector>
struct Dim3 { unsigned x; };
static Dim3 blockIdx, threadIdx, blockDim, gridDim;
#include KERNEL

template <typename T, typename F>
static int check(F kernel, unsigned b, unsigned c, unsigned h, unsigned w, unsigned k, unsigned p,
                 unsigned grid, unsigned threads) {
  const unsigned oh = h + 2 * p + 1 - k, ow = w + 2 * p + 1 - k;
  std::vector<T> x((size_t)b * c * h * w);
  for (size_t i = 0; i < x.size(); i++) x[i] = (T)(1 + (i * 2654435761u) % 65521);
  const size_t rows = (size_t)c * k * k * b, n = (size_t)oh * ow;
  std::vector<T> cols(rows * n, (T)0xAB);  // poison: every element must be written
  gridDim.x = grid;
  blockDim.x = threads;
  for (unsigned bx = 0; bx < grid; bx++)
    for (unsigned tx = 0; tx < threads; tx++) {
      blockIdx.x = bx;
      threadIdx.x = tx;
      kernel(x.data(), cols.data(), b, c, h, w, k, p, oh, ow);
    }
  for (unsigned ci = 0; ci < c; ci++)
    for (unsigned i = 0; i < k; i++)
      for (unsigned j = 0; j < k; j++)
        for (unsigned im = 0; im < b; im++)
          for (unsigned y = 0; y < oh; y++)
            for (unsigned xx = 0; xx < ow; xx++) {
              long iy = (long)y + i - p, ix = (long)xx + j - p;
              T want = (iy < 0 || iy >= (long)h || ix < 0 || ix >= (long)w)
                           ? (T)0
                           : x[(((size_t)im * c + ci) * h + iy) * w + ix];
              size_t row = (((size_t)ci * k + i) * k + j) * b + im;
              T got = cols[row * n + (size_t)y * ow + xx];
              if (got != want) {
                std::printf("mismatch b%u c%u %ux%u k%u p%u grid %u threads %u at row %zu pos (%u,%u): %llu vs %llu\n",
                            b, c, h, w, k, p, grid, threads, row, y, xx, (unsigned long long)got,
                            (unsigned long long)want);
                return 1;
              }
            }
  return 0;
}

int main() {
  // b, c, h, w, k, p, grid, threads
  const unsigned cases[][8] = {
      {2, 3, 6, 5, 3, 1, 1000, 32},  // one block per row, more threads than positions
      {2, 3, 6, 5, 3, 1, 7, 8},      // blocks and threads both stride
      {1, 2, 7, 7, 3, 0, 3, 16},     // valid convolution (no padding)
      {3, 4, 5, 6, 1, 0, 5, 32},     // 1x1
      {2, 2, 6, 6, 5, 2, 4, 13},     // 5x5, odd thread count
      {1, 3, 4, 4, 3, 2, 2, 64},     // padding beyond "same"
      {2, 2, 32, 32, 3, 1, 11, 256}, // the U-Net's largest side
  };
  int bad = 0;
  for (const auto &cs : cases) {
    bad |= check<unsigned short>(im2col_b16, cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7]);
    bad |= check<unsigned int>(im2col_b32, cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7]);
    bad |= check<unsigned long long>(im2col_b64, cs[0], cs[1], cs[2], cs[3], cs[4], cs[5], cs[6], cs[7]);
  }
  if (!bad) std::printf("im2col kernel: all cases equal the definition\n");
  return bad;
}
"#;

#[test]
fn cuda_patch_kernel_matches_the_definition_on_the_cpu() {
    let kernel = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/unet/im2col.cu");
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("harness.cpp");
    let exe = dir.path().join("harness");
    std::fs::write(&src, HARNESS).unwrap();
    let compilers: Vec<String> = std::env::var("CXX")
        .ok()
        .into_iter()
        .chain(["c++".to_string(), "g++".to_string()])
        .collect();
    let mut built = false;
    for cxx in &compilers {
        let out = Command::new(cxx)
            .arg("-std=c++17")
            .arg("-O1")
            .arg(format!("-DKERNEL=\"{}\"", kernel.display()))
            .arg(&src)
            .arg("-o")
            .arg(&exe)
            .output();
        match out {
            Ok(o) if o.status.success() => {
                built = true;
                break;
            }
            // A compiler that runs and rejects the source is a failure of the kernel, not a missing tool.
            Ok(o) => panic!(
                "{cxx} could not compile {} as C++:\n{}",
                kernel.display(),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(_) => continue,
        }
    }
    if !built {
        eprintln!("skipped: no C++ compiler ran (tried {compilers:?}); the CUDA patch kernel was not checked");
        return;
    }
    let run = Command::new(&exe).output().unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}");
    assert!(
        stdout.contains("all cases equal the definition"),
        "{stdout}"
    );
}
