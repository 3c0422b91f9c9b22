#!/usr/bin/env bash
# GPU part F (issue 5, not yet run on a GPU): the time-series network at electricity's shape (370 series,
# context 72, horizon 24) on CUDA: time per training step and GPU memory, then the electricity path end to end on
# the generated 370-series archive. Needs .gpuD/{vsdm-timeseries,net_speed,synthetic_archive}.xz (the `cuda`
# builds: cargo build --release -p vsdm-timeseries --features cuda --bin vsdm-timeseries --example net_speed
# --example synthetic_archive).
set -u
. scripts/gpu/common.sh
for b in vsdm-timeseries net_speed synthetic_archive; do xz -dc .gpuD/$b.xz >"$K/bin/$b" && chmod +x "$K/bin/$b"; done

log "time per step at electricity's shape, batch 4 and 32 (the third step is the steady one)"
with_mem timeout 120 net_speed 370 72 24 4
with_mem timeout 120 net_speed 370 72 24 32

log "electricity path end to end on the generated archive (the CPU run of docs/results/timeseries.md, on CUDA)"
synthetic_archive "$K/elec" >/dev/null
with_mem timeout 300 vsdm-timeseries --data "$K/elec/electricity_nips" --iters 10 --batch 2 --stages 1 \
    --n-traj 4 --traj-steps 5 --a-iters 5 --samples 10 --steps 5 --sample-batch 10 --max-windows 1 --charts 3 \
    --out "$K/ts" 2>&1 | grep -v INFO | tail -12
log done
