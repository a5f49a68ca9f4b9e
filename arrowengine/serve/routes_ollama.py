"""The Ollama API: ``/api/chat``, ``/api/generate``, ``/api/embed``, ``/api/embeddings``, ``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/version``.

Streaming is the default (NDJSON, one object per text piece, then a final object with ``done: true``,
``done_reason`` and the durations in nanoseconds). ``/api/generate`` wraps the prompt in the chat template
(with ``system``) unless ``raw`` is true, as Ollama does; an empty prompt only loads the model, or unloads
it with ``keep_alive: 0``. Errors are ``{"error": "..."}`` (see :mod:`arrowengine.serve.app`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from arrowengine import __version__
from arrowengine.serve.errors import BadRequestError, RequestError
from arrowengine.serve.fields import get_bool, get_messages, get_str, reject_unsupported
from arrowengine.serve.registry import ModelEntry
from arrowengine.serve.sampling_map import ollama_sampling
from arrowengine.serve.service import Generation, parse_keep_alive
from arrowengine.serve.state import state_of

__all__ = ["OLLAMA_ROUTES"]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _model_field(body: dict[str, Any]) -> str:
    name = body.get("model", body.get("name"))  # older clients send "name"
    if name is None:
        raise BadRequestError('"model" is required; name a model from /api/tags', code="missing_field")
    return get_str({"model": name}, "model")


async def _run(request: Request, *, chat: bool) -> Response:
    state = state_of(request)
    key_id = state.admit(request)
    body = await state.body(request)
    model = _model_field(body)
    reject_unsupported(body, ("tools", "images", "suffix", "logprobs"))
    stream = get_bool(body, "stream", True)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    params, num_ctx = ollama_sampling(body, state.config)
    if chat:
        if body.get("messages") == []:
            return await _load_only(request, model, keep_alive, chat=True)
        messages, prompt = get_messages(body), None
    else:
        prompt = get_str(body, "prompt", "")
        system = get_str(body, "system", "")
        if not prompt:
            return await _load_only(request, model, keep_alive, chat=False)
        messages = None if get_bool(body, "raw", False) else (
            [{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        if messages is not None:
            prompt = None
    gen = await state.service.generate(model, params, key_id=key_id, messages=messages, prompt=prompt,
                                       num_ctx=num_ctx, keep_alive=keep_alive)
    field = "message" if chat else "response"

    def piece(text: str) -> dict[str, Any]:
        content: Any = {"role": "assistant", "content": text} if chat else text
        return {"model": gen.model_name, "created_at": _now(), field: content, "done": False}

    def final(text: str) -> dict[str, Any]:
        out = piece(text)
        out.update(done=True, done_reason=gen.request.finish_reason, **gen.timings())
        return out

    if not stream:
        try:
            text = await gen.text(request)
        finally:
            gen.close()
        return JSONResponse(final(text))
    return StreamingResponse(_ndjson(gen, piece, final), media_type="application/x-ndjson")


async def _ndjson(gen: Generation, piece: Any, final: Any) -> AsyncIterator[bytes]:
    try:
        async for text in gen.pieces():
            yield (json.dumps(piece(text)) + "\n").encode()
        yield (json.dumps(final("")) + "\n").encode()
    except RequestError as exc:  # headers are sent: the error goes in the stream, as Ollama does
        yield (json.dumps({"error": str(exc)}) + "\n").encode()
    except Exception as exc:
        yield (json.dumps({"error": f"generation failed: {exc}"}) + "\n").encode()
    finally:
        gen.close()


async def _load_only(request: Request, model: str, keep_alive: float | None, *, chat: bool) -> Response:
    registry = state_of(request).registry
    if keep_alive == 0:
        registry.resolve(model, "llm")
        registry.unload(model)
        reason = "unload"
    else:
        loaded, _ = await registry.acquire(model, "llm")
        registry.release(loaded, keep_alive)
        reason = "load"
    out: dict[str, Any] = {"model": model, "created_at": _now(), "done": True, "done_reason": reason}
    out.update({"message": {"role": "assistant", "content": ""}} if chat else {"response": ""})
    return JSONResponse(out)


async def chat(request: Request) -> Response:
    """``POST /api/chat``."""
    return await _run(request, chat=True)


async def generate(request: Request) -> Response:
    """``POST /api/generate``."""
    return await _run(request, chat=False)


async def _embed_texts(request: Request, texts_field: str) -> tuple[dict[str, Any], Any, Any, float, int]:
    state = state_of(request)
    state.admit(request)
    body = await state.body(request)
    model = _model_field(body)
    value = body.get(texts_field)
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise BadRequestError(f'"{texts_field}" must be a string or a list of strings, got '
                              f"{type(value).__name__}", code="invalid_type")
    vectors, loaded, load_s, tokens = await state.service.embed(model, texts,
                                                                keep_alive=parse_keep_alive(body.get("keep_alive")))
    return body, vectors, loaded, load_s, tokens


async def embed(request: Request) -> Response:
    """``POST /api/embed``: ``{"model", "input": str | [str]}`` -> ``{"embeddings": [[...]]}``."""
    started = time.perf_counter()
    _body, vectors, loaded, load_s, tokens = await _embed_texts(request, "input")
    return JSONResponse({"model": loaded.key, "embeddings": vectors.tolist(),
                         "total_duration": int((time.perf_counter() - started) * 1e9),
                         "load_duration": int(load_s * 1e9), "prompt_eval_count": tokens})


async def embeddings(request: Request) -> Response:
    """``POST /api/embeddings`` (legacy): ``{"model", "prompt"}`` -> ``{"embedding": [...]}``."""
    _body, vectors, _loaded, _load_s, _tokens = await _embed_texts(request, "prompt")
    return JSONResponse({"embedding": vectors[0].tolist() if len(vectors) else []})


def _listing(entry: ModelEntry, tag: str = "latest") -> dict[str, Any]:
    return {"name": f"{entry.name}:{tag}", "model": f"{entry.name}:{tag}", "modified_at": _iso(entry.modified),
            "size": entry.size, "digest": entry.digest, "details": entry.details(tag)}


async def tags(request: Request) -> Response:
    """``GET /api/tags``: every servable model."""
    state = state_of(request)
    state.admit(request)
    return JSONResponse({"models": [_listing(e) for e in state.registry.entries()]})


async def show(request: Request) -> Response:
    """``POST /api/show``: details, config and capabilities of one model."""
    state = state_of(request)
    state.admit(request)
    body = await state.body(request)
    entry, tag = state.registry.resolve(_model_field(body))
    template = ""
    chat_template = entry.path / "chat_template.jinja"
    if chat_template.is_file():
        template = chat_template.read_text(encoding="utf-8")
    caps = ["completion"] if entry.kind == "llm" else ["embedding"]
    info = {f"{entry.family}.{k}": v for k, v in entry.config.items() if isinstance(v, (int, float, str))}
    info["general.architecture"] = entry.family
    return JSONResponse({"modelfile": f"FROM {entry.path}", "parameters": "", "template": template,
                         "details": entry.details(tag), "model_info": info, "capabilities": caps,
                         "modified_at": _iso(entry.modified)})


async def ps(request: Request) -> Response:
    """``GET /api/ps``: models in memory and when they expire."""
    state = state_of(request)
    state.admit(request)
    now_wall, now_mono = time.time(), time.monotonic()
    models = []
    for m in state.registry.loaded():
        expires = m.expires_at
        expires_at = "9999-12-31T23:59:59Z" if math.isinf(expires) else _iso(now_wall + max(0.0, expires - now_mono))
        item = _listing(m.entry, m.tag)
        item.update(expires_at=expires_at, size_vram=0, context_length=m.context)
        models.append(item)
    return JSONResponse({"models": models})


async def version(request: Request) -> Response:
    """``GET /api/version``."""
    state_of(request).admit(request)
    return JSONResponse({"version": __version__})


OLLAMA_ROUTES = [
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
]
