#!/usr/bin/env bash
# GPU part B: unpack CIFAR-10 (JPEG q75) and start the short VSDM and VP training runs in the background
# (equal step counts, sized from part A's measured throughput), plus packing the train/test sets for part C.
# Stashes .gpuB/pt.part2 (middle bytes of the FID TorchScript file).
set -u
. scripts/gpu/common.sh
cp .gpuB/pt.part2 "$K/pt.part2a"
mkdir -p "$K/cifar" && tar xzf .gpuB/cifar10-jpeg-q75.tar.gz -C "$K/cifar" && ls "$K/cifar"
RATE=$(awk -F'|' '$2 ~ /tiny/ {print $5+0}' "$K/bench-tiny.md" 2>/dev/null)
RATE=${RATE:-1000}
# Two runs share the GPU with part C's FID work: assume a third of the solo rate each, ~8 minutes.
N=$(python3 -c "print(max(500, int($RATE / 3 * 480 / 128) // 100 * 100))")
CK=$(( N / 4 ))
echo "solo tiny training rate $RATE img/s -> $N steps per method, checkpoint every $CK"
echo "$N" >"$K/steps"
for m in vsdm vp; do
    setsid nohup vsdm-image --cuda train --method $m --arch tiny --data "$K/cifar" --batch 128 --iters "$N" \
        --lr 5e-4 --ema 0.999 --block 200 --ckpt-every "$CK" --sample-every 0 --grid 64 --grid-steps 100 \
        --minutes 11 --out "$K/run-$m" >"$K/train-$m.log" 2>&1 </dev/null &
    setsid nohup bash -c "until [ -f $K/run-$m/weights/run.json ]; do sleep 1; done; sleep 4; \
        cp -r $K/run-$m/weights $K/run-$m/weights-early" >/dev/null 2>&1 </dev/null &
done
setsid nohup bash -c "vsdm-eval pack $K/cifar/train --npz $K/train.npz && vsdm-eval pack $K/cifar/test \
    --npz $K/test.npz && touch $K/pack.done" >"$K/pack.log" 2>&1 </dev/null &
sleep 45
tail -c 400 "$K/train-vsdm.log"; echo; tail -c 400 "$K/train-vp.log"; echo
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
log done
