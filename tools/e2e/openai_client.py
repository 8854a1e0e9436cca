"""End-to-end check with the official `openai` Python client against a running Inferneo server.

Usage: python tools/e2e/openai_client.py http://127.0.0.1:PORT MODEL
Run by `tools/tests/serve.rs` when Python with `openai` is available (`.ci/run` installs it).
"""

import sys

import openai


def main() -> None:
    base, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="not-needed", max_retries=0)

    ids = [m.id for m in client.models.list().data]
    assert model in ids, ids

    plain = client.completions.create(model=model, prompt="Hello, my name is", max_tokens=8, temperature=0)
    choice = plain.choices[0]
    assert isinstance(choice.text, str) and choice.finish_reason == "length", plain
    assert plain.usage.completion_tokens == 8 and plain.usage.prompt_tokens == 5, plain.usage

    stream = client.completions.create(
        model=model, prompt="Hello, my name is", max_tokens=8, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)
    assert streamed == choice.text, (streamed, choice.text)

    def sample(seed: int) -> str:
        r = client.completions.create(model=model, prompt="Once", max_tokens=12, temperature=1.0, top_p=0.9, seed=seed)
        return r.choices[0].text

    assert sample(5) == sample(5), "same seed, different text"

    try:
        client.completions.create(model=model, prompt="x", max_tokens=-1)
        raise AssertionError("max_tokens=-1 was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "max_tokens" in str(e), e
    try:
        client.completions.create(model="no-such-model", prompt="x")
        raise AssertionError("unknown model was accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404, e

    print(f"openai {openai.__version__}: models, completion, streaming, seed, errors: all passed")


if __name__ == "__main__":
    main()
