"""Writes the GGUF fixtures in tests/data/ from tests/data/hub-micro with llama.cpp's own tools.

    tests/data/hub-micro-f32.gguf    convert_hf_to_gguf.py --outtype f32
    tests/data/hub-micro-q8_0.gguf   convert_hf_to_gguf.py --outtype q8_0
    tests/data/hub-micro-q4_0.gguf   the f32 file with the tensors that the q8_0 conversion
                                     quantized re-quantized to Q4_0 by gguf-py's `gguf.quants`
                                     (llama.cpp's numpy port of `quantize_row_q4_0_ref`), as
                                     `convert_hf_to_gguf.py` has no q4_0 output type and
                                     `llama-quantize` is a C++ build

How it was run (2026-12-02), offline but for PyPI:

    python3 -m venv /tmp/gg/venv
    /tmp/gg/venv/bin/pip install torch==2.15.0 transformers==5.24.0 safetensors numpy
    pip download --no-deps --no-binary :all: llama-cpp-python   # 0.3.36; unpack the sdist
    /tmp/gg/venv/bin/python tools/reference/gguf_fixtures.py \\
        --llama-cpp /path/to/llama_cpp_python-0.3.36/vendor/llama.cpp

(the sdist's convert_hf_to_gguf.py and its bundled gguf-py 0.19.0 are used, not PyPI's gguf).

The converter needs tokenizer files, and hub-micro has none; its vocabulary has 1000 entries,
so the real GPT-2 tokenizer (50257) does not fit. The model directory handed to the converter
is hub-micro plus a tokenizer.json cut from GPT-2's (runtime's assets/tokenizer.json): ids
0..998 as GPT-2 has them (the 256 byte tokens, then the results of the first 743 merges, in
merge order, which is how GPT-2 numbers its vocabulary) and `<|endoftext|>` as id 999, with the
first 743 merges. The converter recognises a tokenizer's pre-tokenizer by hashing the ids it
gives for a test text; the cut vocabulary gives other ids than GPT-2's, so
`get_vocab_base_pre` is patched to answer "gpt-2" (which it is: the same regex and byte-level
mapping). And this converter version fails on hub-micro's causal-mask buffers `h.N.attn.bias`
("Can not map tensor"; its GPT-2 class means to drop them but passes them on), so they are
left out of the copy's model.safetensors (they are constants, not weights; every other tensor
is copied as is, f16). Everything else is the converter's own code path.
"""

import argparse
import json
import pathlib
import runpy
import shutil
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
N_VOCAB = 1000


def cut_tokenizer(out_dir: pathlib.Path) -> None:
    full = json.loads((ROOT / "assets" / "tokenizer.json").read_text())
    n_merges = N_VOCAB - 256 - 1
    vocab = {tok: i for tok, i in full["model"]["vocab"].items() if i < N_VOCAB - 1}
    assert len(vocab) == N_VOCAB - 1
    eot = "<|endoftext|>"
    vocab[eot] = N_VOCAB - 1
    merges = full["model"]["merges"][:n_merges]
    # Every merge's result is in the cut vocabulary (GPT-2 numbers merge i's result 256 + i).
    for i, m in enumerate(merges):
        a, b = m if isinstance(m, list) else m.split(" ")
        assert vocab[a + b] == 256 + i, (m, i)
    full["model"]["vocab"] = vocab
    full["model"]["merges"] = merges
    full["added_tokens"][0]["id"] = N_VOCAB - 1
    (out_dir / "tokenizer.json").write_text(json.dumps(full, ensure_ascii=False))
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "bos_token": eot,
                "eos_token": eot,
                "unk_token": eot,
                "model_max_length": 64,
                "add_prefix_space": False,
            }
        )
    )


def drop_mask_buffers(model_dir: pathlib.Path) -> None:
    from safetensors.numpy import load_file, save_file

    path = model_dir / "model.safetensors"
    tensors = load_file(path)
    kept = {k: v for k, v in tensors.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    assert len(kept) < len(tensors)
    save_file(kept, path, metadata={"format": "pt"})


def convert(llama_cpp: pathlib.Path, model_dir: pathlib.Path, outtype: str, out: pathlib.Path) -> None:
    sys.path.insert(0, str(llama_cpp))
    sys.path.insert(0, str(llama_cpp / "gguf-py"))
    import conversion.base as base

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    argv = sys.argv
    sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outtype", outtype, "--outfile", str(out)]
    try:
        runpy.run_path(str(llama_cpp / "convert_hf_to_gguf.py"), run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
    finally:
        sys.argv = argv


def requantize_q4_0(f32_path: pathlib.Path, q8_path: pathlib.Path, out: pathlib.Path) -> None:
    """The f32 file's tensors, with those the q8_0 conversion chose to quantize as Q4_0."""
    import gguf
    import numpy as np

    src, q8 = gguf.GGUFReader(f32_path), gguf.GGUFReader(q8_path)
    quantized = {t.name for t in q8.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}
    arch = src.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(out, arch)
    for field in src.fields.values():
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, field.contents(), vtype, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    for t in src.tensors:
        data = np.array(t.data, dtype=np.float32).reshape([int(d) for d in reversed(t.shape)])
        if t.name in quantized:
            w.add_tensor(t.name, gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q4_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q4_0)
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--llama-cpp", type=pathlib.Path, required=True, help="llama.cpp source tree (vendor/llama.cpp)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = pathlib.Path(tmp) / "hub-micro"
        shutil.copytree(DATA / "hub-micro", model_dir)
        cut_tokenizer(model_dir)
        drop_mask_buffers(model_dir)
        f32, q8, q4 = (DATA / f"hub-micro-{t}.gguf" for t in ("f32", "q8_0", "q4_0"))
        convert(args.llama_cpp, model_dir, "f32", f32)
        convert(args.llama_cpp, model_dir, "q8_0", q8)
        requantize_q4_0(f32, q8, q4)
    for p in (f32, q8, q4):
        print(f"{p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
