#!/usr/bin/env bash
# A CPU stand-in for issue 6's comparison (the GPU version is scripts/gpu/fid.sh): VSDM and VP, tiny network,
# equal steps (800 updates of batch 64, checkpoints every 200), trained one after the other on the CIFAR-10
# train set; then FID-2k (2,000 samples, 50 Euler–Maruyama steps, EMA weights, the same sampler seed for both)
# against the Inception statistics of 5,000 training images (every 10th of the class-sorted folder), at the end
# of training and at the first checkpoint (step 200). About 2 hours on 2 cores (docs/results/image.md).
#
#   scripts/cpu-fid.sh DATA INCEPTION OUT
#
# DATA: the train/ folder of the unpacked JPEG set (../shared/data/cifar10/cifar10-jpeg-q75.tar.gz) or any
# CIFAR-10 source `vsdm-image train --data` takes; INCEPTION: weights converted by `vsdm-eval convert`.
set -eu -o pipefail
DATA=$1 INCEPTION=$2 K=$3
B=${BIN:-$(cd "$(dirname "$0")/.." && pwd)/target/release}
mkdir -p "$K"
log() { echo "== $(date +%T) $*"; }
for m in vsdm vp; do
    log "train $m"
    "$B/vsdm-image" train --method "$m" --arch tiny --data "$DATA" --batch 64 --iters 800 --lr 5e-4 \
        --ckpt-every 200 --sample-every 0 --grid 64 --grid-steps 100 --minutes 600 --out "$K/run-$m" \
        >"$K/train-$m.log" 2>&1 &
    pid=$!
    # The trainer rewrites weights/ at every checkpoint: keep the first one's.
    until [ -f "$K/run-$m/weights/run.json" ] || ! kill -0 $pid 2>/dev/null; do sleep 1; done
    sleep 3
    cp -r "$K/run-$m/weights" "$K/run-$m/weights-early"
    wait $pid
    grep -a -E "steps this session|trained" "$K/train-$m.log" | tail -2 || true
done
log "reference: 5,000 training images"
"$B/vsdm-eval" stats "$DATA" --weights "$INCEPTION" --every 10 -o "$K/ref.npz" >"$K/ref.log" 2>&1
for stage in end early; do
    for m in vsdm vp; do
        w="$K/run-$m/weights"
        [ $stage = early ] && w="$K/run-$m/weights-early"
        log "FID-2k $m $stage"
        "$B/vsdm-image" fid --weights "$w" --reference "$K/ref.npz" --inception "$INCEPTION" --n 2000 \
            --batch 250 --steps 50 --sampler em --npz "$K/$stage-$m.npz" >"$K/fid-$stage-$m.log" 2>&1
        tail -1 "$K/fid-$stage-$m.log"
        "$B/vsdm-eval" pack "$K/$stage-$m.npz" --limit 64 --grid "$K/$stage-$m.png" >/dev/null
    done
done
log done
