/* The kernels of gn.cu compiled for the host, for tests without a GPU (`gnkernel.rs`, backend `Emulated`):
 * every block and every thread of a launch runs in turn (the kernels share no memory between threads and use
 * no barriers, so this order gives the GPU's result). `vsdm_gn_emu` takes a launch as the CUDA path pushes it:
 * the input pointers, the output pointers, the unsigned scalars and the int flag, in the kernels' parameter
 * order. Returns 0, or −1 for an unknown kernel. */
#include <math.h>
#include <string.h>

struct vsdm_dim3 {
  unsigned x;
};
static _Thread_local struct vsdm_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define VSDM_CPU_EMULATION
#include "gn.cu"

#define EMULATE(call)                                  \
  do {                                                 \
    gridDim.x = grid;                                  \
    blockDim.x = block;                                \
    for (unsigned bx = 0; bx < grid; bx++)             \
      for (unsigned tx = 0; tx < block; tx++) {        \
        blockIdx.x = bx;                               \
        threadIdx.x = tx;                              \
        call;                                          \
      }                                                \
  } while (0)

int vsdm_gn_emu(const char *kernel, unsigned grid, unsigned block, const float *const *in, float *const *out,
                const unsigned *u, int flag) {
  if (strcmp(kernel, "gn_sums") == 0) {
    EMULATE(gn_sums(in[0], in[1], out[0], u[0], u[1], flag));
  } else if (strcmp(kernel, "gn_apply") == 0) {
    EMULATE(gn_apply(in[0], in[1], in[2], in[3], in[4], out[0], u[0], u[1], u[2], u[3], flag));
  } else if (strcmp(kernel, "gn_grad_sums") == 0) {
    EMULATE(gn_grad_sums(in[0], in[1], in[2], in[3], in[4], in[5], out[0], out[1], u[0], u[1], u[2], u[3], flag));
  } else if (strcmp(kernel, "gn_grad_input") == 0) {
    EMULATE(gn_grad_input(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], out[0], u[0], u[1], u[2], u[3],
                          flag));
  } else {
    return -1;
  }
  return 0;
}
