"""Greedy chat through the server with the real SmolLM2 equals ``LLM.chat`` with the same construction options."""

from __future__ import annotations

import ollama
import openai
import pytest

from tests.serve.conftest import REAL, SERVER_OPTIONS, SMOLLM

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "Paris."},
            {"role": "user", "content": "And of Italy? Answer in one sentence."}]


@pytest.mark.slow
def test_real_model_greedy_chat_equals_llm_chat(server):
    from arrowengine import LLM

    llm = LLM(SMOLLM, max_context=SERVER_OPTIONS["context_tokens"], **SERVER_OPTIONS["llm_options"])
    expected = llm.chat(MESSAGES, temperature=0.0, max_new_tokens=16)
    del llm
    assert expected.strip()  # a real answer, not an empty string
    out = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300) \
        .chat.completions.create(model=REAL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert out.choices[0].message.content == expected
    client = ollama.Client(host=server.url, timeout=300)
    streamed = "".join(part.message.content for part in client.chat(
        model=REAL, messages=MESSAGES, stream=True, keep_alive=0,
        options={"temperature": 0, "repeat_penalty": 1.0, "num_predict": 16}))
    assert streamed == expected
