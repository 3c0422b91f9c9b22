#!/usr/bin/env bash
# GPU part D: PyTorch's FIDs of part C's statistics, PyTorch's U-Net throughput (eager and compiled, per precision),
# then FID-10k (against the CIFAR-10 train statistics of part C; JPEG q75 caveat) of part B's VSDM and VP runs at
# the end and at their first checkpoint, and their final sample grids.
set -u
. scripts/gpu/common.sh
S=crates/vsdm-eval/scripts/fid_reference.py
for s in test noise; do echo "FID $s vs train, PyTorch+scipy: $(python3 $S fid "$K/py_train.npz" "$K/py_$s.npz")"; done
log "PyTorch eager, batch 128"
timeout 120 python3 bench/unet_ddpmpp.py bench --arch tiny ddpmpp --batch 128 --iters 20 --precision f32 tf32 bf16
log "PyTorch compiled (ddpmpp)"
timeout 150 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 --precision f32 bf16 --mode compiled 2>&1 | grep -v Warning | tail -6
log "PyTorch kernel-time breakdown (ddpmpp, f32, eager)"
timeout 60 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 2 --precision f32 --profile | tail -32
for m in vsdm vp; do
    echo "$m: $(grep -a "steps this session" "$K/train-$m.log")"
    ls "$K/run-$m/weights-early" | tr '\n' ' '; echo
    cp "$(ls "$K/run-$m/samples/"*.png | tail -1)" "$OUT/grid-$m.png"
done
for w in weights weights-early; do
    log "FID-10k $w"
    for m in vsdm vp; do
        ( timeout 200 vsdm-image --cuda fid --weights "$K/run-$m/$w" --n 10000 --batch 1000 --steps 50 \
            --reference "$K/rs_train.npz" --inception "$K/incep.safetensors" >"$K/fid-$m-$w.log" 2>&1 ) &
    done
    wait
    for m in vsdm vp; do echo "$m $w: $(grep -a -E "images with|FID" "$K/fid-$m-$w.log" | tr '\n' ' ')"; done
done
log done
