"""The Python package's overhead, side by side in one run:

1. `model.generate` ms/token against `inferneo generate` on the same prompt and flags. Each side
   generates 64 and then 192 tokens; the difference over the 128 extra tokens is the per-token
   time with loading and prefill cancelled out. Rounds alternate between the two.
2. `inferneo.kernels.matmul` (weights packed once) against numpy's `a @ b` (and `torch.matmul`
   when torch is installed) on the GPT-2 124M product shapes, alternating, best of each.

    python tools/reference/python_overhead.py [--rounds 5]

Needs the wheel installed (see README) and `target/release/inferneo` (or INFERNEO_BIN).
"""

import argparse
import os
import subprocess
import time
from pathlib import Path

import numpy as np

import inferneo

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("INFERNEO_BIN", str(ROOT / "target" / "release" / "inferneo"))
PROMPT = [464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13]


def cli_seconds(tokens: int) -> float:
    args = [BIN, "generate", "--tokens", ",".join(map(str, PROMPT)), "--max-tokens", str(tokens), "--ids"]
    t0 = time.perf_counter()
    subprocess.run(args, check=True, capture_output=True)
    return time.perf_counter() - t0


def py_seconds(model: "inferneo.Model", tokens: int) -> float:
    t0 = time.perf_counter()
    model.generate(PROMPT, max_tokens=tokens)
    return time.perf_counter() - t0


def best_of(f, rounds):
    return min(f() for _ in range(rounds))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    model = inferneo.Model()
    model.generate(PROMPT, max_tokens=4)
    cli_ms, py_ms = [], []
    for _ in range(a.rounds):
        cli_ms.append((cli_seconds(192) - cli_seconds(64)) / 128 * 1e3)
        py_ms.append((py_seconds(model, 192) - py_seconds(model, 64)) / 128 * 1e3)
    c, p = min(cli_ms), min(py_ms)
    print(f"generate, embedded 124M f32, {model.isa}, {model.threads} threads, best of {a.rounds} alternating rounds")
    print("| | ms/token (best) | every round |\n|---|---|---|")
    print(f"| CLI `inferneo generate` | {c:.2f} | {' '.join(f'{v:.2f}' for v in cli_ms)} |")
    print(f"| Python `model.generate` | {p:.2f} | {' '.join(f'{v:.2f}' for v in py_ms)} |")
    print(f"Python / CLI: {p / c:.3f}\n")

    try:
        import torch

        torch.set_num_threads(model.threads)
    except ImportError:
        torch = None
    shapes = [(1, 768, 2304), (1, 768, 3072), (1, 3072, 768), (1, 768, 50257), (32, 768, 2304), (128, 768, 3072), (512, 3072, 768)]
    head = "| M x K x N | inferneo (us) | numpy (us) | numpy / inferneo |"
    if torch is not None:
        head += " torch (us) | torch / inferneo |"
    print(head)
    print("|---" * (head.count("|") - 1) + "|")
    rng = np.random.default_rng(0)
    for m, k, n in shapes:
        x = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((k, n), dtype=np.float32)
        packed = inferneo.kernels.pack(w)
        reps = max(3, int(2e8 / (m * k * n)))
        runs = {"inferneo": lambda: inferneo.kernels.matmul(x, packed), "numpy": lambda: x @ w}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            runs["torch"] = lambda: torch.matmul(tx, tw)
        best = {name: float("inf") for name in runs}
        for _ in range(a.rounds):
            for name, f in runs.items():
                f()
                t0 = time.perf_counter()
                for _ in range(reps):
                    f()
                best[name] = min(best[name], (time.perf_counter() - t0) / reps * 1e6)
        row = f"| {m} x {k} x {n} | {best['inferneo']:.1f} | {best['numpy']:.1f} | {best['numpy'] / best['inferneo']:.2f} |"
        if torch is not None:
            row += f" {best['torch']:.1f} | {best['torch'] / best['inferneo']:.2f} |"
        print(row)


if __name__ == "__main__":
    main()
