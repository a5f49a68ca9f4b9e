"""What both APIs share: turn a chat or a prompt into a queued generation, and embed texts.

``Generation`` owns everything a request holds (a model reference, a stream slot of its key, a queued or
running sequence) and gives all of it back in ``close()``, whichever way the request ends (done, error,
client gone). Chat prompts go through the same ``render_chat`` with the same budget as ``LLM.chat``, and
``max_new_tokens`` is capped by the room the context leaves as ``LLM`` does, so greedy output is the same.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from starlette.requests import Request

from arrowengine.errors import EngineError
from arrowengine.runtime.llm.chat import render_chat
from arrowengine.runtime.llm.sampling import SamplingParams
from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import BadRequestError
from arrowengine.serve.limits import KeyGuard
from arrowengine.serve.registry import LoadedModel, ModelRegistry
from arrowengine.serve.scheduler import GenerationRequest

__all__ = ["Generation", "ServeService", "parse_keep_alive"]

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """A submitted generation and the resources it holds until ``close()``."""

    request: GenerationRequest
    loaded: LoadedModel
    load_seconds: float
    keep_alive: float | None
    _service: ServeService = field(repr=False)
    _closed: bool = False
    created: float = field(default_factory=time.time)

    async def pieces(self) -> AsyncIterator[str]:
        """Text pieces as the scheduler produces them."""
        async for piece in self.request.events():
            yield piece

    async def text(self, http: Request | None = None) -> str:
        """The whole completion; cancels the generation if the client of ``http`` disconnects meanwhile."""
        watcher = asyncio.create_task(_watch_disconnect(http, self.request)) if http is not None else None
        try:
            return "".join([piece async for piece in self.pieces()])
        finally:
            if watcher is not None:
                watcher.cancel()

    def close(self) -> None:
        """Cancel the generation if it still runs and give back the model and the key's stream slot."""
        if self._closed:
            return
        self._closed = True
        if self.request.finish_reason is None:
            self.request.cancel()
        self._service.guard.close_stream(self.request.key_id)
        self._service.registry.release(self.loaded, self.keep_alive)

    @property
    def model_name(self) -> str:
        """The model as clients name it (``name:tag``)."""
        return self.loaded.key

    def timings(self) -> dict[str, int]:
        """Ollama's duration fields in nanoseconds."""
        r = self.request
        end = r.finished_at or time.perf_counter()
        first = r.first_token_at or end
        start = r.admitted_at or r.enqueued_at
        return {"total_duration": int((end - r.enqueued_at + self.load_seconds) * 1e9),
                "load_duration": int(self.load_seconds * 1e9),
                "prompt_eval_count": r.prompt_tokens, "prompt_eval_duration": int((first - start) * 1e9),
                "eval_count": r.completion_tokens, "eval_duration": int((end - first) * 1e9)}


async def _watch_disconnect(http: Request, request: GenerationRequest) -> None:
    # the body is already read, so the next ASGI message is the disconnect (if the client goes away)
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            request.cancel()
            return


class ServeService:
    """Generation and embedding over the model registry, with the key guard's limits."""

    def __init__(self, config: ServeConfig, registry: ModelRegistry, guard: KeyGuard) -> None:
        self.config = config
        self.registry = registry
        self.guard = guard

    async def generate(self, model: str, params: SamplingParams, *, key_id: str, messages: list[dict[str, str]]
                       | None = None, prompt: str | None = None, num_ctx: int | None = None,
                       keep_alive: float | None = None) -> Generation:
        """Tokenize the chat (``messages``) or ``prompt`` and queue it; the caller must ``close()`` the result."""
        self.guard.open_stream(key_id)
        try:
            loaded, load_seconds = await self.registry.acquire(model, "llm")
        except BaseException:
            self.guard.close_stream(key_id)
            raise
        generation: Generation | None = None
        try:
            ids, params = await asyncio.to_thread(self._tokenize, loaded, params, messages, prompt, num_ctx)
            request = GenerationRequest(ids, params, key_id=key_id)
            request.bind(asyncio.get_running_loop())
            generation = Generation(request, loaded, load_seconds, keep_alive, self)
            loaded.scheduler.submit(request)
            return generation
        except BaseException:
            if generation is not None:
                generation.close()
            else:
                self.guard.close_stream(key_id)
                self.registry.release(loaded, keep_alive)
            raise

    def _tokenize(self, loaded: LoadedModel, params: SamplingParams, messages: list[dict[str, str]] | None,
                  prompt: str | None, num_ctx: int | None) -> tuple[list[int], SamplingParams]:
        llm = loaded.llm
        context = min(loaded.context, num_ctx or loaded.context)
        try:
            if messages is not None:
                budget = context - min(params.max_new_tokens, context // 2)  # the same budget as LLM.chat
                if self.config.max_prompt_tokens:
                    budget = min(budget, self.config.max_prompt_tokens)
                ids, _dropped = render_chat(llm.tokenizer, messages, budget)
            else:
                ids = list(llm.tokenizer(prompt)["input_ids"])
        except EngineError as exc:
            raise BadRequestError(str(exc), code="context_length_exceeded") from exc
        if not ids:
            raise BadRequestError("the prompt is empty after tokenization; send some text", code="invalid_value")
        limit = min(context - 1, self.config.max_prompt_tokens or context)
        if len(ids) > limit:
            raise BadRequestError(f"the prompt is {len(ids)} tokens, over the {limit} this server accepts for a "
                                  f"{context}-token context; shorten it", code="context_length_exceeded")
        room = context - len(ids)
        if params.max_new_tokens > room:
            params = params.with_overrides(max_new_tokens=room)
        return ids, params

    async def embed(self, model: str, texts: list[str], *, keep_alive: float | None = None
                    ) -> tuple[np.ndarray, LoadedModel, float, int]:
        """Embeddings ``[len(texts), dim]`` (float32), the model, load seconds and the number of input tokens."""
        loaded, load_seconds = await self.registry.acquire(model, "embed")
        try:
            def run() -> tuple[np.ndarray, int]:
                with loaded.encoder_lock:
                    vectors = loaded.encoder.encode(texts) if texts else np.zeros((0, 0), np.float32)
                    tokens = sum(len(e.ids) for e in loaded.encoder.tokenizer.encode_batch(texts)) if texts else 0
                return np.asarray(vectors, dtype=np.float32), tokens

            vectors, tokens = await asyncio.to_thread(run)
        finally:
            self.registry.release(loaded, keep_alive)
        return vectors, loaded, load_seconds, tokens


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's ``keep_alive``: seconds as a number, or a duration string (``"5m"``, ``"30s"``, ``"1h"``, ``"-1"``)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequestError(f'"keep_alive" must be a duration ("5m") or seconds, got {value!r}', code="invalid_type")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
        for unit in ("ms", "s", "m", "h"):
            if text.endswith(unit):
                try:
                    return float(text[:-len(unit)]) * units[unit]
                except ValueError:
                    break
        try:
            return float(text)
        except ValueError:
            pass
    raise BadRequestError(f'"keep_alive" must be a duration ("5m", "30s", "1h", "-1") or seconds, got {value!r}',
                          code="invalid_value")
