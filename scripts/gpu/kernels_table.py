#!/usr/bin/env python3
"""Groups the kernel tables of scripts/gpu/kernprof.c (kernels-NAME.csv: total_ms,calls,mean_us,share_pct,name
after a '# GPU busy …' line) into the categories of docs/benchmarks/image.md's trace table and prints one
Markdown table, a column per file: the share of GPU busy time per category, and the busy time.

    python3 scripts/gpu/kernels_table.py docs/benchmarks/gpu-2026-12-04/kernels-{before,after}.csv

Categories are matched in order, first match wins; a kernel that matches none is counted under "other" and
listed on stderr, so a new kernel name is seen rather than silently mis-filed.
"""
import csv
import re
import sys

CATEGORIES = [
    ("`conv_transpose2d` (candle's input gradient)", r"conv_transpose2d"),
    ("`im2col` (candle's patch gather)", r"^im2col_(f16|bf16|f32|f64)$"),
    ("patch kernel (`--conv patch`, `im2col.cu`)", r"^im2col_b(16|32|64)$"),
    ("group-norm kernels (`--norm kernel`, `gn.cu`)", r"^gn_"),
    ("cuDNN FFT convolution (transforms, complex products)", r"fft|pointwise_mult_and_sum_complex|cf32|flip_filter"),
    ("cuDNN implicit-GEMM, Winograd and direct engines", r"cudnn|implicit_gemm|dgrad|wgrad|winograd"),
    ("GEMM (cuBLAS, CUTLASS, `nvjet`)", r"gemm|nvjet|cutlass|splitKreduce"),
    ("`bmul`", r"^bmul_"),
    ("`badd`", r"^badd_"),
    ("`bsub`", r"^bsub_"),
    ("other broadcast binary (`bdiv`, `bmaximum`, …)", r"^b(div|minimum|maximum)_"),
    ("copies (`ucopy`, `copy2d`)", r"^(ucopy|copy2d)_"),
    ("casts", r"^cast_"),
    ("reductions (`fast_sum`, `fast_max`, …)", r"^fast_"),
    ("unary, affine and comparison element-wise", r"^(u[a-z]+|affine|const_set|ge|lt|eq|ne|le|gt|where)_"),
    ("memcpy / memset", r"^\[mem"),
    ("random numbers (cuRAND)", r"curand|generate_seed"),
    ("index and comparison kernels", r"^is_u32_"),
]


def read(path):
    busy, rows = None, []
    with open(path, newline="") as f:
        lines = f.read().splitlines()
    for line in lines:
        m = re.match(r"# GPU busy ([0-9.]+) ms", line)
        if m:
            busy = float(m.group(1))
    body = [l for l in lines if not l.startswith("#")]
    for r in csv.DictReader(body):
        rows.append((r["name"], float(r["total_ms"]), float(r["share_pct"])))
    if busy is None:
        busy = sum(ms for _, ms, _ in rows)
    return busy, rows


def categorise(rows, path):
    shares = {name: 0.0 for name, _ in CATEGORIES}
    shares["other"] = 0.0
    for kernel, _, share in rows:
        for name, pattern in CATEGORIES:
            if re.search(pattern, kernel):
                shares[name] += share
                break
        else:
            shares["other"] += share
            print(f"{path}: other: {kernel} {share:.2f}%", file=sys.stderr)
    return shares


def main(paths):
    if not paths:
        sys.exit(__doc__)
    cols = []
    for p in paths:
        busy, rows = read(p)
        cols.append((p.rsplit("/", 1)[-1].removesuffix(".csv"), busy, categorise(rows, p)))
    print("| kernels | " + " | ".join(c[0] for c in cols) + " |")
    print("|---|" + "---:|" * len(cols))
    print("| busy time | " + " | ".join(f"{c[1]:,.0f} ms" for c in cols) + " |")
    for name in [n for n, _ in CATEGORIES] + ["other"]:
        vals = [c[2][name] for c in cols]
        if all(v == 0 for v in vals):
            continue
        print(f"| {name} | " + " | ".join(f"{v:.1f}%" if v else "—" for v in vals) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
