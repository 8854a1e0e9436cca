"""Inferneo's f32 GEMM vs numpy (OpenBLAS) sgemm at GPT-2 shapes, measured side by side.

Usage (from the repository root, after `cargo build --release`):
    python tools/reference/sgemm_vs_numpy.py [--rounds 3] [--inferneo target/release/inferneo]

Each round runs `inferneo roofline --sgemm --json --rounds 1` (the f32 products at M >= 32, in
cache), then numpy on the same shapes; every figure is the best of its rounds, so a slow spell of
a shared machine costs one round of one side, not the comparison. Prints GFLOP/s for both and
the ratio inferneo/numpy. numpy's matmul here includes no bias; Inferneo's includes the bias
add, so the ratio slightly favours numpy. Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for this
command if set (they slow a current OpenBLAS down).
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def best_of(f, budget=0.5):
    f()
    best, start, runs = float("inf"), time.perf_counter(), 0
    while runs < 3 or time.perf_counter() - start < budget:
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
        runs += 1
    return best


def numpy_gflops(m, k, n):
    a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), dtype=np.float32)
    return 2 * m * k * n / best_of(lambda: np.matmul(a, b, out=out)) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inferneo", default="target/release/inferneo")
    args = ap.parse_args()
    ours, theirs, order = {}, {}, []
    for r in range(args.rounds):
        cmd = [args.inferneo, "roofline", "--sgemm", "--json", "--rounds", "1"]
        report = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        for row in report["kernels"]:
            key = (row["op"], row["m"], row["k"], row["n"])
            if key not in ours:
                order.append(key)
            ours[key] = max(ours.get(key, 0.0), row["gflops"])
            theirs[key] = max(theirs.get(key, 0.0), numpy_gflops(*key[1:]))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"machine: {report['cpu']}, {report['threads']} threads, inferneo kernels {report['isa']}")
    try:
        from threadpoolctl import threadpool_info

        print("numpy BLAS:", [(i.get("internal_api"), i.get("version"), i.get("architecture")) for i in threadpool_info()])
    except ImportError:
        print("numpy BLAS:", np.__version__, "(pip install threadpoolctl to name the BLAS kernel)")
    print(f"best of {args.rounds} rounds each, alternating")
    print()
    print("| op | M | K x N | inferneo GFLOP/s | numpy GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|")
    for key in order:
        op, m, k, n = key
        print(f"| {op} | {m} | {k}x{n} | {ours[key]:.1f} | {theirs[key]:.1f} | {ours[key] / theirs[key]:.2f} |")


if __name__ == "__main__":
    main()
