#!/usr/bin/env bash
# Prepares a CUDA build environment on a machine without a CUDA toolkit or GPU (see README, "GPU build").
#
#   cargo fetch                                  # the driver stub below lists cudarc's symbols from the sources
#   scripts/setup-cuda-build.sh .cuda            # nvcc 13.0 + CUDA 13.0 libraries from PyPI wheels, stub libcuda
#   source .cuda/env.sh
#   cargo build --release -p vsdm-image --features cuda      # (or vsdm-toys, vsdm-timeseries, vsdm-eval)
#   cargo build --release -p vsdm-image --features cudnn     # convolutions through cuDNN (`--conv cudnn`)
#
# nvcc stays on 13.0.x to match the CUDA 13.0 drivers of the GPU machines; CUDA_COMPUTE_CAP=90 targets
# H100/H200. No wheel ships the driver (libcuda.so.1), so a stub exporting cudarc's entry points (each returning
# an error) lets the build link and lets a `cuda` binary start here, where `Device::new_cuda(0)` then fails cleanly.
set -euo pipefail
prefix="${1:?usage: scripts/setup-cuda-build.sh PREFIX}"
mkdir -p "$prefix"
prefix="$(cd "$prefix" && pwd)"

python3 -m venv "$prefix/venv"
"$prefix/venv/bin/pip" install --quiet --disable-pip-version-check \
  nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 \
  nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88 nvidia-curand==10.4.0.35 nvidia-cublas==13.1.0.3

wheels="$("$prefix/venv/bin/python" -c 'import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
root="$prefix/cuda"
mkdir -p "$root/lib64/stubs"
for d in bin include nvvm; do ln -sfn "$wheels/$d" "$root/$d"; done
for lib in libcudart.so.13 libnvrtc.so.13 libcurand.so.10 libcublas.so.13 libcublasLt.so.13; do
  ln -sfn "$wheels/lib/$lib" "$root/lib64/${lib%%.so*}.so"   # for the linker
  ln -sfn "$wheels/lib/$lib" "$root/lib64/$lib"                # for the loader (the binary asks for the soname)
done

sys="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.*/src/driver/sys/mod.rs 2>/dev/null | tail -1)"
if [ -z "$sys" ]; then
  echo "cudarc sources not found: run \`cargo fetch\` in the repository first" >&2
  exit 1
fi

# stub SONAME LIB PREFIX BINDINGS CODE HEAD: lib64/stubs/LIB.so exporting every PREFIX* function cudarc's BINDINGS
# load (each returning CODE), after the hand-written functions HEAD (which the list then skips).
stub() {
  local soname=$1 lib=$2 pre=$3 bindings=$4 code=$5 head=$6 c="$root/lib64/stubs/$2_stub.c"
  local skip; skip=$(printf '%s\n' "$head" | grep -oE "\b$pre[A-Za-z0-9_]+\(" | tr -d '(' | paste -sd'|')
  {
    printf '%s\n' "$head"
    grep -oE "load::<_F>\(\"$pre[A-Za-z0-9_]+\"" "$bindings" | sed -E "s/.*\"($pre[A-Za-z0-9_]+)\"/\1/" | sort -u \
      | grep -vxE "${skip:-^$}" | sed -E "s/.*/int &(void) { return $code; }/"
  } > "$c"
  gcc -shared -fPIC -O1 -Wl,-soname,"$soname" -o "$root/lib64/stubs/$lib.so" "$c"
  ln -sfn "$lib.so" "$root/lib64/stubs/$soname"
}

# The driver stub: every cu* entry point, returning an error code (100: no device).
stub libcuda.so.1 libcuda cu "$sys" 100 \
'int cuGetErrorString(int e, const char **s) { (void)e; *s = "stub libcuda: no CUDA driver on this machine"; return 0; }
int cuGetErrorName(int e, const char **s) { (void)e; *s = "CUDA_ERROR_NO_DEVICE (stub)"; return 0; }'

# The same for cuDNN (vsdm-image's `cudnn` feature links libcudnn.so.9), so the build links without the 850 MB
# cuDNN wheel. At run time the binary needs the real cuDNN 9 on the loader path (on the GPU machines: the copy
# inside PyTorch, see scripts/gpu/common.sh).
stub libcudnn.so.9 libcudnn cudnn "$(dirname "$(dirname "$(dirname "$sys")")")/cudnn/sys/mod.rs" 4 \
'const char *cudnnGetErrorString(int s) { (void)s; return "stub libcudnn: link-time stand-in, no cuDNN loaded"; }'

cat > "$prefix/env.sh" <<ENV
export PATH="$root/bin:\$PATH"
export CUDA_ROOT="$root"
export CUDA_COMPUTE_CAP=90
export CUDAFORGE_THREADS=2
export LD_LIBRARY_PATH="$root/lib64:$root/lib64/stubs:\${LD_LIBRARY_PATH:-}"
ENV
echo "CUDA build environment ready: source $prefix/env.sh"
