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

    # Chat (the server runs with --chat-template assets/chat-templates/plain.jinja).
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    c = chat.choices[0]
    assert chat.object == "chat.completion" and chat.id.startswith("chatcmpl-"), chat
    assert c.message.role == "assistant" and isinstance(c.message.content, str), c
    assert c.finish_reason in ("length", "stop"), c
    assert len(c.logprobs.content) == chat.usage.completion_tokens, c.logprobs
    assert all(len(t.top_logprobs) == 2 for t in c.logprobs.content), c.logprobs

    stream = client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    roles, parts, usage, finish = [], [], None, None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk", chunk
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.role:
                roles.append(ch.delta.role)
            parts.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    assert roles == ["assistant"], roles
    assert "".join(parts) == c.message.content, (parts, c.message.content)
    assert finish == c.finish_reason and usage.completion_tokens == chat.usage.completion_tokens, (finish, usage)

    # Newer parameter names and content given as parts.
    parts_msg = [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]
    r = client.chat.completions.create(model=model, messages=parts_msg, max_completion_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length", r

    for bad, param in [
        ([], "messages"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user", "content": 5}], "messages[0].content"),
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}], "messages[0].content"),
    ]:
        try:
            client.chat.completions.create(model=model, messages=bad)
            raise AssertionError(f"{bad} was accepted")
        except openai.BadRequestError as e:
            assert e.status_code == 400 and e.body["param"] == param, (bad, e.body)

    print(f"openai {openai.__version__}: models, completion, streaming, seed, chat, chat streaming, errors: all passed")


if __name__ == "__main__":
    main()
