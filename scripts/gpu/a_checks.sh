#!/usr/bin/env bash
# GPU part A: CUDA = CPU checks, U-Net training throughput candle vs PyTorch (same GPU, same session),
# sampling throughput, a short CUDA training smoke run. Needs .gpuA/{vsdm-image,vsdm-eval}.xz (the `cuda` builds,
# see README) and stashes .gpuA/pt.part1 (first bytes of the FID Inception TorchScript file) for part C.
set -u
. scripts/gpu/common.sh
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
for b in vsdm-image vsdm-eval; do xz -dc .gpuA/$b.xz >"$K/bin/$b" && chmod +x "$K/bin/$b"; done
cp .gpuA/pt.part1 "$K/" 2>/dev/null
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"

log "CUDA vs CPU: tiny network, three methods (includes ~20 s of PTX JIT)"
timeout 200 vsdm-image --cuda check-device --arch tiny --method vsdm vp vsmd --batch 4 --steps 2
log "CUDA vs CPU: paper-scale network"
timeout 200 vsdm-image --cuda check-device --arch ddpmpp --method vsdm vsmd --batch 4 --steps 1

log "candle training throughput, batch 128"
with_mem timeout 100 vsdm-image --cuda bench --arch tiny --batch 128 --iters 20 | tee "$K/bench-tiny.md"
with_mem timeout 200 vsdm-image --cuda bench --arch ddpmpp --batch 128 --iters 8 | tee "$K/bench-ddpmpp.md"

log "PyTorch eager, same networks, batch 128"
timeout 150 python3 bench/unet_ddpmpp.py bench --arch tiny ddpmpp --batch 128 --iters 20 --precision f32 tf32 bf16
log "PyTorch compiled (ddpmpp)"
timeout 240 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 bf16 --mode compiled

log "CUDA training smoke run (tiny, bundled 1000 images) and sampling throughput"
timeout 120 vsdm-image --cuda train --arch tiny --data assets/image/cifar10-train-1000.bin --batch 128 --iters 60 \
    --block 20 --ckpt-every 0 --sample-every 0 --grid 16 --grid-steps 50 --out "$K/smoke" 2>&1 | tail -3
timeout 100 vsdm-image --cuda sample --weights "$K/smoke/weights" --n 2000 --batch 2000 --steps 200 --grid "$OUT/smoke-tiny.png"
timeout 150 vsdm-image --cuda train --arch ddpmpp --data assets/image/cifar10-train-1000.bin --batch 32 --iters 3 \
    --block 2 --ckpt-every 0 --sample-every 0 --grid 4 --grid-steps 5 --out "$K/smoke-ddpmpp" 2>&1 | tail -3
with_mem timeout 120 vsdm-image --cuda sample --weights "$K/smoke-ddpmpp/weights" --n 512 --batch 512 --steps 20 --grid "$K/x.png"

log "PyTorch kernel-time breakdown of one ddpmpp training step (f32, eager)"
timeout 90 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 2 --precision f32 --profile
log done
