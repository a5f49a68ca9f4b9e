"""The OpenAI API: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``.

Streams are server-sent events: ``chat.completion.chunk`` (or ``text_completion``) chunks, a final chunk
with ``finish_reason``, a usage chunk with ``"choices": []`` when ``stream_options.include_usage`` is set,
then ``data: [DONE]``. Embeddings honour ``encoding_format`` (the official client asks for ``base64``:
little-endian float32). Errors are ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from arrowengine.serve.errors import BadRequestError, RequestError
from arrowengine.serve.fields import get_bool, get_int, get_messages, get_str, reject_unsupported
from arrowengine.serve.sampling_map import openai_sampling
from arrowengine.serve.service import Generation
from arrowengine.serve.state import state_of

__all__ = ["OPENAI_ROUTES", "openai_error_body"]


def openai_error_body(exc: RequestError | Exception) -> dict[str, Any]:
    """The OpenAI error object of ``exc``."""
    if isinstance(exc, RequestError):
        return {"error": {"message": str(exc), "type": exc.type, "param": None, "code": exc.code}}
    return {"error": {"message": f"generation failed: {exc}", "type": "server_error", "param": None,
                      "code": None}}


def _usage(gen: Generation) -> dict[str, Any]:
    r = gen.request
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


async def _run(request: Request, *, chat: bool) -> Response:
    state = state_of(request)
    key_id = state.admit(request)
    body = await state.body(request)
    model = get_str(body, "model")
    reject_unsupported(body, ("tools", "functions", "logprobs", "top_logprobs", "echo", "suffix", "best_of"))
    stream = get_bool(body, "stream", False)
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise BadRequestError('"stream_options" must be an object', code="invalid_type")
    include_usage = get_bool(stream_options, "include_usage", False)
    params = openai_sampling(body, state.config)
    if chat:
        messages, prompt = get_messages(body), None
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise BadRequestError('"prompt" must be a string (one prompt per request on this server)',
                                  code="invalid_type")
        messages = None
    gen = await state.service.generate(model, params, key_id=key_id, messages=messages, prompt=prompt)
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    obj = "chat.completion" if chat else "text_completion"
    if not stream:
        try:
            text = await gen.text(request)
        finally:
            gen.close()
        choice: dict[str, Any] = {"index": 0, "finish_reason": gen.request.finish_reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse({"id": ident, "object": obj, "created": created, "model": gen.model_name,
                             "choices": [choice], "usage": _usage(gen)})
    head = {"id": ident, "object": obj + (".chunk" if chat else ""), "created": created, "model": gen.model_name}
    return StreamingResponse(_sse(gen, head, chat=chat, include_usage=include_usage), media_type="text/event-stream")


def _event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def _sse(gen: Generation, head: dict[str, Any], *, chat: bool, include_usage: bool) -> AsyncIterator[bytes]:
    def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {} if text is None else {"content": text}
            if first:
                delta["role"] = "assistant"
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        return {**head, "choices": [choice]}

    try:
        if chat:
            yield _event(chunk("", None, first=True))
        async for text in gen.pieces():
            yield _event(chunk(text, None))
        yield _event(chunk(None, gen.request.finish_reason))
        if include_usage:
            yield _event({**head, "choices": [], "usage": _usage(gen)})
        yield b"data: [DONE]\n\n"
    except Exception as exc:  # headers are sent: the error goes in the stream
        yield _event(openai_error_body(exc))
    finally:
        gen.close()


async def chat_completions(request: Request) -> Response:
    """``POST /v1/chat/completions``."""
    return await _run(request, chat=True)


async def completions(request: Request) -> Response:
    """``POST /v1/completions``."""
    return await _run(request, chat=False)


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``: ``{"model", "input": str | [str], "encoding_format"?, "dimensions"?}``."""
    state = state_of(request)
    state.admit(request)
    body = await state.body(request)
    model = get_str(body, "model")
    value = body.get("input")
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise BadRequestError('"input" must be a string or a non-empty list of strings (token ids are not '
                              "accepted)", code="invalid_type")
    fmt = get_str(body, "encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise BadRequestError(f'"encoding_format" must be "float" or "base64", got {fmt!r}', code="invalid_value")
    dims = get_int(body, "dimensions", None, 1, 1 << 16)
    vectors, loaded, _load_s, tokens = await state.service.embed(model, texts)
    if dims is not None:
        if dims > vectors.shape[1]:
            raise BadRequestError(f'"dimensions" is {dims}, over the model\'s {vectors.shape[1]}',
                                  code="invalid_value")
        vectors = vectors[:, :dims]
    data = []
    for i, vec in enumerate(vectors):
        emb: Any = base64.b64encode(vec.astype("<f4").tobytes()).decode() if fmt == "base64" else vec.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return JSONResponse({"object": "list", "data": data, "model": loaded.key,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def models(request: Request) -> Response:
    """``GET /v1/models``."""
    state = state_of(request)
    state.admit(request)
    data = [{"id": e.name, "object": "model", "created": int(e.modified), "owned_by": "arrowengine"}
            for e in state.registry.entries()]
    return JSONResponse({"object": "list", "data": data})


OPENAI_ROUTES = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", models, methods=["GET"]),
]
