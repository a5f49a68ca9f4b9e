"""Bad requests get the right status and exact error body in each API's shape, interleaved with good requests.

Raw bodies go through ``httpx`` (the official clients cannot send malformed JSON); the status and message
the official clients surface are checked too.
"""

from __future__ import annotations

import json

import httpx
import ollama
import openai
import pytest

from arrowengine.runtime.llm.chat import render_chat
from arrowengine.runtime.llm.errors import ContextOverflowError
from tests.serve.conftest import TINY

GOOD_OLLAMA = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "stream": False,
               "options": {"num_predict": 3}}
GOOD_OPENAI = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
LONG = "word " * 700  # over the 512-token test context


def _overflow_message(tiny_llm, max_new: int) -> str:
    budget = 512 - min(max_new, 256)
    with pytest.raises(ContextOverflowError) as caught:
        render_chat(tiny_llm.tokenizer, [{"role": "user", "content": LONG}], budget)
    return str(caught.value)


def _cases(tiny_llm) -> list[tuple[str, object, int, str]]:
    """(path, body, status, message): the same problems through both APIs."""
    bad_json = "the request body is not valid JSON (Expecting property name enclosed in double quotes: line 1 " \
               "column 2 (char 1)); send a JSON object"
    unknown = "model 'nope' is not a chat/completion model on this server; available: smollm2-135m-instruct, tiny-chat"
    msgs = [{"role": "user", "content": "hi"}]
    return [
        ("/api/chat", {"model": "nope", "messages": msgs}, 404, unknown),
        ("/v1/chat/completions", {"model": "nope", "messages": msgs}, 404, unknown),
        ("/api/chat", b"{not json", 400, bad_json),
        ("/v1/chat/completions", b"{not json", 400, bad_json),
        ("/api/chat", b"[1, 2]", 400, 'the request body must be a JSON object, got list; send {"model": ..., ...}'),
        ("/api/chat", {"model": 5, "messages": msgs}, 400, '"model" must be a string, got int 5'),
        ("/v1/chat/completions", {"model": TINY, "messages": "hi"}, 400,
         '"messages" must be a non-empty list of {"role": ..., "content": ...} objects, got str "hi"'),
        ("/v1/chat/completions", {"model": TINY, "messages": msgs, "temperature": "hot"}, 400,
         '"temperature" must be a number, got str "hot"'),
        ("/api/chat", {"model": TINY, "messages": msgs, "options": {"num_predict": -5}}, 400,
         '"options.num_predict" must be between -2 and 256, got -5'),
        ("/api/chat", {"model": TINY, "messages": msgs, "options": {"num_predict": 10**9}}, 400,
         '"options.num_predict" must be between -2 and 256, got 1000000000'),
        ("/v1/chat/completions", {"model": TINY, "messages": msgs, "max_tokens": -1}, 400,
         '"max_tokens" must be between 1 and 256, got -1'),
        ("/v1/completions", {"model": TINY, "prompt": "x", "max_tokens": 10**6}, 400,
         '"max_tokens" must be between 1 and 256, got 1000000'),
        ("/api/chat", {"model": TINY, "messages": [{"role": "user", "content": LONG}], "options": {"num_predict": 8}},
         400, _overflow_message(tiny_llm, 8)),
        ("/v1/completions", {"model": TINY, "prompt": LONG, "max_tokens": 8}, 400,
         f"the prompt is {len(tiny_llm.tokenizer(LONG)['input_ids'])} tokens, over the 511 this server accepts "
         "for a 512-token context; shorten it"),
        ("/api/embed", {"model": TINY, "input": "x"}, 404,
         "model 'tiny-chat' is not an embedding model on this server; available: all-MiniLM-L6-v2"),
        ("/api/chat", {"model": TINY, "messages": msgs, "pad": "x" * 70_000}, 413,
         "the request body is <size> bytes, over the 65536-byte limit; send less"),
        ("/v1/chat/completions", {"model": TINY, "messages": msgs, "tools": [{"type": "function"}]}, 400,
         '"tools" is not supported by this server; remove it from the request'),
        ("/v1/chat/completions", {"model": f"{TINY}:q9", "messages": msgs}, 404,
         "model 'tiny-chat:q9': unknown tag 'q9'; use one of bf16, fp32, gguf, int4, int8, latest, q8_0"),
    ]


def test_bad_requests_interleaved_with_good_ones(server, tiny_llm):
    with httpx.Client(base_url=server.url, timeout=120) as http:
        for path, body, status, message in _cases(tiny_llm):
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            message = message.replace("<size>", str(len(content)))
            resp = http.post(path, content=content, headers={"content-type": "application/json"})
            assert resp.status_code == status, (path, body, resp.text)
            if path.startswith("/v1/"):
                error = resp.json()["error"]
                assert error["message"] == message
                assert error["type"] == ("authentication_error" if status == 401 else "invalid_request_error")
            else:
                assert resp.json() == {"error": message}
            # the server keeps serving around every bad request
            good = http.post("/api/chat", json=GOOD_OLLAMA)
            assert good.status_code == 200 and good.json()["done"] is True
            good = http.post("/v1/chat/completions", json=GOOD_OPENAI)
            assert good.status_code == 200 and good.json()["choices"][0]["message"]["role"] == "assistant"


def test_official_clients_surface_status_and_message(server):
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=server.url).chat(model="nope", messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 404 and "available: smollm2-135m-instruct, tiny-chat" in caught.value.error
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert nf.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=TINY, messages=[{"role": "user", "content": "x"}], max_tokens=-3)
    assert bad.value.body["message"] == '"max_tokens" must be between 1 and 256, got -3'
