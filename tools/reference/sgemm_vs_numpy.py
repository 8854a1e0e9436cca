"""Inferneo's f32 GEMM vs numpy (OpenBLAS) sgemm at GPT-2 shapes, measured in one run.

Usage:
    cargo run --release -- roofline --json > /tmp/roofline.json
    python tools/reference/sgemm_vs_numpy.py /tmp/roofline.json

Prints GFLOP/s for both and the ratio inferneo/numpy for each (op, M) with M >= 32. numpy's
matmul here includes no bias; Inferneo's includes the bias add, so the ratio slightly favours
numpy. Run both right after each other: the machines are noisy. Unset OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE for this command if set (they slow a current OpenBLAS down).
"""

import json
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


def main():
    report = json.load(open(sys.argv[1]))
    print(f"machine: {report['cpu']}, {report['threads']} threads, inferneo kernels {report['isa']}")
    try:
        from threadpoolctl import threadpool_info

        print("numpy BLAS:", [(i.get("internal_api"), i.get("version"), i.get("architecture")) for i in threadpool_info()])
    except ImportError:
        print("numpy BLAS:", np.__version__, "(pip install threadpoolctl to name the BLAS kernel)")
    print()
    print("| op | M | K x N | inferneo GFLOP/s | numpy GFLOP/s | ratio |")
    print("|---|---|---|---|---|---|")
    for r in report["kernels"]:
        if r["dtype"] != "f32" or r["m"] < 32:
            continue
        m, k, n = r["m"], r["k"], r["n"]
        a = np.random.default_rng(0).standard_normal((m, k), dtype=np.float32)
        b = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
        out = np.empty((m, n), dtype=np.float32)
        secs = best_of(lambda: np.matmul(a, b, out=out))
        ours = r["gflops"]
        theirs = 2 * m * k * n / secs / 1e9
        print(f"| {r['op']} | {m} | {k}x{n} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")


if __name__ == "__main__":
    main()
