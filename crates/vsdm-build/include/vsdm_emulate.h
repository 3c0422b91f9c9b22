/* What a CUDA source of this workspace needs to compile as C for the host (VSDM_CPU_EMULATION): CUDA's block
 * and thread indices as thread-local variables, and EMULATE(call), which runs `call` for every block and every
 * thread of a launch of `grid` blocks of `block` threads in turn. That gives the GPU's result for kernels that
 * share no memory between threads and use no barriers (the kernels written for it say so). Included by the
 * `*_emu.c` files before their `.cu` source. */
#ifndef VSDM_EMULATE_H
#define VSDM_EMULATE_H

struct vsdm_dim3 {
  unsigned x;
};
static _Thread_local struct vsdm_dim3 blockIdx, threadIdx, blockDim, gridDim;

#define VSDM_CPU_EMULATION

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

#endif
