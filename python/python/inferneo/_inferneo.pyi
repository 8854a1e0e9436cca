from typing import Iterator, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

Prompt = Union[str, Sequence[int]]

class Generation:
    text: str
    ids: list[int]
    logprobs: list[float]
    top_logprobs: list[list[tuple[int, float]]]
    finish_reason: str

class Stream(Iterator[str]):
    def __iter__(self) -> "Stream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...

class Model:
    def __init__(
        self,
        path: Optional[str] = None,
        dtype: str = "f32",
        threads: Optional[int] = None,
        isa: Optional[str] = None,
        kv_dtype: str = "f32",
    ) -> None: ...
    @property
    def config(self) -> dict: ...
    @property
    def dtype(self) -> str: ...
    @property
    def isa(self) -> str: ...
    @property
    def threads(self) -> int: ...
    def tokenize(self, text: str) -> list[int]: ...
    def detokenize(self, ids: Sequence[int]) -> str: ...
    def logits(self, ids: Prompt) -> npt.NDArray[np.float32]: ...
    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Optional[Sequence[int]] = None,
        logprobs: Optional[int] = None,
    ) -> Generation: ...
    def stream(
        self,
        prompt: Prompt,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Optional[Sequence[int]] = None,
    ) -> Stream: ...

class Engine:
    def __init__(self, model: Model, max_seqs: int = 64, kv_cache_mb: int = 512, max_batch_tokens: int = 512) -> None: ...
    def generate_many(
        self,
        prompts: list[Prompt],
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Optional[Sequence[int]] = None,
        logprobs: Optional[int] = None,
    ) -> list[Generation]: ...
    def stream(
        self,
        prompt: Prompt,
        max_tokens: int = 16,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int = 0,
        stop: Optional[Sequence[int]] = None,
    ) -> "EngineStream": ...
    def stats(self) -> dict: ...

class EngineStream(Iterator[str]):
    def __iter__(self) -> "EngineStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...

class PackedWeights:
    @property
    def shape(self) -> tuple[int, int]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def nbytes(self) -> int: ...

def kernels_pack(b: npt.NDArray[np.float32], dtype: str = "f32", isa: Optional[str] = None) -> PackedWeights: ...
def kernels_matmul(a: npt.NDArray[np.float32], b: PackedWeights) -> npt.NDArray[np.float32]: ...
def kernels_attention(
    q: npt.NDArray[np.float32], k: npt.NDArray[np.float32], v: npt.NDArray[np.float32], n_head: int, isa: Optional[str] = None
) -> npt.NDArray[np.float32]: ...
def kernels_isa() -> str: ...
def kernels_roofline_json(
    quick: bool = True, rounds: Optional[int] = None, isa: Optional[str] = None, preset: str = "gpt2"
) -> str: ...
