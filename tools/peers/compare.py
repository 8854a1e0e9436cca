#!/usr/bin/env python3
"""One Markdown table of inferneo and its peers on the same workload.

Reads result JSONs (default: every *.json in --results): `inferneo bench --json` files (ours,
and llama-server measured by the same bench client), the peer runners' files
({"system", "latency": {"ttft_ms", "itl_ms"}, "batch": [...], "peak_rss_mb"}) and error
results ({"system", "error"}), which become "not available" rows.

Throughput columns say their mode: "batch" = one offline generate over N prompts (in-process,
no HTTP); "conc." = N closed-loop HTTP clients streaming from a server. Ratios are ours/peer,
against inferneo in the same mode and the closest precision (int8 and q8_0, which quantize
activations too, against our w8a8, or our int8 where no w8a8 row exists; q4_0 against our w4a8
where there is one, else as q8_0; everything else against our f32).
"""

import argparse
import glob
import json
import os
import sys

LEVELS = [1, 4, 8, 16, 32]
ORDER = ["ours-f32", "ours-f16", "ours-bf16", "ours-bf16dot", "ours-int8", "ours-w8a8", "ours-w4a8", "hf",
         "ct2-f32", "ct2-int8", "llama-f32", "llama-f16", "llama-q8_0", "llama-q4_0"]


def rank(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    return (ORDER.index(stem) if stem in ORDER else len(ORDER), stem)


def num(x, digits=1):
    return "–" if x is None else f"{x:,.{digits}f}"


def load(path):
    """A list of rows (dicts) from one result file."""
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        return [{"system": stem, "error": f"unreadable result {os.path.basename(path)}: {e}"}]
    if d.get("error") is not None or ("scenarios" not in d and "batch" not in d and "latency" not in d):
        return [{"system": d.get("system", stem), "error": d.get("error") or "no figures in result"}]
    if "scenarios" in d:
        return bench_rows(d, stem)
    lat = d.get("latency") or {}
    return [{
        "system": d.get("system", stem), "dtype": d.get("dtype", "?"), "version": d.get("version", "?"),
        "config": d.get("config", ""), "ours": False, "mode": "batch",
        "itl": lat.get("itl_ms"), "ttft": lat.get("ttft_ms"),
        "tps": {int(b["batch"]): b["generated_tokens_per_s"] for b in d.get("batch", [])},
        "rss": d.get("peak_rss_mb"), "window": d.get("window"),
    }]


def bench_rows(d, stem):
    """`inferneo bench --json`: ours (local) gives a batch row and an HTTP concurrency row."""
    t, s = d.get("target") or {}, d.get("scenarios") or {}
    ours = bool(t.get("local"))
    dtype = d.get("dtype") or t.get("dtype") or "?"
    system = d.get("system") or (f"inferneo {dtype}" if ours else stem)
    version = d.get("version") or (f"inferneo {d.get('machine', {}).get('inferneo_version', '?')}" if ours else "?")
    lat = (s.get("latency") or [{}])[0]
    itl = (lat.get("inter_token_latency") or {}).get("p50_ms")
    ttft = (lat.get("ttft") or {}).get("p50_ms")
    rss = d.get("server_peak_rss_mb")
    base = {"dtype": dtype, "version": version, "ours": ours, "itl": itl, "ttft": ttft, "rss": rss,
            "config": d.get("config", ""), "window": d.get("window")}
    rows = []
    if s.get("batch"):
        rows.append(dict(base, system=f"{system} (engine batch)" if ours else system, mode="batch",
                         tps={int(b["batch"]): b["generated_tokens_per_s"] for b in s["batch"]}))
    if s.get("concurrency"):
        conc = {}
        for c in s["concurrency"]:
            ok = c.get("succeeded", 1)
            conc[int(c["x"])] = c["generated_tokens_per_s"] if ok else None
        rows.append(dict(base, system=f"{system} (HTTP server)" if ours else system, mode="conc.", tps=conc))
    if not rows:
        rows.append(dict(base, system=system, mode="–", tps={}))
    return rows


def read_load(path):
    """loadmon.py's samples: (unix_time, busy_cores, ours_cores)."""
    samples = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    samples.append(tuple(float(x) for x in parts))
    except OSError:
        pass
    return samples


def other_load(window, samples):
    """Mean cores busy with other processes while a result's figures were taken."""
    if not window or not samples:
        return None
    t0, t1 = window
    xs = [busy - ours for t, busy, ours in samples if t0 < t <= t1 + 2.0]
    if not xs:
        return None
    return sum(xs) / len(xs), sum(x >= 0.5 for x in xs) / len(xs)


def load_cell(window, samples):
    v = other_load(window, samples)
    return "–" if v is None else f"{v[0]:.2f} / {v[1]:.0%}"


def reference(row, ours_rows):
    """The inferneo row a peer is compared with: same mode, closest precision. CTranslate2's
    int8 and llama.cpp's q8_0 quantize activations too, as our w8a8 does; a 16-bit peer is
    compared with our 16-bit weights, which read the same bytes a token."""
    want = {"int8": ("w8a8", "int8"), "q8_0": ("w8a8", "int8"), "q4_0": ("w4a8", "w8a8", "int8"),
            "f16": ("f16", "bf16", "bf16dot")}.get(row["dtype"], ())
    for dtype in (*want, "f32"):
        for o in ours_rows:
            if o["mode"] == row["mode"] and o["dtype"] == dtype:
                return o
    return None


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def table(rows, samples):
    ours_rows = [r for r in rows if "error" not in r and r["ours"]]
    head = (["system", "dtype", "batch-1 ms/token", "TTFT 50-token prompt (ms)", "mode"]
            + [f"tok/s @{n}" for n in LEVELS]
            + ["peak RSS (MB)", "ours/peer tok/s @32", "ours/peer ms/token"]
            + (["other load: mean cores / time ≥0.5"] if samples else []))
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            cells = [r["system"], "", f"not available: {r['error']}"] + [""] * (len(head) - 3)
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
            continue
        if r["ours"]:
            rt, rl = "(ours)", "(ours)"
        else:
            ref = reference(r, ours_rows)
            if ref is None:
                rt = rl = "–"
            else:
                tag = f" (vs {ref['dtype']})"
                t32 = ratio(ref["tps"].get(32), r["tps"].get(32))
                ms = ratio(ref["itl"], r["itl"])
                rt = "–" if t32 is None else f"{t32:.2f}×{tag}"
                rl = "–" if ms is None else f"{ms:.2f}×{tag}"
        cells = ([r["system"], r["dtype"], num(r["itl"], 2), num(r["ttft"], 1), r["mode"]]
                 + [num(r["tps"].get(n)) for n in LEVELS]
                 + [num(r["rss"], 0), rt, rl]
                 + ([load_cell(r.get("window"), samples)] if samples else []))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="result JSONs (default: --results/*.json)")
    ap.add_argument("--results", default="target/peers/results")
    ap.add_argument("--out", help="also write the Markdown here")
    ap.add_argument("--preset", default="gpt2", help="the model shape the results are of (named under the table)")
    a = ap.parse_args()
    files = a.files or sorted(glob.glob(os.path.join(a.results, "*.json")), key=rank)
    if not files:
        sys.exit(f"no result files in {a.results}")
    rows = [row for f in files for row in load(f)]
    samples = read_load(os.path.join(os.path.dirname(files[0]), "load.tsv"))
    machine = None
    for f in files:
        try:
            machine = machine or json.load(open(f)).get("machine")
        except (OSError, ValueError):
            pass
    lines = [table(rows, samples), ""]
    lines.append(f"Model: `inferneo init --preset {a.preset} --seed 0` (random weights, the shape of {a.preset}).")
    lines.append("Workload: 50-token prompts (seeded ids), 100 generated tokens (end-of-text banned), "
                 "temperature 0.7, top-p 0.9; batch-1 ms/token and TTFT are medians (p50).")
    lines.append("Modes: `batch` = one offline generate over N prompts, in-process; `conc.` = N closed-loop "
                 "HTTP clients streaming from the server (`inferneo bench`). Ratios are ours/peer in the same mode: "
                 "tok/s ratio > 1 and ms/token ratio < 1 mean inferneo is faster.")
    if samples:
        lines.append("Other load: the mean number of cores that processes outside this run kept busy while the row "
                     "was measured, and the share of that time when they took at least half a core (from /proc, "
                     "every 2 s); on a shared machine it slows the figures of that row.")
    if machine:
        lines.append(f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores.")
    lines.append("")
    lines.append("Versions and settings:")
    seen = set()
    for r in rows:
        name = r["system"].replace(" (engine batch)", "").replace(" (HTTP server)", "")
        if "error" in r or name in seen:
            continue
        seen.add(name)
        cfg = f" — {r['config']}" if r.get("config") else ""
        lines.append(f"- {name}: {r['version']}{cfg}")
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
