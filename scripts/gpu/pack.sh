#!/usr/bin/env bash
# Builds what scripts/gpu/session.sh runs on a GPU machine and packs it into .gpuD (git-ignored; carry it):
# vsdm-image (`cuda`), vsdm-image-cudnn (`cudnn`), vsdm-timeseries with its net_speed and synthetic_archive
# examples (`cuda`), and kernprof.so (the CUPTI kernel tracer, built against CUPTI 13.0's headers from PyPI; the
# session rebuilds it there against the machine's own CUPTI when it can). About 25 minutes on 2 cores from cold.
# .gpuD/COMMIT records the commit built (and "dirty" for uncommitted changes to tracked files); a .gpuD whose
# COMMIT is not `git rev-parse HEAD` is stale: `scripts/gpu/pack.sh --check` says so (exit 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
stamp() { git rev-parse HEAD; git status --porcelain --untracked-files=no | grep -q . && echo dirty; true; }
if [ "${1:-}" = --check ]; then
    if [ "$(cat .gpuD/COMMIT 2>/dev/null)" = "$(stamp)" ]; then
        echo ".gpuD is fresh ($(git rev-parse --short HEAD))"
        exit 0
    fi
    echo ".gpuD is stale or missing (built at: $(tr '\n' ' ' 2>/dev/null <.gpuD/COMMIT || echo none); HEAD: $(stamp | tr '\n' ' ')): rerun scripts/gpu/pack.sh"
    exit 1
fi
[ -f .cuda/env.sh ] || { cargo fetch && scripts/setup-cuda-build.sh .cuda; }
# shellcheck disable=SC1091
source .cuda/env.sh
export CARGO_TARGET_DIR="$PWD/target-cuda"
r="$CARGO_TARGET_DIR/release"
mkdir -p .gpuD
cargo build --release -p vsdm-image --features cudnn
xz -T2 -c "$r/vsdm-image" >.gpuD/vsdm-image-cudnn.xz
cargo build --release -p vsdm-image --features cuda
xz -T2 -c "$r/vsdm-image" >.gpuD/vsdm-image.xz
cargo build --release -p vsdm-timeseries --features cuda --bin vsdm-timeseries --example net_speed \
    --example synthetic_archive
for b in vsdm-timeseries examples/net_speed examples/synthetic_archive; do
    xz -T2 -c "$r/$b" >".gpuD/$(basename "$b").xz"
done
if [ ! -f .cuda/cupti/nvidia/cu13/include/cupti.h ]; then
    .cuda/venv/bin/pip download --quiet --no-deps nvidia-cuda-cupti==13.0.85 -d .cuda/cupti
    (cd .cuda/cupti && python3 -m zipfile -e nvidia_cuda_cupti-*.whl .)
fi
c=.cuda/cupti/nvidia/cu13
gcc -Wall -Wextra -shared -fPIC -O2 -I$c/include -I"$CUDA_ROOT/include" -o .gpuD/kernprof.so scripts/gpu/kernprof.c \
    -L$c/lib -l:libcupti.so.13
stamp >.gpuD/COMMIT
du -sh .gpuD; ls -la .gpuD
