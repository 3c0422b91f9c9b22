/* The kernels of adamw.cu compiled for the host, for tests without a GPU (`adamw/mod.rs`, `Backend::Emulated`):
 * every block and thread of a launch runs in turn (the kernels are independent grid-stride loops, so any order
 * gives the GPU's result). Built with -ffp-contract=off (vsdm-build) so that, as on the GPU with
 * `__fmul_rn`/`__fadd_rn`, no product and sum are fused. */
#include <math.h>

#include "vsdm_emulate.h"
#include "adamw.cu"

void vsdm_adamw_moments_emu(unsigned grid, unsigned block, const float *grad, float *mv, unsigned n, float scale,
                            float beta1, float one_minus_beta1, float beta2, float one_minus_beta2) {
  EMULATE(adamw_moments(grad, mv, n, scale, beta1, one_minus_beta1, beta2, one_minus_beta2));
}

void vsdm_adamw_apply_emu(unsigned grid, unsigned block, const float *mv, float *theta, unsigned n, float lr,
                          float decay, int decayed, float inv_bc1, float inv_bc2, float eps) {
  EMULATE(adamw_apply(mv, theta, n, lr, decay, decayed, inv_bc1, inv_bc2, eps));
}

void vsdm_ema_update_emu(unsigned grid, unsigned block, const float *theta, float *ema, unsigned n, float decay,
                         float one_minus_decay) {
  EMULATE(ema_update(theta, ema, n, decay, one_minus_decay));
}
