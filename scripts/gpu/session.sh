#!/usr/bin/env bash
# The GPU checks of issues 6 and 7 sized for one 15-minute lease (a machine start of 1–2 minutes, then two
# calls on the warm machine), most important first, every result written to $OUT as soon as it exists so that a
# call cut at its limit still returns what it measured.
#
#   scripts/gpu/pack.sh                       # here: the `cuda`/`cudnn` builds and kernprof.so into .gpuD (≈ 36 MB)
#   scripts/gpu/pack.sh --check               # here: is .gpuD built from these sources? (exit 1 if not)
#   run: scripts/gpu/session.sh core          # carry [".gpuD"], timeout_s 480 (15 min of device time, the start included:
#                                             # 480 + 240 + a 1.5-min start leaves a margin); 412 s on 2026-12-04 (H200);
#                                             # since: the new defaults, fewer variants, − time series
#   run: scripts/gpu/session.sh extra         # carry [".gpuD"], timeout_s 240 (what 900 s leaves), at once (30 s idle and the
#                                             # machine goes back); then give_back
#   DRY=1 scripts/gpu/session.sh core         # here, without a GPU: the same steps on the CPU at toy sizes
#                                             # (BIN_DIR: the release binaries to use, default target/release)
#
# core:  CUDA = CPU with both builds' defaults on the tiny network (with the element-wise kernels' table: dropout,
#        fused AdamW and EMA against their CPU loops) (the paper-scale checks of the crate's own
#        kernels and of cuDNN's measured search ran on the H100 on 2026-12-05); candle's training throughput at
#        batch 128 before (`--conv gemm --norm fused`) and after (the plain build's default `--conv patch --norm
#        kernel`, the cudnn build's cuDNN with the measured search, and its heuristic; candle_nn's AdamW against
#        the fused one), f32, TF32 and bf16, with
#        peak GPU memory; PyTorch eager on the same network (f32, TF32, bf16); a bf16 paper-scale training smoke
#        run and sampling throughput. (The time-series steps of issue 5 ran on 2026-12-04 and are done.)
# extra: kernel-time breakdowns before and after (candle through kernprof.so, a CUPTI tracer: nsys is not on
#        those machines; PyTorch through torch.profiler), then PyTorch compiled (f32, bf16).
set -u -o pipefail
part=${1:-core}
. scripts/gpu/common.sh
if [ -n "${DRY:-}" ]; then
    # CPU stand-ins: the release binaries of this checkout, toy sizes, no GPU memory readings.
    CUDA=""; ARCH=tiny; B=2; IT=1; TSB=2; NS=8; PT=""
    r=${BIN_DIR:-$PWD/target/release}
    for b in vsdm-image vsdm-timeseries; do ln -sf "$r/$b" "$K/bin/$b"; done
    ln -sf "$r/vsdm-image" "$K/bin/vsdm-image-cudnn"
    for b in net_speed synthetic_archive; do ln -sf "$r/examples/$b" "$K/bin/$b"; done
    with_mem() { "$@"; }
    CUDNN="--conv gemm"   # a CPU build has no cuDNN: the same steps with another convolution
    HEUR=""; EXACT=""     # (--cudnn-algo needs --conv cudnn)
else
    CUDA="--cuda"; ARCH=ddpmpp; B=128; IT=6; TSB=32; NS=370; PT=1
    for b in vsdm-image vsdm-image-cudnn vsdm-timeseries net_speed synthetic_archive; do
        xz -dc ".gpuD/$b.xz" >"$K/bin/$b" && chmod +x "$K/bin/$b"
    done
    CUDNN="--conv cudnn"
    HEUR="--cudnn-algo heuristic"; EXACT="--cudnn-algo find-exact"
    echo "binaries built from sources: $(tr '\n' ' ' 2>/dev/null <.gpuD/SOURCES || echo unknown)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"
    echo "cuDNN from: ${cudnn_lib:-not found}"
fi
# Each step appends to $OUT/<part>.log; some tables also go to their own files (at most 8 files come back).
exec > >(tee -a "$OUT/$part.log") 2>&1

if [ "$part" = core ]; then
    # The crate's own kernels (`--conv patch --norm kernel`, the defaults since) passed on the paper-scale
    # network on the H100 (2026-12-05, ≤ 3.4e-6), and so did cuDNN's measured search but for two f32
    # convolution rows (Winograd, 1.6e-5); the tiny network's three methods are checked with both builds'
    # defaults (≈ 30 s each).
    log "1. CUDA vs CPU (f32 to 1e-5): the defaults, tiny (three methods)"
    timeout 60 vsdm-image $CUDA check-device --arch tiny --method vsdm vp vsmd --batch 4 --steps 1 \
        | tee "$OUT/check.md" && echo "check-device tiny: passed" || echo "error: check-device tiny (rc $?)"
    log "1a. CUDA vs CPU, the cudnn build's default (cuDNN with the measured search), tiny (three methods)"
    RUST_LOG=vsdm_image=info timeout 60 vsdm-image-cudnn $CUDA $CUDNN check-device --arch tiny \
        --method vsdm vp vsmd --batch 4 --steps 1 \
        | tee "$OUT/check-cudnn.md" && echo "check-device cuDNN: passed" || echo "error: check-device cuDNN (rc $?)"

    log "1b. CUDA vs CPU, cuDNN's measured search without Winograd and FFT in exact f32 (find-exact), $ARCH"
    RUST_LOG=vsdm_image=info timeout 150 vsdm-image-cudnn $CUDA $CUDNN $EXACT check-device --arch $ARCH \
        --method vsdm --batch 4 --steps 1 | tee "$OUT/check-exact.md" && echo "check-device find-exact: passed" \
        || echo "error: check-device find-exact (rc $?)"

    # The time-series network (issue 5's checks ran on 2026-12-04) has changed since: q/k/v packed through the
    # attention and the vendored candle-core's gradient accumulation; one CUDA-vs-CPU step at electricity's shape.
    log "1c. time series: CUDA vs CPU, one training step at electricity's shape (net_speed check)"
    timeout 60 net_speed check 370 72 24 $([ -n "$CUDA" ] && echo 4 || echo 1) 2>&1 | tail -6 \
        && echo "net_speed check: passed" || echo "error: net_speed check (rc $?)"

    log "2. candle training throughput, $ARCH, batch $B: before, after, per precision (peak GPU memory)"
    bench="bench --arch $ARCH --batch $B --iters $IT"
    # (candle's own ops, and each of the crate's kernels alone, were measured on 2026-12-04/05 and are left out.)
    # `bench --adam candle-nn`: candle_nn's AdamW, the optimiser of every table before the fused AdamW
    # (2026-12-05, late); the default `--adam fused` is vsdm-core's, as training uses. The cudnn build's default
    # with both isolates the optimiser's share.
    # Each variant is "BINARY GLOBAL-FLAGS|BENCH-FLAGS": `--adam` belongs to the bench subcommand, after it.
    # run_variant LIMIT VARIANT [MORE-BENCH-FLAGS…]
    run_variant() {
        local limit=$1 v=$2 tail=""; shift 2
        [ "${v#*|}" != "$v" ] && tail=${v#*|}
        with_mem timeout "$limit" ${v%%|*} $CUDA $bench "$@" $tail | tee -a "$OUT/bench.md"
    }
    for v in "vsdm-image --conv gemm --norm fused|--adam candle-nn" "vsdm-image" "vsdm-image --tf32" \
        "vsdm-image-cudnn $CUDNN $HEUR" "vsdm-image-cudnn $CUDNN|--adam candle-nn" "vsdm-image-cudnn $CUDNN" \
        "vsdm-image-cudnn $CUDNN $EXACT" "vsdm-image-cudnn $CUDNN --tf32"; do
        run_variant 90 "$v"
    done
    if [ -n "$CUDA" ]; then
        for v in "vsdm-image --conv gemm --norm fused|--adam candle-nn" "vsdm-image" \
            "vsdm-image-cudnn $CUDNN|--adam candle-nn" "vsdm-image-cudnn $CUDNN"; do
            run_variant 60 "$v" --precision bf16
        done
    fi

    if [ -n "$PT" ]; then
        log "3. PyTorch eager, same network, batch $B (cuDNN autotune on)"
        timeout 100 python3 bench/unet_ddpmpp.py bench --arch $ARCH --batch $B --iters 20 \
            --precision f32 tf32 bf16 | tee "$OUT/torch.md"
    fi

    # One variational stage, sized down: the H100 session's smoke run (`--block 2`, the paper budget) simulated
    # 256 trajectories × 100 steps at step 2, 25,600 network evaluations (≈ 95 s at candle's measured 268
    # images/s forward rate), the likely main part of the 150 s it ran out.
    log "4. paper-scale bf16 training smoke run (bundled 1,000 images), then sampling throughput"
    prec=""; [ -n "$CUDA" ] && prec="--precision bf16"
    timeout 120 vsdm-image $CUDA train --arch $ARCH $prec --data assets/image/cifar10-train-1000.bin \
        --batch $((B / 4 > 2 ? B / 4 : 2)) --iters 3 --block 2 --n-traj 8 --traj-steps 10 --a-iters 5 \
        --ckpt-every 0 --sample-every 0 --grid 4 --grid-steps 5 --overwrite --out "$K/smoke" 2>&1 | grep -v " INFO " | tail -8
    with_mem timeout 90 vsdm-image $CUDA sample --weights "$K/smoke/weights" --n $((B * 4)) --batch $((B * 4)) \
        --steps 20 --grid "$OUT/smoke-grid.png" 2>&1 | grep -v " INFO " | tail -4

fi

if [ "$part" = extra ]; then
    log "6. candle's kernel-time breakdown (CUPTI, kernprof.so), $ARCH batch $B: before, after, after in bf16"
    # CUPTI: the CUDA toolkit's copy, else PyTorch's (CUPTI_DIR overrides); only libcupti goes on the loader
    # path, so the binaries keep the CUDA libraries they use in the bench above.
    cu=${CUPTI_DIR:-$(python3 -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))' 2>/dev/null)}
    lib=$(ls /usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13 "$cu/lib/libcupti.so.13" 2>/dev/null | head -1)
    mkdir -p "$K/cupti" && ln -sf "$lib" "$K/cupti/libcupti.so.13"
    gcc -shared -fPIC -O2 -I/usr/local/cuda/extras/CUPTI/include -I"$cu/include" -I/usr/local/cuda/include \
        -I"${CUDA_ROOT:-.}/include" -o "$K/kernprof.so" scripts/gpu/kernprof.c -L"$K/cupti" -l:libcupti.so.13 \
        -Wl,-rpath,"$K/cupti" || cp .gpuD/kernprof.so "$K/kernprof.so"
    kp() {
        local name=$1; shift
        # env, not the shell, sets LD_PRELOAD: `timeout` itself must not load the tracer (its exit would
        # overwrite the table with an empty one).
        timeout 60 env KERNPROF_OUT="$OUT/kernels-$name.csv" KERNPROF_SKIP_MS="${SKIP_MS:-0}" \
            LD_PRELOAD="$K/kernprof.so" LD_LIBRARY_PATH="$K/cupti:${LD_LIBRARY_PATH:-}" "$@"
        echo "kernels-$name.csv ($*):"; head -16 "$OUT/kernels-$name.csv" 2>/dev/null
    }
    b3="bench --arch $ARCH --batch $B --iters 3"
    kp before vsdm-image --conv gemm --norm fused $CUDA $b3 --adam candle-nn
    kp after vsdm-image $CUDA $b3
    kp after-cudnn vsdm-image-cudnn $CUDNN $CUDA $b3
    [ -n "$CUDA" ] && kp after-bf16 vsdm-image $CUDA $b3 --precision bf16
    [ -n "$CUDA" ] && kp after-cudnn-bf16 vsdm-image-cudnn $CUDNN $CUDA $b3 --precision bf16
    # The traces grouped into image.md's categories (share of GPU busy time), one column per trace.
    python3 scripts/gpu/kernels_table.py "$OUT"/kernels-*.csv 2>&1
    if [ -n "$PT" ]; then
        log "7. PyTorch eager's kernels (torch.profiler), f32 and bf16"
        for p in f32 bf16; do
            timeout 60 python3 bench/unet_ddpmpp.py bench --arch $ARCH --batch $B --iters 3 --precision $p \
                --profile 2>&1 | head -40
        done
        log "8. PyTorch compiled, same network, batch $B (training rate only: one graph to compile per precision)"
        for p in bf16 f32; do
            timeout 120 python3 bench/unet_ddpmpp.py bench --arch $ARCH --batch $B --iters 20 --precision $p \
                --mode compiled 2>&1 | grep -v Warning | tail -3 | tee -a "$OUT/torch-compiled.md"
        done
    fi
fi
# The figures to transcribe, last, so that they are inside the call's 12,000-character output tail (the whole
# log comes back as $OUT/<part>.log).
log "summary"
grep -a -E "^error|passed$|^convolutions:|^\| (dropout|AdamW|EMA)|^\| (tiny|ddpmpp) \| [0-9]|peak GPU memory used|steps this session|images with|train step| vs CPU \(f32|trained |^# GPU busy|^kernels-" \
    "$OUT/$part.log" | grep -v -E "^\| (tiny|ddpmpp) \| (vsdm|vp|vsmd) " | cut -c1-200 | tail -60
log done
