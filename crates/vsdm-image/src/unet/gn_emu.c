/* The kernels of gn.cu compiled for the host, for tests without a GPU (`gnkernel.rs`, backend `Emulated`):
 * every block and every thread of a launch runs in turn (the kernels share no memory between threads and use
 * no barriers, so this order gives the GPU's result). `vsdm_gn_emu` takes a launch as the CUDA path pushes it:
 * the input pointers, the output pointers, the unsigned scalars and the int flag, in the kernels' parameter
 * order (activations f32 or bf16 as the kernel's suffix says, everything else f32). Returns 0, or −1 for an
 * unknown kernel. */
#include <math.h>
#include <string.h>

#include "vsdm_emulate.h"
#include "gn.cu"

/* The kernels of one activation type; `in`/`out` hold the pointers in the kernels' parameter order. */
#define GN_DISPATCH(SUFFIX, T)                                                                                 \
  if (strcmp(kernel, "gn_sums_" #SUFFIX) == 0) {                                                             \
    EMULATE(gn_sums_##SUFFIX((const T *)in[0], (const float *)in[1], (float *)out[0], u[0], u[1], flag));    \
    return 0;                                                                                                \
  }                                                                                                          \
  if (strcmp(kernel, "gn_apply_" #SUFFIX) == 0) {                                                            \
    EMULATE(gn_apply_##SUFFIX((const T *)in[0], (const float *)in[1], (const float *)in[2],                  \
                              (const float *)in[3], (const float *)in[4], (T *)out[0], u[0], u[1], u[2], u[3], \
                              flag));                                                                        \
    return 0;                                                                                                \
  }                                                                                                          \
  if (strcmp(kernel, "gn_grad_sums_" #SUFFIX) == 0) {                                                        \
    EMULATE(gn_grad_sums_##SUFFIX((const T *)in[0], (const T *)in[1], (const float *)in[2],                  \
                                  (const float *)in[3], (const float *)in[4], (const float *)in[5],          \
                                  (float *)out[0], (float *)out[1], u[0], u[1], u[2], u[3], flag));          \
    return 0;                                                                                                \
  }                                                                                                          \
  if (strcmp(kernel, "gn_grad_input_" #SUFFIX) == 0) {                                                       \
    EMULATE(gn_grad_input_##SUFFIX((const T *)in[0], (const T *)in[1], (const float *)in[2],                 \
                                   (const float *)in[3], (const float *)in[4], (const float *)in[5],         \
                                   (const float *)in[6], (const float *)in[7], (T *)out[0], u[0], u[1], u[2], \
                                   u[3], flag));                                                             \
    return 0;                                                                                                \
  }                                                                                                          \
  if (strcmp(kernel, "dropout_" #SUFFIX) == 0) {                                                             \
    EMULATE(dropout_##SUFFIX((const T *)in[0], (const float *)in[1], (T *)out[0], u[0], u[1], u[2], u[3], flag)); \
    return 0;                                                                                                \
  }

int vsdm_gn_emu(const char *kernel, unsigned grid, unsigned block, const void *const *in, void *const *out,
                const unsigned *u, int flag) {
  GN_DISPATCH(f32, float)
  GN_DISPATCH(bf16, gn_bf16)
  return -1;
}
