#!/usr/bin/env bash
# Builds what scripts/gpu/session.sh runs on a GPU machine and packs it into .gpuD (git-ignored; carry it):
# vsdm-image (`cuda`), vsdm-image-cudnn (`cudnn`), vsdm-eval (`cuda` and `cudnn`, for scripts/gpu/fid.sh), vsdm-timeseries with its net_speed and synthetic_archive
# examples (`cuda`), and kernprof.so (the CUPTI kernel tracer, built against CUPTI 13.0's headers from PyPI; the
# session rebuilds it there against the machine's own CUPTI when it can). About 25 minutes on 2 cores from cold.
# .gpuD/SOURCES records what was built: a hash of the committed sources of the binaries (Cargo.toml, Cargo.lock,
# crates/, vendor/, kernprof.c; "dirty" if the work tree changes them), taken before the build starts. A .gpuD whose
# SOURCES differ from the checkout's is stale: `scripts/gpu/pack.sh --check` says so (exit 1).
set -euo pipefail
cd "$(dirname "$0")/../.."
src=(Cargo.toml Cargo.lock crates vendor scripts/gpu/kernprof.c)
stamp() {
    git ls-files -s -- "${src[@]}" | git hash-object --stdin
    if git status --porcelain --untracked-files=no -- "${src[@]}" | grep -q .; then echo dirty; fi
}
built=$(stamp)
if [ "${1:-}" = --check ]; then
    if [ "$(cat .gpuD/SOURCES 2>/dev/null)" = "$built" ]; then
        echo ".gpuD is fresh (sources $(echo "$built" | tr '\n' ' '))"
        exit 0
    fi
    echo ".gpuD is stale or missing (built from: $(tr '\n' ' ' 2>/dev/null <.gpuD/SOURCES || echo none);" \
        "checkout: $(echo "$built" | tr '\n' ' ')): rerun scripts/gpu/pack.sh"
    exit 1
fi
rm -f .gpuD/SOURCES
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
cargo build --release -p vsdm-eval --features cuda
xz -T2 -c "$r/vsdm-eval" >.gpuD/vsdm-eval.xz
cargo build --release -p vsdm-eval --features cudnn
xz -T2 -c "$r/vsdm-eval" >.gpuD/vsdm-eval-cudnn.xz
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
echo "$built" >.gpuD/SOURCES
du -sh .gpuD; ls -la .gpuD
