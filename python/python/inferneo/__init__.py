"""Inferneo: a CPU runtime for GPT-2-family models, from Python.

Everything runs in the Rust crates; this package is a thin layer over them.

    >>> import inferneo
    >>> model = inferneo.Model()            # the embedded 124M-shape model (random weights)
    >>> model.generate("Hello", max_tokens=8).ids
    >>> model.logits([464, 2068, 7586]).shape   # (3, 50257), float32
    >>> engine = inferneo.Engine(model, max_seqs=16)
    >>> [g.text for g in engine.generate_many(["a", "b"], max_tokens=8)]
    >>> inferneo.kernels.isa()

Long calls release the GIL; Ctrl-C stops a generation within a token. Bad arguments raise
ValueError, a model that cannot be loaded FileNotFoundError or OSError, anything else
RuntimeError.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Optional, Sequence, Union

from . import kernels
from ._inferneo import Engine, EngineStream, Generation, Model, Stream

__all__ = ["Model", "Engine", "EngineStream", "Generation", "Stream", "kernels", "compare_with_transformers", "generate_many_async"]


async def generate_many_async(engine: Engine, prompts: Sequence[Union[str, Sequence[int]]], **kwargs: Any) -> list:
    """`engine.generate_many(prompts, **kwargs)` for asyncio: runs on the loop's default
    executor (the call releases the GIL), so the event loop keeps running meanwhile."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(engine.generate_many, list(prompts), **kwargs))


def compare_with_transformers(
    path: str, texts: Sequence[str], atol: float = 1e-4, max_new_tokens: int = 16
) -> list:
    """Runs Inferneo and HuggingFace transformers (fp32, eager attention) on the same inputs.

    Returns one dict per text: ``max_abs_diff`` (logits, every position), ``argmax_agreement``
    (fraction of positions whose argmax agree), ``greedy_agreement`` (whether the greedy
    continuations of ``max_new_tokens`` tokens are identical) and ``within_atol``.
    Needs ``torch`` and ``transformers`` (``pip install inferneo[reference]``).
    """
    try:
        import numpy as np
        import torch
        from transformers import GPT2LMHeadModel
    except ImportError as e:  # pragma: no cover - exercised without the extras installed
        raise ImportError(
            "inferneo.compare_with_transformers needs torch and transformers: pip install inferneo[reference]"
        ) from e
    ours = Model(path)
    hf = GPT2LMHeadModel.from_pretrained(path, torch_dtype=torch.float32, attn_implementation="eager").eval()
    results = []
    for text in texts:
        ids = ours.tokenize(text)
        logits = ours.logits(ids)
        with torch.no_grad():
            ref = hf(torch.tensor([ids])).logits[0].numpy()
            greedy_ref = hf.generate(
                torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=hf.config.eos_token_id
            )[0, len(ids):].tolist()
        greedy = ours.generate(ids, max_tokens=max_new_tokens).ids
        diff = float(np.max(np.abs(logits - ref)))
        results.append(
            {
                "text": text,
                "max_abs_diff": diff,
                "within_atol": diff <= atol,
                "argmax_agreement": float(np.mean(np.argmax(logits, axis=1) == np.argmax(ref, axis=1))),
                "greedy_agreement": greedy == greedy_ref[: len(greedy)],
            }
        )
    return results
