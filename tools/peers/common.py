"""Shared helpers for the peer runners: the workload's prompts, peak RSS, result files.

The prompts are drawn exactly as `inferneo bench` draws them (splitmix64, token ids in
100..50100, never end-of-text), so every system sees prompts of the same kind and length.
"""

import json
import os
import platform
import resource
import statistics
import sys
import time
import traceback

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15

PROMPT_TOKENS = 50
NEW_TOKENS = 100
TEMPERATURE = 0.7
TOP_P = 0.9
EOS = 50256


def splitmix64(z):
    z = (z + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


class Rng:
    """The bench's Rng (tools/src/bench/run.rs), bit for bit."""

    def __init__(self, seed):
        self.state = (seed ^ 0x5DEECE66D1CE4E5B) & MASK

    def next_u64(self):
        self.state = (self.state + GOLDEN) & MASK
        return splitmix64(self.state)

    def prompt(self, length):
        return [self.next_u64() % 50_000 + 100 for _ in range(length)]


def prompts(count, length=PROMPT_TOKENS, seed=0):
    rng = Rng(seed)
    return [rng.prompt(length) for _ in range(count)]


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def peak_rss_mb():
    """This process's peak resident set size (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def median(xs):
    return statistics.median(xs)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores(), "python": platform.python_version()}


def write(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def write_error(path, system, error):
    """The result a runner leaves when its peer cannot be installed or run."""
    text = " ".join(str(error).split()) or "failed"
    write(path, {"system": system, "error": text[:400]})


def run_guarded(path, system, body):
    """Run body(); on any exception print it and write an error result instead of a crash."""
    try:
        body()
    except BaseException as e:  # noqa: BLE001 - a peer failing must become a row, not a crash
        traceback.print_exc()
        write_error(path, system, f"{type(e).__name__}: {e}")
        sys.exit(1)


def measure(name, generate, prompts, new_tokens, runs, sizes):
    """The offline peers' figures from `generate(prompts, n) -> generated tokens`: batch-1 TTFT
    (a 1-token generate) and ms/token ((n-token generate - TTFT) / (n - 1)), medians of `runs`;
    then generated tokens/s of one generate over each batch size. Returns (latency, batch)."""
    generate([prompts[0]], 4)  # warm-up
    ttft, full = [], []
    for r in range(runs):
        p = [prompts[r]]
        with Timer() as t:
            generate(p, 1)
        ttft.append(t.s * 1e3)
        with Timer() as t:
            generate(p, new_tokens)
        full.append(t.s * 1e3)
    ttft_ms = median(ttft)
    itl_ms = (median(full) - ttft_ms) / max(new_tokens - 1, 1)
    print(f"{name}: batch-1 TTFT {ttft_ms:.1f} ms, {itl_ms:.2f} ms/token", flush=True)
    batch = []
    for b in sizes:
        with Timer() as t:
            tokens = generate(prompts[:b], new_tokens)
        batch.append({"batch": b, "generated_tokens_per_s": tokens / t.s, "wall_s": t.s})
        print(f"{name}: batch {b}: {tokens / t.s:.1f} tok/s ({t.s:.2f} s)", flush=True)
    return {"ttft_ms": ttft_ms, "itl_ms": itl_ms, "runs": runs}, batch


def offline_result(system, version, dtype, config, new_tokens, latency, batch):
    """The JSON of an offline peer (HF, CTranslate2), in the shape compare.py reads."""
    return {
        "system": system,
        "version": version,
        "dtype": dtype,
        "config": config,
        "workload": {"prompt_tokens": PROMPT_TOKENS, "new_tokens": new_tokens,
                     "temperature": TEMPERATURE, "top_p": TOP_P},
        "latency": latency,
        "batch": batch,
        "peak_rss_mb": peak_rss_mb(),
        "machine": machine(),
    }
