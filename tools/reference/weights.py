"""Deterministic random GPT-2 weights, bit-identical to `runtime/src/init.rs` (see its spec)."""

import numpy as np

M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # numpy uint64 arrays wrap on overflow, which is the arithmetic the spec asks for.
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _fnv1a64(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def tensor_values(seed: int, name: str, shape) -> np.ndarray:
    n = int(np.prod(shape))
    key = _splitmix64(np.array([seed ^ _fnv1a64(name)], dtype=np.uint64))[0]
    with np.errstate(over="ignore"):
        z = _splitmix64(key + np.arange(n, dtype=np.uint64))
    u = (z >> np.uint64(40)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    x = np.float32(2.0) * u - np.float32(1.0)
    if "ln_" in name and name.endswith(".weight"):
        v = x * np.float32(0.1) + np.float32(1.0)
    elif "ln_" in name:
        v = x * np.float32(0.05)
    elif name.endswith(".bias"):
        v = x * np.float32(0.02)
    elif name == "wpe.weight":
        v = x * np.float32(0.02)
    else:
        v = x * np.float32(0.04)
    return v.astype(np.float32).reshape(shape)


def parameter_shapes(cfg: dict):
    e = cfg["n_embd"]
    i = cfg.get("n_inner") or 4 * e
    out = [("wte.weight", (cfg["vocab_size"], e)), ("wpe.weight", (cfg["n_positions"], e))]
    for l in range(cfg["n_layer"]):
        p = f"h.{l}."
        out += [
            (p + "ln_1.weight", (e,)), (p + "ln_1.bias", (e,)),
            (p + "attn.c_attn.weight", (e, 3 * e)), (p + "attn.c_attn.bias", (3 * e,)),
            (p + "attn.c_proj.weight", (e, e)), (p + "attn.c_proj.bias", (e,)),
            (p + "ln_2.weight", (e,)), (p + "ln_2.bias", (e,)),
            (p + "mlp.c_fc.weight", (e, i)), (p + "mlp.c_fc.bias", (i,)),
            (p + "mlp.c_proj.weight", (i, e)), (p + "mlp.c_proj.bias", (e,)),
        ]
    out += [("ln_f.weight", (e,)), ("ln_f.bias", (e,))]
    return out


PRESETS = {
    "tiny": dict(n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt2": dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "distilgpt2": dict(n_embd=768, n_layer=6, n_head=12, n_positions=1024),
    "gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16, n_positions=1024),
    "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20, n_positions=1024),
    "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25, n_positions=1024),
}


def preset_config(name: str) -> dict:
    return dict(vocab_size=50257, **PRESETS[name])
