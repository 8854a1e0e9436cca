"""Writes the HuggingFace reference fixtures in tests/data/ (see tests/data/README.md).

Usage: python tools/reference/hf_reference.py [--only NAME ...]

Each golden is a safetensors file with tensors `tokens` (i64 [T]), `logits` (f32 [T, vocab]: HF
fp32 logits at every position), `greedy` (i64 [G], G = 32 unless the fixture says fewer: HF
greedy continuation of `tokens`) and `greedy_margin` (f32 [G]: top-1 minus top-2 logit at each
greedy step, so near-ties can be reported instead of failed), plus metadata (format, version,
model, seed, vocab, library versions). A fixture may keep only some vocabulary columns of the
logits (to stay small on disk): then `logit_columns` (i64 [C], ascending) lists them and
`logits` is [T, C]. Weights come from weights.py, bit-identical to `inferneo init`, so only
seeds are committed.
"""

import argparse
import json
import os
import sys

import numpy as np
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(__file__))
from weights import parameter_shapes, preset_config, tensor_values  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DATA = os.path.join(ROOT, "tests", "data")
ASSETS = os.path.join(ROOT, "assets")
# 2: `logit_columns` may be present and `vocab` is in the metadata; otherwise as 1.
FORMAT_VERSION = "2"
GREEDY_TOKENS = 32
PROMPT = "The quick brown fox jumps over the lazy"

# (fixture name, preset, seed, options). GPT-2 XL's fixture keeps every 16th vocabulary column
# plus each position's 8 highest logits (about 100 KB instead of 1.6 MB; the greedy tokens cover
# the full vocabulary's argmax) and 8 greedy steps: the Rust check of the 1.5B model then decodes
# 8 tokens instead of 32.
GOLDENS = [
    ("tiny", "tiny", 11, {}), ("distilgpt2", "distilgpt2", 12, {}), ("gpt2", "gpt2", 13, {}),
    ("gpt2-medium", "gpt2-medium", 15, {}), ("gpt2-large", "gpt2-large", 16, {}),
    ("gpt2-xl", "gpt2-xl", 17, dict(greedy_tokens=8, column_stride=16, column_top=8)),
]
HUB_MICRO = dict(vocab_size=1000, n_embd=32, n_layer=2, n_head=2, n_positions=64)
HUB_SEED = 14

TOKENIZER_CORPUS = [
    "", " ", "  ", "\n", "\n\n\t ", "Hello, world!", " Hello world", "Hello  world   !",
    "don't can't won't it's I'm you're we'll they'd", "DON'T Shouldn't",
    "The quick brown fox jumps over the lazy dog.", "   leading spaces", "trailing spaces   ",
    "naïve café résumé", "Ünïcödé ßtraße", "日本語のテキスト", "中文分词测试", "한국어 텍스트",
    "emoji 🎉🚀👍🏽 family 👨‍👩‍👧‍👦", "math ∑∫√∞ ≠ ≤", "tabs\tand\r\nCRLF",
    "numbers 1234567890 3.14159 1e-5", "code: fn main() { println!(\"hi\"); }",
    "<|endoftext|>", "text<|endoftext|>more", "a" * 50, "Ё ё Й й", "🤖" * 5,
    "mixed English と 日本語 and émojis 😀", "URL https://example.com/a?b=c&d=e#f",
]


def hf_model(cfg: dict, tensors) -> GPT2LMHeadModel:
    """HF's model with `tensors` ((name, array) pairs, names without `transformer.`) copied into
    its parameters one at a time, so that a generator keeps only one tensor beside the model
    (GPT-2 XL is 6.2 GB in f32)."""
    config = GPT2Config(
        vocab_size=cfg["vocab_size"], n_positions=cfg["n_positions"], n_embd=cfg["n_embd"],
        n_layer=cfg["n_layer"], n_head=cfg["n_head"], n_inner=None, activation_function="gelu_new",
        layer_norm_epsilon=1e-5, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    config._attn_implementation = "eager"
    model = GPT2LMHeadModel(config).eval()
    # Parameters only: the attention mask buffers stay HF's, lm_head is tied to wte.
    params = dict(model.transformer.named_parameters())
    loaded = set()
    with torch.no_grad():
        for name, v in tensors:
            assert name in params, f"unexpected tensor {name}"
            assert tuple(params[name].shape) == tuple(v.shape), (name, params[name].shape, v.shape)
            params[name].copy_(torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)))
            loaded.add(name)
    missing = sorted(set(params) - loaded)
    assert not missing, missing
    model.tie_weights()
    assert torch.equal(model.lm_head.weight, model.transformer.wte.weight)
    return model


def logit_columns(logits: np.ndarray, stride: int, top: int) -> np.ndarray:
    """Every `stride`-th vocabulary id (0 and the last id included when the stride divides) and
    each row's `top` highest logits, so each row's argmax is among the columns kept."""
    vocab = logits.shape[1]
    keep = set(range(0, vocab, stride))
    for row in logits:
        keep.update(int(i) for i in np.argsort(-row, kind="stable")[:top])
    return np.array(sorted(keep), dtype=np.int64)


@torch.no_grad()
def golden(model, tokens, meta: dict, path: str, greedy_tokens: int = GREEDY_TOKENS, column_stride=None, column_top=0):
    ids = torch.tensor([tokens])
    logits = model(ids).logits[0].float().numpy()
    vocab = logits.shape[1]
    seq = list(tokens)
    greedy, margin = [], []
    for _ in range(greedy_tokens):
        last = model(torch.tensor([seq])).logits[0, -1].float()
        top2 = torch.topk(last, 2)
        nxt = int(top2.indices[0])
        greedy.append(nxt)
        margin.append(float(top2.values[0] - top2.values[1]))
        seq.append(nxt)
    meta = {k: str(v) for k, v in meta.items()}
    meta.update(format="inferneo-golden", version=FORMAT_VERSION, vocab=str(vocab), torch=torch.__version__,
                transformers=transformers.__version__)
    tensors = {
        "tokens": np.array(tokens, dtype=np.int64),
        "logits": logits.astype(np.float32),
        "greedy": np.array(greedy, dtype=np.int64),
        "greedy_margin": np.array(margin, dtype=np.float32),
    }
    if column_stride:
        cols = logit_columns(logits, column_stride, column_top)
        tensors["logit_columns"] = cols
        tensors["logits"] = np.ascontiguousarray(logits[:, cols], dtype=np.float32)
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path}: {len(tokens)} tokens, {tensors['logits'].shape[1]} of {vocab} logit columns, "
          f"{len(greedy)} greedy tokens, min greedy margin {min(margin):.2e}, {os.path.getsize(path)} bytes")


def write_hub_micro():
    """A tiny checkpoint in the hub's own layout: no `transformer.` prefix, f16, mask buffers."""
    out = os.path.join(DATA, "hub-micro")
    os.makedirs(out, exist_ok=True)
    cfg = dict(HUB_MICRO)
    tensors = {n: tensor_values(HUB_SEED, n, s) for n, s in parameter_shapes(cfg)}
    f16 = {n: v.astype(np.float16) for n, v in tensors.items()}
    stored = dict(f16)
    p = cfg["n_positions"]
    for l in range(cfg["n_layer"]):
        stored[f"h.{l}.attn.bias"] = np.tril(np.ones((p, p), dtype=np.float16)).reshape(1, 1, p, p)
        stored[f"h.{l}.attn.masked_bias"] = np.array(-1e4, dtype=np.float16)
    save_file(stored, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    # Field set of the hub's gpt2 config.json, including ones we must ignore.
    config = {
        "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
        "bos_token_id": 0, "embd_pdrop": 0.1, "eos_token_id": 0, "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": p, "n_embd": cfg["n_embd"],
        "n_head": cfg["n_head"], "n_inner": None, "n_layer": cfg["n_layer"], "n_positions": p,
        "resid_pdrop": 0.1, "summary_activation": None, "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True, "summary_type": "cls_index", "summary_use_proj": True,
        "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
        "torch_dtype": "float16", "vocab_size": cfg["vocab_size"],
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    model = hf_model(cfg, ((n, v.astype(np.float32)) for n, v in f16.items()))
    tokens = [int(t) for t in (np.arange(12) * 83 + 5) % cfg["vocab_size"]]
    golden(model, tokens, {"model": "hub-micro", "seed": HUB_SEED, "dtype": "f16"}, os.path.join(DATA, "golden-hub-micro.safetensors"))


def write_tokenizer_corpus():
    tok = AutoTokenizer.from_pretrained(ASSETS)
    assert tok.vocab_size == 50257, "tokenizer failed to load its vocabulary"
    cases = [{"text": t, "ids": tok.encode(t)} for t in TOKENIZER_CORPUS]
    with open(os.path.join(DATA, "tokenizer_corpus.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "cases": cases}, f, ensure_ascii=False, indent=1)
    print(f"wrote tokenizer corpus: {len(cases)} cases")
    return tok


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    names = ", ".join([g[0] for g in GOLDENS] + ["hub-micro", "tokenizer"])
    ap.add_argument("--only", nargs="*", help=f"fixture names ({names})")
    args = ap.parse_args()
    want = lambda name: not args.only or name in args.only  # noqa: E731
    torch.manual_seed(0)
    tok = write_tokenizer_corpus() if want("tokenizer") else AutoTokenizer.from_pretrained(ASSETS)
    prompt = tok.encode(PROMPT)
    for name, preset, seed, opts in GOLDENS:
        if not want(name):
            continue
        cfg = preset_config(preset)
        model = hf_model(cfg, ((n, tensor_values(seed, n, s)) for n, s in parameter_shapes(cfg)))
        golden(model, prompt, {"model": preset, "seed": seed, "dtype": "f32"}, os.path.join(DATA, f"golden-{name}.safetensors"), **opts)
        del model
    if want("hub-micro"):
        write_hub_micro()


if __name__ == "__main__":
    main()
