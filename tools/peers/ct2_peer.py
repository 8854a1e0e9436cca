#!/usr/bin/env python3
"""CTranslate2 as a peer: the HuggingFace directory converted with ct2-transformers-converter
(f32 or int8), then `ctranslate2.Generator.generate_batch` on the workload's prompts.

Measures the same as hf_peer.py (batch-1 TTFT and ms/token, offline batch throughput at each
batch size, peak RSS of this process). The conversion runs in a child process, so the torch
that the converter loads does not count towards the peak RSS. Writes one JSON result; on
failure an error result.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

QUANT = {"f32": "float32", "int8": "int8"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HuggingFace GPT-2 directory")
    ap.add_argument("--work", required=True, help="where the converted model goes")
    ap.add_argument("--dtype", choices=sorted(QUANT), default="f32")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--new-tokens", type=int, default=common.NEW_TOKENS)
    ap.add_argument("--runs", type=int, default=3, help="latency runs (median)")
    ap.add_argument("--threads", type=int, default=common.cores())
    ap.add_argument("--quick", action="store_true", help="batch sizes 1,4; 20 new tokens; 1 run")
    a = ap.parse_args()
    if a.quick:
        a.batch_sizes, a.new_tokens, a.runs = "1,4", 20, 1
    common.run_guarded(a.out, f"CTranslate2 {a.dtype}", lambda: run(a))


def convert(a):
    out = os.path.join(a.work, f"ct2-{a.dtype}")
    src = os.path.join(a.model, "model.safetensors")
    done = os.path.join(out, "model.bin")
    if os.path.exists(done) and os.path.getmtime(done) >= os.path.getmtime(src):
        return out
    shutil.rmtree(out, ignore_errors=True)
    exe = os.path.join(os.path.dirname(sys.executable), "ct2-transformers-converter")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "ctranslate2.converters.transformers"]
    cmd += ["--model", a.model, "--output_dir", out, "--quantization", QUANT[a.dtype], "--force"]
    print("+", " ".join(cmd), flush=True)
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not os.path.exists(done):
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"ct2-transformers-converter failed: {' | '.join(tail)}")
    return out


def run(a):
    import ctranslate2

    path = convert(a)
    with open(os.path.join(path, "vocabulary.json")) as f:
        vocab = json.load(f)
    gen = ctranslate2.Generator(path, device="cpu", compute_type="default",
                                intra_threads=a.threads, inter_threads=1)
    sizes = [int(x) for x in a.batch_sizes.split(",") if x]
    n = a.new_tokens
    prompts = [[vocab[i] for i in p] for p in common.prompts(max(sizes + [a.runs + 1]))]

    def generate(batch, new):
        res = gen.generate_batch(
            batch,
            max_length=new,
            min_length=new,  # end-of-text never ends a sequence
            include_prompt_in_result=False,
            sampling_topk=0,  # 0: the whole vocabulary, then top-p alone, as the other systems
            sampling_topp=common.TOP_P,
            sampling_temperature=common.TEMPERATURE,
        )
        got = [len(r.sequences_ids[0]) for r in res]
        assert all(g == new for g in got), f"generated {got} tokens, wanted {new}"
        return sum(got)

    name = f"CTranslate2 {a.dtype}"
    latency, batch = common.measure(name, generate, prompts, n, a.runs, sizes)

    common.write(a.out, common.offline_result(
        name, f"ctranslate2 {ctranslate2.__version__}", a.dtype,
        f"ct2-transformers-converter --quantization {QUANT[a.dtype]}; Generator(cpu, "
        f"compute_type={gen.compute_type}, intra_threads={a.threads}); generate_batch("
        f"sampling_topk=0, min_length=max_length={n}, include_prompt_in_result=False)",
        n, latency, batch,
    ))


if __name__ == "__main__":
    main()
