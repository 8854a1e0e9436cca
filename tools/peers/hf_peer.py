#!/usr/bin/env python3
"""HuggingFace transformers + torch, fp32, eager `generate` (no torch.compile), as a peer.

Measures on the workload's prompts (50 token ids, 100 new tokens, temperature 0.7, top-p 0.9,
end-of-text never ends a sequence):
  latency  batch 1: TTFT = a 1-new-token generate; ms/token = (100-token generate - TTFT) / 99;
           medians of --runs runs.
  batch    offline throughput: generated tokens/s of one `generate` over a batch of prompts.
Peak RSS is this process's (getrusage). Writes one JSON result; on failure an error result.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SYSTEM = "HF transformers (torch eager)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HuggingFace GPT-2 directory")
    ap.add_argument("--out", required=True, help="result JSON")
    ap.add_argument("--batch-sizes", default="1,4,8,16,32")
    ap.add_argument("--new-tokens", type=int, default=common.NEW_TOKENS)
    ap.add_argument("--runs", type=int, default=3, help="latency runs (median)")
    ap.add_argument("--threads", type=int, default=common.cores())
    ap.add_argument("--quick", action="store_true", help="batch sizes 1,4; 20 new tokens; 1 run")
    a = ap.parse_args()
    if a.quick:
        a.batch_sizes, a.new_tokens, a.runs = "1,4", 20, 1
    common.run_guarded(a.out, SYSTEM, lambda: run(a))


def run(a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    model.eval()
    attn = getattr(model.config, "_attn_implementation", None) or "default"
    sizes = [int(x) for x in a.batch_sizes.split(",") if x]
    n = a.new_tokens
    prompts = common.prompts(max(sizes + [a.runs + 1]))

    def generate(batch, new):
        ids = torch.tensor(batch, dtype=torch.long)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=common.TEMPERATURE,
                top_p=common.TOP_P,
                top_k=0,  # top-p alone, as the other systems
                max_new_tokens=new,
                min_new_tokens=new,  # end-of-text never ends a sequence
                pad_token_id=common.EOS,
                eos_token_id=common.EOS,
            )
        got = out.shape[1] - ids.shape[1]
        assert got == new, f"generated {got} tokens, wanted {new}"
        return got * ids.shape[0]

    latency, batch = common.measure(SYSTEM, generate, prompts, n, a.runs, sizes)

    common.write(a.out, common.offline_result(
        SYSTEM, f"transformers {transformers.__version__}, torch {torch.__version__}", "f32",
        f"AutoModelForCausalLM fp32, attn_implementation={attn}, torch threads {a.threads}, "
        f"generate(do_sample, top_k=0, min_new_tokens={n})",
        n, latency, batch,
    ))


if __name__ == "__main__":
    main()
