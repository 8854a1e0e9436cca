"""Writes tests/data/chat_templates.json: HuggingFace's `apply_chat_template` output for the
chat templates in tests/data/chat/ and assets/chat-templates/, over a fixed set of
conversations. `cargo test` renders the same conversations with inferneo's minijinja renderer
and compares the strings exactly.

Usage: python tools/reference/chat_templates.py   (needs transformers and jinja2; no torch)

The tokenizer is the real GPT-2 one from assets/, so the special tokens HF passes to templates
(bos_token, eos_token, unk_token) are GPT-2's `<|endoftext|>`.
"""

import json
import os

import jinja2
import transformers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TEMPLATES = {
    "chatml": "tests/data/chat/chatml.jinja",
    "llama2": "tests/data/chat/llama2.jinja",
    "zephyr": "tests/data/chat/zephyr.jinja",
    "plain": "assets/chat-templates/plain.jinja",
}
CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "  Answer in French.  "},
        {"role": "user", "content": "Good morning"},
        {"role": "assistant", "content": "Bonjour !"},
        {"role": "user", "content": "And goodbye?\n"},
    ],
    [{"role": "user", "content": "Quotes \" ' and braces {{ x }} {% raw %} <b>tags</b> & café 日本 🙂"}],
    [{"role": "user", "content": ""}],
    # The llama2 template refuses this one (roles must alternate): the fixture records the error.
    [{"role": "assistant", "content": "I speak first."}, {"role": "user", "content": "Hi"}],
]


def main():
    tok = PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(ROOT, "assets", "tokenizer.json"),
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    templates = {}
    cases = []
    for name, rel in TEMPLATES.items():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
            templates[name] = rel
            source = f.read()
        for messages in CONVERSATIONS:
            for gen in (True, False):
                case = {"template": name, "messages": messages, "add_generation_prompt": gen}
                try:
                    case["rendered"] = tok.apply_chat_template(
                        messages, chat_template=source, tokenize=False, add_generation_prompt=gen
                    )
                except Exception as e:  # HF raises TemplateError for raise_exception
                    case["error"] = str(e)
                cases.append(case)
    out = {
        "format": "inferneo-chat-templates",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "templates": templates,
        "cases": cases,
    }
    path = os.path.join(ROOT, "tests", "data", "chat_templates.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path}: {len(cases)} cases")


if __name__ == "__main__":
    main()
