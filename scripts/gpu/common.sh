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
