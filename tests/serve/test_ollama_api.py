"""The Ollama API driven by the official ``ollama`` client against a real server on 127.0.0.1."""

from __future__ import annotations

import numpy as np
import ollama
import pytest

from tests.serve.conftest import EMBED, REAL, TINY

MESSAGES = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}]
GREEDY = {"temperature": 0, "repeat_penalty": 1.0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def test_chat_greedy_equals_llm_chat_and_stream_equals_whole(client, tiny_llm):
    whole = client.chat(model=TINY, messages=MESSAGES, options=GREEDY)
    expected = tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=12)
    assert whole.message.content == expected
    assert whole.message.role == "assistant"
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.eval_count >= 1 and whole.prompt_eval_count > 10 and whole.total_duration > 0

    parts = list(client.chat(model=f"{TINY}:latest", messages=MESSAGES, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == expected
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == whole.done_reason and parts[-1].eval_count == whole.eval_count


def test_ollama_default_repeat_penalty_maps_to_llm(client, tiny_llm):
    # Ollama's default repeat_penalty is 1.1; the server maps it onto SamplingParams.repetition_penalty
    out = client.chat(model=TINY, messages=MESSAGES, options={"temperature": 0, "num_predict": 12})
    assert out.message.content == tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=12,
                                                repetition_penalty=1.1)


def test_generate_templated_raw_and_streamed(client, tiny_llm):
    whole = client.generate(model=TINY, prompt="Name a colour.", system="You are brief.", options=GREEDY)
    assert whole.response == tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=12)
    streamed = "".join(p.response for p in client.generate(model=TINY, prompt="Name a colour.",
                                                            system="You are brief.", options=GREEDY, stream=True))
    assert streamed == whole.response
    raw = client.generate(model=TINY, prompt="The sky is", raw=True, options=GREEDY)
    assert raw.response == tiny_llm.generate("The sky is", temperature=0.0, max_new_tokens=12)


def test_stop_and_seed(client):
    seeded = {"temperature": 1.0, "top_k": 50, "seed": 7, "num_predict": 10}
    first = client.generate(model=TINY, prompt="Hello", options=seeded).response
    assert client.generate(model=TINY, prompt="Hello", options=seeded).response == first
    full = client.generate(model=TINY, prompt="Hello", options=GREEDY).response
    stop = full[3:6]
    cut = client.generate(model=TINY, prompt="Hello", options={**GREEDY, "stop": [stop]})
    assert cut.response == full[:full.index(stop)] and cut.done_reason == "stop"


def test_embed_equals_text_encoder(client, minilm_reference):
    texts = ["a cat sits on the mat", "stock markets fell today"]
    expected = minilm_reference(texts)
    out = client.embed(model=EMBED, input=texts)
    np.testing.assert_allclose(np.asarray(out.embeddings), expected, rtol=0, atol=1e-6)
    assert out.prompt_eval_count > 0
    legacy = client.embeddings(model=EMBED, prompt=texts[0])
    np.testing.assert_allclose(np.asarray(legacy.embedding), expected[0], rtol=0, atol=1e-6)


def test_list_show_ps_version(client, server):
    names = sorted(m.model for m in client.list().models)
    assert names == [f"{EMBED}:latest", f"{REAL}:latest", f"{TINY}:latest"]
    shown = client.show(TINY)
    assert shown.details.family == "llama" and shown.capabilities == ["completion"]
    assert "{%" in shown.template and shown.modelinfo["llama.num_hidden_layers"] == 2
    client.generate(model=TINY, prompt="hi", options={"num_predict": 1})
    running = {m.model: m for m in client.ps().models}
    assert f"{TINY}:latest" in running and running[f"{TINY}:latest"].context_length == 512
    import httpx

    assert httpx.get(f"{server.url}/api/version").json() == {"version": __import__("arrowengine").__version__}


def test_keep_alive_zero_unloads_and_empty_prompt_loads(client):
    assert client.generate(model=TINY, prompt="", keep_alive=-1).done_reason == "load"
    assert f"{TINY}:latest" in {m.model for m in client.ps().models}
    assert client.generate(model=TINY, prompt="", keep_alive=0).done_reason == "unload"
    assert f"{TINY}:latest" not in {m.model for m in client.ps().models}
    client.generate(model=TINY, prompt="hi", options={"num_predict": 2}, keep_alive=0)
    assert f"{TINY}:latest" not in {m.model for m in client.ps().models}


def test_long_history_truncated_like_llm_chat(client, tiny_llm):
    # 40 turns of ~40 tokens overflow the 512-token test context: the oldest turns go, as in LLM.chat
    history = [{"role": "system", "content": "Be brief."}]
    for i in range(20):
        history += [{"role": "user", "content": f"Question {i}: " + "tell me more " * 12},
                    {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 12}]
    history.append({"role": "user", "content": "Last question?"})
    out = client.chat(model=TINY, messages=history, options=GREEDY)
    assert out.prompt_eval_count <= 512 - 12
    assert out.message.content == tiny_llm.chat(history, temperature=0.0, max_new_tokens=12)


FORMAT = {"type": "object", "required": ["ok", "mood"],
          "properties": {"ok": {"type": "boolean"}, "mood": {"enum": ["happy", "sad", "calm"]}}}


def test_format_schema_constrains_the_answer_like_llm_chat(client, tiny_llm):
    import json

    import jsonschema

    options = {**GREEDY, "num_predict": 96}
    out = client.chat(model=TINY, messages=MESSAGES, options=options, format=FORMAT)
    jsonschema.validate(json.loads(out.message.content), FORMAT)  # even a random 2-layer model answers in shape
    assert out.message.content == tiny_llm.chat(MESSAGES, temperature=0.0, max_new_tokens=96, json_schema=FORMAT)
    assert out.done_reason == "stop"



def test_bad_format_is_a_400_naming_the_field(server):
    import httpx

    body = {"model": TINY, "messages": MESSAGES, "stream": False, "format": "yaml"}
    reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=120)  # the client refuses to send it
    assert reply.status_code == 400
    assert reply.json() == {"error": '"format": format must be "json" or a JSON schema object, got \'yaml\''}
