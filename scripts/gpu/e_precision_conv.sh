#!/usr/bin/env bash
# GPU part E (issue 7, not yet run on a GPU): the GEMM convolution backward against candle's own, the analytic
# group-norm backward against candle_nn's op chain, and bf16
# activations with f32 master weights against f32, on the paper-scale network; PyTorch eager in the same session
# for the ratio. Needs .gpuD/vsdm-image.xz (the `cuda` build of commit 321d30b or later; carry `.gpuD`, ≈ 27 MB).
set -u
. scripts/gpu/common.sh
xz -dc .gpuD/vsdm-image.xz >"$K/bin/vsdm-image" && chmod +x "$K/bin/vsdm-image"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv

log "CUDA vs CPU (f32) and bf16 vs f32 on CUDA: tiny and ddpmpp"
timeout 200 vsdm-image --cuda check-device --arch tiny --method vsdm vp vsmd --batch 4 --steps 2
timeout 200 vsdm-image --cuda check-device --arch ddpmpp --method vsdm --batch 4 --steps 1

log "candle training throughput, ddpmpp, batch 128: before (candle's backwards), each lever, both, bf16"
for cn in "candle candle" "gemm candle" "candle fused" "gemm fused"; do
    set -- $cn
    with_mem timeout 150 vsdm-image --cuda bench --arch ddpmpp --batch 128 --iters 8 --conv $1 --norm $2 --precision f32
done
with_mem timeout 150 vsdm-image --cuda bench --arch ddpmpp --batch 128 --iters 8 --precision bf16

log "PyTorch eager, same network, batch 128"
timeout 150 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 tf32 bf16

log "bf16 training smoke run (ddpmpp, bundled 1000 images)"
timeout 150 vsdm-image --cuda train --arch ddpmpp --precision bf16 --data assets/image/cifar10-train-1000.bin \
    --batch 32 --iters 3 --block 2 --ckpt-every 0 --sample-every 0 --grid 4 --grid-steps 5 --out "$K/smoke-bf16" 2>&1 | tail -5

if command -v nsys >/dev/null; then
    log "kernel-time breakdown of candle's ddpmpp training step (nsys)"
    timeout 200 nsys profile -o "$K/candle" --force-overwrite true \
        vsdm-image --cuda bench --arch ddpmpp --batch 128 --iters 2 >/dev/null 2>&1
    nsys stats --report cuda_gpu_kern_sum --format csv "$K/candle.nsys-rep" 2>/dev/null | head -30 | tee "$OUT/candle-kernels.csv"
else
    log "nsys not installed: no candle kernel breakdown"
fi
log done
