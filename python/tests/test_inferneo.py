"""The Python package against the CLI and numpy: logits bitwise equal to `inferneo logits`,
generation equal to `inferneo generate`, the engine equal to each prompt alone, the kernels
equal to numpy within each dtype's documented error, errors of the right types, and the GIL
released during long calls.

The CLI binary is `INFERNEO_BIN`, else `target/release/inferneo` of this checkout.
"""

import _thread
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import inferneo

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("INFERNEO_BIN", str(ROOT / "target" / "release" / "inferneo"))


def cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("models") / "tiny"
    cli("init", "--preset", "tiny", "--seed", "5", "--out", str(d))
    return str(d)


@pytest.fixture(scope="session")
def tiny(tiny_dir) -> "inferneo.Model":
    return inferneo.Model(tiny_dir)


@pytest.fixture(scope="session")
def embedded() -> "inferneo.Model":
    return inferneo.Model()


def read_npy(path: Path) -> np.ndarray:
    return np.load(path)


@pytest.mark.parametrize("dtype", ["f32", "w8a8"])
def test_logits_equal_the_cli_bitwise(tiny_dir, tmp_path, dtype):
    ids = [464, 2068, 7586, 21831, 18045]
    out = tmp_path / "logits.npy"
    cli("logits", "--model", tiny_dir, "--dtype", dtype, "--tokens", ",".join(map(str, ids)), "--out", str(out))
    want = read_npy(out)
    got = inferneo.Model(tiny_dir, dtype=dtype).logits(ids)
    assert got.dtype == np.float32 and got.flags["C_CONTIGUOUS"] and got.shape == (len(ids), 50257)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_logits_of_the_embedded_model_equal_the_cli(embedded, tmp_path):
    out = tmp_path / "e.npy"
    cli("logits", "--tokens", "15496,11,995", "--out", str(out))
    assert np.array_equal(embedded.logits([15496, 11, 995]).view(np.uint32), read_npy(out).view(np.uint32))


@pytest.mark.parametrize(
    "sampling",
    [
        {},
        {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "seed": 7},
        {"temperature": 1.2, "seed": 3},
    ],
)
def test_generate_and_stream_equal_the_cli(tiny, tiny_dir, sampling):
    args = ["generate", "--model", tiny_dir, "--tokens", "464,2068,7586", "--max-tokens", "20", "--ids"]
    flags = {"temperature": "--temperature", "top_p": "--top-p", "top_k": "--top-k", "seed": "--seed"}
    for k, v in sampling.items():
        args += [flags[k], str(v)]
    want = [int(t) for t in cli(*args).stdout.strip().split(",")]
    g = tiny.generate([464, 2068, 7586], max_tokens=20, **sampling)
    assert g.ids == want and g.finish_reason == "length"
    assert len(g.logprobs) == 20 and all(lp <= 0 for lp in g.logprobs)
    # The stream's text is the generation's text, and the CLI's.
    text = cli(*[a for a in args if a != "--ids"]).stdout.rstrip("\n")
    assert "".join(tiny.stream([464, 2068, 7586], max_tokens=20, **sampling)) == g.text == text


def test_stop_tokens_logprobs_and_text_prompts(tiny):
    g = tiny.generate("Hello there", max_tokens=12, logprobs=3)
    assert all(len(t) == 3 for t in g.top_logprobs)
    # The sampled (greedy) token is the most likely one, with the same logprob.
    assert all(top[0][0] == i and top[0][1] == lp for top, i, lp in zip(g.top_logprobs, g.ids, g.logprobs))
    stopped = tiny.generate("Hello there", max_tokens=12, stop=[g.ids[3]])
    assert stopped.ids == g.ids[: g.ids.index(g.ids[3]) + 1] and stopped.finish_reason == "stop"
    assert tiny.detokenize(tiny.tokenize("Hello, world!")) == "Hello, world!"
    assert tiny.tokenize("Hello, world!") == [15496, 11, 995, 0]


def test_generate_many_of_16_prompts_equals_each_alone(tiny):
    engine = inferneo.Engine(tiny, max_seqs=8, kv_cache_mb=16)
    prompts = [f"prompt number {i} " * (1 + i % 4) for i in range(16)]
    sampling = {"temperature": 0.9, "top_p": 0.95, "seed": 11}
    together = engine.generate_many(prompts, max_tokens=12, logprobs=2, **sampling)
    alone = [tiny.generate(p, max_tokens=12, logprobs=2, **sampling) for p in prompts]
    assert [g.ids for g in together] == [g.ids for g in alone]
    assert [np.float32(g.logprobs).view(np.uint32).tolist() for g in together] == [
        np.float32(g.logprobs).view(np.uint32).tolist() for g in alone
    ]
    assert [g.text for g in together] == [g.text for g in alone]


def test_async_generate_many(tiny):
    import asyncio

    engine = inferneo.Engine(tiny, max_seqs=4, kv_cache_mb=16)
    got = asyncio.run(inferneo.generate_many_async(engine, ["a", "b", "c"], max_tokens=5))
    assert [g.ids for g in got] == [tiny.generate(p, max_tokens=5).ids for p in ["a", "b", "c"]]


def wait_until_free(engine, want_free=True):
    deadline = time.time() + 10
    while True:
        s = engine.stats()
        if (s["kv_blocks_free"] == s["kv_blocks_total"]) == want_free:
            return s
        assert time.time() < deadline, s
        time.sleep(0.01)


def test_breaking_out_of_a_stream_frees_its_blocks(embedded):
    engine = inferneo.Engine(embedded, max_seqs=2, kv_cache_mb=100)
    for leave in ("break", "close"):
        stream = engine.stream("Once upon a time", max_tokens=900)
        for i, delta in enumerate(stream):
            assert isinstance(delta, str)
            if i == 2:
                break
        s = wait_until_free(engine, want_free=False)
        assert s["running"] == 1, s
        if leave == "close":
            stream.close()
        else:
            del stream
        s = wait_until_free(engine)
        assert s["generated_tokens"] < 200 * (2 if leave == "close" else 1), "the sequence ran on"
    # The model's own stream stops promptly too.
    stream = embedded.stream("Once upon a time", max_tokens=900)
    next(stream)
    t0 = time.time()
    stream.close()
    assert list(stream) == [] and time.time() - t0 < 1.0


@pytest.fixture
def ctrl_c():
    """Presses Ctrl-C after a delay: `ctrl_c(seconds)`. Python's own SIGINT handler is installed
    for the test, since a process started with SIGINT ignored (a background job of a
    non-interactive shell, as under nohup or some CI runners) has none, and interrupt_main() then
    does nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield lambda delay: threading.Timer(delay, _thread.interrupt_main).start()
    signal.signal(signal.SIGINT, old)


def test_an_interrupted_generation_frees_the_engines_blocks(embedded, ctrl_c):
    engine = inferneo.Engine(embedded, max_seqs=2, kv_cache_mb=100)
    ctrl_c(0.5)
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        engine.generate_many(["Once upon a time"], max_tokens=900)
    assert time.time() - t0 < 5.0, "Ctrl-C took too long"
    deadline = time.time() + 10
    while engine.stats()["kv_blocks_free"] != engine.stats()["kv_blocks_total"]:
        assert time.time() < deadline, engine.stats()
        time.sleep(0.02)


def test_ctrl_c_interrupts_a_generation_within_a_token(embedded, ctrl_c):
    ctrl_c(0.3)
    t0 = time.time()
    with pytest.raises(KeyboardInterrupt):
        embedded.generate("Once", max_tokens=900)
    assert time.time() - t0 < 3.0


def test_the_gil_is_released_during_generation(tiny_dir):
    # One kernel thread per model, so two generations at once can only be faster than one after
    # the other if each runs without holding the GIL.
    model = inferneo.Model(tiny_dir, threads=1)

    def one():
        model.generate("The quick brown fox", max_tokens=100, temperature=0.7, seed=1)

    one()
    t0 = time.perf_counter()
    one()
    one()
    serial = time.perf_counter() - t0
    threads = [threading.Thread(target=one) for _ in range(2)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parallel = time.perf_counter() - t0
    assert parallel < 0.85 * serial, f"two threads took {parallel:.3f} s, one after the other {serial:.3f} s"


# Documented error of each dtype, relative to the largest |a @ b| (see inferneo.kernels).
TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 1.6e-2, "int8": 1.6e-2, "w8a8": 3e-2, "bf16dot": 2.4e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("m,k,n", [(1, 768, 2304), (8, 768, 768), (33, 64, 100), (5, 3, 7)])
def test_matmul_matches_numpy_within_the_dtypes_error(dtype, m, k, n):
    rng = np.random.default_rng(m * 1000 + n)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32) * 0.05
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = inferneo.kernels.matmul(a, inferneo.kernels.pack(b, dtype))
    assert got.shape == (m, n) and got.dtype == np.float32
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= TOLERANCE[dtype], f"{dtype}: relative error {err:.2e}"
    if dtype == "f32":
        np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5 * np.max(np.abs(want)))


def test_attention_matches_a_numpy_reference():
    rng = np.random.default_rng(0)
    t, heads, hd = 9, 4, 16
    q, k, v = (rng.standard_normal((t, heads * hd), dtype=np.float32) for _ in range(3))
    got = inferneo.kernels.attention(q, k, v, n_head=heads)
    want = np.zeros_like(q, dtype=np.float64)
    for h in range(heads):
        s = slice(h * hd, (h + 1) * hd)
        scores = (q[:, s].astype(np.float64) @ k[:, s].T) / np.sqrt(hd)
        scores[np.triu_indices(t, 1)] = -np.inf
        p = np.exp(scores - scores.max(axis=1, keepdims=True))
        want[:, s] = (p / p.sum(axis=1, keepdims=True)) @ v[:, s]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_roofline_and_isa():
    assert inferneo.kernels.isa() in ("scalar", "avx2", "avx512")
    r = inferneo.kernels.roofline(quick=True, preset="tiny")
    for key in ["isa", "threads", "read_bandwidth_gbps", "fma_peak_gflops", "int_dot_peak_gops", "kernels"]:
        assert key in r
    assert r["read_bandwidth_gbps"] > 0 and len(r["kernels"]) > 0
    # The preset's shapes: tiny is 64 wide.
    assert r["preset"] == "tiny" and {k["k"] for k in r["kernels"]} == {64, 256}
    with pytest.raises(ValueError, match="gpt2-xl"):
        inferneo.kernels.roofline(quick=True, preset="gpt2-xxl")


def test_bad_arguments_raise_the_right_exceptions(tiny, tiny_dir, tmp_path):
    with pytest.raises(FileNotFoundError):
        inferneo.Model(str(tmp_path / "missing"))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{ not json")
    with pytest.raises(OSError):
        inferneo.Model(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="dtype"):
        inferneo.Model(tiny_dir, dtype="int3")
    with pytest.raises(ValueError, match="isa"):
        inferneo.Model(tiny_dir, isa="avx9000")
    with pytest.raises(ValueError, match="threads"):
        inferneo.Model(tiny_dir, threads=0)
    with pytest.raises(ValueError, match="vocabulary"):
        tiny.logits([1, 99999])
    with pytest.raises(ValueError, match="negative"):
        tiny.generate([-1])
    with pytest.raises(ValueError, match="context length"):
        tiny.generate([1, 2], max_tokens=1000)
    with pytest.raises(ValueError, match="temperature"):
        tiny.generate([1], temperature=-1.0)
    with pytest.raises(ValueError):
        tiny.logits([])
    with pytest.raises(ValueError, match="2-D"):
        inferneo.kernels.matmul(np.zeros(3, np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="columns"):
        inferneo.kernels.matmul(np.zeros((2, 4), np.float32), np.zeros((3, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        inferneo.kernels.pack(np.zeros((3, 3), np.float32), "int3")
    with pytest.raises(ValueError, match="heads"):
        inferneo.kernels.attention(*(np.zeros((2, 10), np.float32),) * 3, n_head=3)
    with pytest.raises(ValueError):
        inferneo.kernels.matmul(np.zeros((2, 3), dtype=np.int64), np.zeros((3, 3), np.float32))


def test_a_gguf_file_loads_like_its_directory(tmp_path):
    data = ROOT / "tests" / "data"
    ids = [5, 17, 999, 3]
    got = inferneo.Model(str(data / "hub-micro-f32.gguf")).logits(ids)
    want = inferneo.Model(str(data / "hub-micro")).logits(ids)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # The tokenizer comes from the file's metadata: "!" is id 0, `<|endoftext|>` 999.
    assert inferneo.Model(str(data / "hub-micro-q8_0.gguf")).tokenize("!<|endoftext|>") == [0, 999]
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(OSError, match="wrong magic"):
        inferneo.Model(str(bad))


def test_compare_with_transformers_names_the_extra_when_missing(tiny_dir):
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"inferneo\[reference\]"):
            inferneo.compare_with_transformers(tiny_dir, ["Hello"])
        return
    r = inferneo.compare_with_transformers(tiny_dir, ["Hello, world"])
    assert r[0]["within_atol"] and r[0]["argmax_agreement"] == 1.0 and r[0]["greedy_agreement"]
