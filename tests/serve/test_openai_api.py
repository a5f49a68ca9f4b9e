"""The OpenAI API driven by the official ``openai`` client against a real server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import openai
import pytest

from tests.serve.conftest import EMBED, REAL, TINY

MESSAGES = [{"role": "user", "content": "Say something about rivers."}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120, max_retries=0)


def test_chat_completion_greedy_equals_llm_chat(client, tiny_llm):
    out = client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=12, temperature=0)
    assert out.object == "chat.completion" and len(out.choices) == 1
    assert out.choices[0].message.content == tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=12)
    assert out.choices[0].finish_reason in ("stop", "length")
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_chat_stream_chunks_usage_and_done(client):
    whole = client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=12, temperature=0)
    chunks = list(client.chat.completions.create(model=TINY, messages=MESSAGES, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == whole.choices[0].finish_reason and set(finish[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_stream_equals_whole(client, tiny_llm):
    whole = client.completions.create(model=TINY, prompt="Once upon a time", max_tokens=10, temperature=0)
    assert whole.choices[0].text == tiny_llm.generate("Once upon a time", temperature=0.0, max_new_tokens=10)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model=TINY, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True))
    assert streamed == whole.choices[0].text


def test_embeddings_base64_and_float_equal_text_encoder(client, minilm_reference):
    texts = ["the weather is nice", "quantum computing"]
    expected = minilm_reference(texts)
    default = client.embeddings.create(model=EMBED, input=texts)  # the client asks for base64
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    for out in (default, floats):
        np.testing.assert_allclose(np.asarray([d.embedding for d in out.data]), expected, rtol=0, atol=1e-6)
    assert [d.index for d in default.data] == [0, 1] and default.usage.prompt_tokens > 0


def test_models_list(client):
    assert sorted(m.id for m in client.models.list().data) == [EMBED, REAL, TINY]


def test_response_format_json_schema(client, tiny_llm):
    import json

    import jsonschema

    from tests.serve.test_ollama_api import FORMAT, MESSAGES

    out = client.chat.completions.create(
        model=TINY, messages=MESSAGES, temperature=0, max_tokens=48,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": FORMAT}})
    text = out.choices[0].message.content
    jsonschema.validate(json.loads(text), FORMAT)
    assert text == tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=48, json_schema=FORMAT)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=TINY, messages=MESSAGES, response_format={"type": "xml"})
