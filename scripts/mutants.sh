#!/usr/bin/env bash
# Mutation testing of the maths: cargo-mutants (`cargo install cargo-mutants`) changes one operator, constant or
# return value at a time in the named files and runs the crate's tests; a mutant the tests do not catch is a
# behaviour no test pins down. Results: docs/CORE.md "Mutation testing".
#
#   scripts/mutants.sh [OUT] [-- extra cargo-mutants arguments, e.g. --shard 0/4 or -F 'score_at']
#
# FILES (space-separated globs, default: the forward processes, schedules, samplers and kernels of vsdm-core)
# and PKG (default vsdm-core) choose the scope; TESTS (default `--lib --tests`) the test targets, e.g.
# TESTS='--lib --test loaders' for vsdm-timeseries, whose CLI and pipeline tests train networks. Works on a copy of the tree; OUT (default target/mutants)
# receives mutants.out/{caught,missed,timeout,unviable}.txt. The copy builds once from scratch (a few minutes),
# then each mutant rebuilds incrementally (profile `mutants` in Cargo.toml) and runs the crate's unit and
# integration tests (not the doctests) — about 15–25 s a mutant on 2 cores.
set -eu -o pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/mutants}
[ $# -gt 0 ] && shift
[ "${1:-}" = "--" ] && shift
PKG=${PKG:-vsdm-core}
FILES=${FILES:-"crates/vsdm-core/src/process/*.rs crates/vsdm-core/src/schedule.rs crates/vsdm-core/src/sampler.rs crates/vsdm-core/src/kernel/diag.rs crates/vsdm-core/src/metrics.rs"}
if ! cargo mutants --version >/dev/null 2>&1; then
    echo "cargo-mutants is not installed: cargo install cargo-mutants" >&2
    exit 2
fi
tool=()
# nextest where present, except for vsdm-eval: its harness-less allocator check (tests/allocator.rs) prints no
# test list, which nextest refuses ("creating test list failed"); cargo's own runner takes it.
[ "$PKG" != vsdm-eval ] && cargo nextest --version >/dev/null 2>&1 && tool=(--test-tool nextest)
args=()
for f in $FILES; do args+=(-f "$f"); done
read -r -a tests <<<"${TESTS:---lib --tests}"
exec cargo mutants -p "$PKG" --profile mutants "${tool[@]}" "${args[@]}" -o "$OUT" "$@" -- "${tests[@]}"
