"""The SIMD kernels on numpy arrays: the same code the models run.

    >>> import numpy as np, inferneo
    >>> a = np.random.rand(8, 768).astype(np.float32); b = np.random.rand(768, 2304).astype(np.float32)
    >>> inferneo.kernels.matmul(a, b)                      # packs b, then multiplies
    >>> w = inferneo.kernels.pack(b, "int8")              # pack once ...
    >>> inferneo.kernels.matmul(a, w)                      # ... multiply many times

Documented error against ``a @ b`` in float64 (relative to the largest |a @ b| of each product):
f32 1e-5; f16 2e-3; bf16 1.6e-2; int8 (per-column scales) 1.6e-2; w8a8 (int8 activations too)
3e-2; bf16dot (activations rounded to bf16 too) 2.4e-2, for well-scaled inputs. w4a8 (4-bit
weights, a scale per 32 k, int8 activations) has no documented bound here: about Q4_0's error
(docs/PERFORMANCE.md).
"""

from __future__ import annotations

import json
from typing import Optional, Union

import numpy as np

from . import _inferneo
from ._inferneo import PackedWeights

__all__ = ["matmul", "pack", "attention", "roofline", "isa", "PackedWeights", "DTYPES"]

DTYPES = ("f32", "f16", "bf16", "int8", "w8a8", "w4a8", "bf16dot")


def _f32_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    if x.dtype != np.float32:
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{name} must hold floats, got {x.dtype}")
        x = x.astype(np.float32)
    return np.ascontiguousarray(x)


def pack(b: np.ndarray, dtype: str = "f32", isa: Optional[str] = None) -> PackedWeights:
    """Packs ``b`` (``[K, N]``) once, as ``dtype`` (one of ``DTYPES``), for repeated ``matmul``."""
    return _inferneo.kernels_pack(_f32_2d(b, "b"), dtype, isa)


def matmul(a: np.ndarray, b: Union[np.ndarray, PackedWeights], dtype: str = "f32") -> np.ndarray:
    """``a @ b`` on the kernels: ``a`` is ``[M, K]``; ``b`` a ``[K, N]`` array (packed as
    ``dtype`` on each call) or weights from ``pack``. Returns ``[M, N]`` float32."""
    if not isinstance(b, PackedWeights):
        b = pack(b, dtype)
    elif dtype != "f32" and dtype != b.dtype:
        raise ValueError(f"b is packed as {b.dtype}, not {dtype}")
    return _inferneo.kernels_matmul(_f32_2d(a, "a"), b)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, n_head: int, isa: Optional[str] = None) -> np.ndarray:
    """Causal multi-head attention of one sequence: ``q``, ``k``, ``v`` are ``[T, n_head *
    head_dim]``; row ``t`` attends to positions ``0..t``. Returns ``[T, n_head * head_dim]``."""
    return _inferneo.kernels_attention(_f32_2d(q, "q"), _f32_2d(k, "k"), _f32_2d(v, "v"), n_head, isa)


def roofline(quick: bool = True, rounds: Optional[int] = None, isa: Optional[str] = None, preset: str = "gpt2") -> dict:
    """This machine's roofline, as ``inferneo roofline --json --preset PRESET`` prints it: read
    bandwidth, FMA and integer-dot peaks, and every kernel at the preset's shapes (``"gpt2"``,
    ``"gpt2-medium"``, ``"gpt2-large"``, ``"gpt2-xl"``, ...) against them."""
    return json.loads(_inferneo.kernels_roofline_json(quick, rounds, isa, preset))


def isa() -> str:
    """The kernel set the process uses by default: "scalar", "avx2" or "avx512"."""
    return _inferneo.kernels_isa()
