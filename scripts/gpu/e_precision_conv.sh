#!/usr/bin/env bash
# GPU part E (issue 7, not yet run on a GPU): candle's training step of the paper-scale U-Net, before (candle's own
# backwards) and after each lever (GEMM convolution backward, analytic group-norm backward, convolutions through
# cuDNN, TF32, bf16 activations with f32 master weights), beside PyTorch eager and compiled in the same session.
# Needs .gpuD/vsdm-image.xz (the `cuda` build) and .gpuD/vsdm-image-cudnn.xz (the `cudnn` build); carry `.gpuD`.
# One call per part fits the 10-minute limit: `e_precision_conv.sh check`, `… bench`, `… torch`, `… profile`.
set -u
. scripts/gpu/common.sh
for b in vsdm-image vsdm-image-cudnn; do xz -dc .gpuD/$b.xz >"$K/bin/$b" && chmod +x "$K/bin/$b"; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "cuDNN from: ${cudnn_lib:-not found}"
part=${1:-all}

if [ "$part" = check ] || [ "$part" = all ]; then
    log "the convolution ops and the whole network, CUDA vs CPU (f32 to 1e-5; TF32 and bf16 with their tolerances)"
    timeout 200 vsdm-image --cuda check-device --arch tiny --method vsdm vp vsmd --batch 4 --steps 2
    timeout 250 vsdm-image-cudnn --cuda --conv cudnn check-device --arch tiny ddpmpp --method vsdm --batch 4 --steps 1
    log "bf16 training smoke run (ddpmpp, bundled 1000 images), cuDNN convolutions"
    timeout 150 vsdm-image-cudnn --cuda --conv cudnn train --arch ddpmpp --precision bf16 \
        --data assets/image/cifar10-train-1000.bin --batch 32 --iters 3 --block 2 --ckpt-every 0 --sample-every 0 \
        --grid 4 --grid-steps 5 --out "$K/smoke-bf16" 2>&1 | tail -5
fi

if [ "$part" = bench ] || [ "$part" = all ]; then
    log "candle training throughput, ddpmpp, batch 128: before (candle's backwards), each lever, cuDNN, TF32, bf16"
    b="bench --arch ddpmpp --batch 128 --iters 8"
    with_mem timeout 150 vsdm-image --cuda --conv candle --norm candle $b
    with_mem timeout 150 vsdm-image --cuda --conv gemm --norm candle $b
    with_mem timeout 150 vsdm-image --cuda --conv gemm --norm fused $b
    with_mem timeout 150 vsdm-image-cudnn --cuda --conv cudnn $b
    with_mem timeout 150 vsdm-image-cudnn --cuda --conv cudnn --tf32 $b
    with_mem timeout 150 vsdm-image --cuda --tf32 $b
    with_mem timeout 150 vsdm-image --cuda $b --precision bf16
    with_mem timeout 150 vsdm-image-cudnn --cuda --conv cudnn $b --precision bf16
fi

if [ "$part" = torch ] || [ "$part" = all ]; then
    log "PyTorch eager and compiled, same network, batch 128"
    timeout 150 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 tf32 bf16
    timeout 150 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 bf16 \
        --cudnn-benchmark off
    timeout 280 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 bf16 --mode compiled
fi

if [ "$part" = profile ] || [ "$part" = all ]; then
    if command -v nsys >/dev/null; then
        for v in "candle vsdm-image --conv candle --norm candle" "gemm vsdm-image" "cudnn vsdm-image-cudnn --conv cudnn"; do
            set -- $v; name=$1; shift
            log "kernel-time breakdown of candle's ddpmpp training step ($name, nsys)"
            timeout 200 nsys profile -o "$K/$name" --force-overwrite true \
                "$@" --cuda bench --arch ddpmpp --batch 128 --iters 2 >/dev/null 2>&1
            nsys stats --report cuda_gpu_kern_sum --format csv "$K/$name.nsys-rep" 2>/dev/null | head -30 \
                | tee "$OUT/kernels-$name.csv"
        done
    else
        log "nsys not installed: torch.profiler breakdown of PyTorch only"
    fi
    log "PyTorch eager's kernels (torch.profiler), f32"
    timeout 150 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 3 --precision f32 --profile 2>&1 | head -45
fi
log done
