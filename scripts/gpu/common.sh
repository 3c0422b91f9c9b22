# Shared setup of the GPU scripts: binaries and data are kept in $K across the calls of one session.
K=${K:-/root/keep}
mkdir -p "$K/bin"
export PATH="$K/bin:$PATH"
OUT=${OUT:-$K/out}
mkdir -p "$OUT"
log() { echo "== $* ($(date +%T))"; }
# Peak GPU memory used (MiB, nvidia-smi, whole device) while a command runs.
with_mem() {
    local f; f=$(mktemp)
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$f" &
    local p=$!
    "$@"; local rc=$?
    kill $p 2>/dev/null; wait $p 2>/dev/null
    echo "peak GPU memory used during '$*': $(sort -n "$f" | tail -1) MiB (baseline $(head -1 "$f") MiB)"
    rm -f "$f"; return $rc
}
# cuDNN 9 for the `cudnn` build of vsdm-image (linked against a stub here): the copy inside PyTorch's
# installation, else any libcudnn.so.9 on the machine.
cudnn_lib=$(python3 -c 'import os, nvidia.cudnn as c; print(os.path.join(list(c.__path__)[0], "lib"))' 2>/dev/null)
[ -e "$cudnn_lib/libcudnn.so.9" ] || cudnn_lib=$(dirname "$(find / -name libcudnn.so.9 2>/dev/null | head -1)" 2>/dev/null)
[ -n "$cudnn_lib" ] && export LD_LIBRARY_PATH="$cudnn_lib:${LD_LIBRARY_PATH:-}"
