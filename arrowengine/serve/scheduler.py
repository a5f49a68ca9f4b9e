"""Continuous batching: one scheduler thread per loaded LLM runs prefill chunks and batched decode steps.

Each tick the thread admits queued requests into free cache rows, prefills up to ``prefill_chunk`` prompt
tokens (oldest sequence first; a long prompt is cut into chunks, so it delays running streams by one chunk
per tick, not by its whole length), then runs one decode step over every decoding sequence. A prompt whose
row already holds all of it but the last token (prefix reuse) skips prefill: that token rides in the step. A sequence
leaves the batch the tick it finishes or is cancelled (client gone), and its row is free for the next
request. The queue is bounded: ``submit`` raises ``OverloadedError`` (HTTP 503 with ``Retry-After``) when it
is full.

Results travel to the asyncio side through ``GenerationRequest.emit`` (``call_soon_threadsafe``); torch
releases the GIL in its kernels, so the event loop keeps serving while a step runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from arrowengine.runtime.llm.generate import GenerationRun
from arrowengine.runtime.llm.sampling import PenaltyState, SamplingParams, sample_constrained, sample_next
from arrowengine.serve.batch import BatchedDecoder
from arrowengine.serve.errors import OverloadedError

__all__ = ["GenerationRequest", "Scheduler"]

logger = logging.getLogger(__name__)

_FINISH = {"stop_token": "stop", "stop_string": "stop", "length": "length"}


@dataclass
class GenerationRequest:
    """One prompt to complete, its sampling parameters, and the timeline the metrics report."""

    prompt_ids: list[int]
    params: SamplingParams
    key_id: str = "-"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    enqueued_at: float = field(default_factory=time.perf_counter)
    admitted_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V a previous sequence left in the row (not prefilled again)
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    cancelled: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, repr=False)
    _queue: asyncio.Queue[tuple[str, Any]] | None = field(default=None, repr=False)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Deliver events to ``loop`` (call on the event loop before ``Scheduler.submit``)."""
        self._loop, self._queue = loop, asyncio.Queue()

    def emit(self, kind: str, value: Any = None) -> None:
        """Thread-safe: hand ``("text", piece)``, ``("done", None)`` or ``("error", exc)`` to the waiter."""
        if self._loop is not None and self._queue is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

    async def events(self) -> AsyncIterator[str]:
        """Text pieces as they are generated; returns when done, raises the scheduler's error if any."""
        assert self._queue is not None, "bind() the request to the event loop before submitting it"
        while True:
            kind, value = await self._queue.get()
            if kind == "text":
                yield value
            elif kind == "error":
                raise value
            else:
                return

    def cancel(self) -> None:
        """Stop generating (the client went away); the scheduler frees the row at its next tick."""
        self.cancelled.set()

    @property
    def prompt_tokens(self) -> int:
        """Number of prompt tokens."""
        return len(self.prompt_ids)


@dataclass
class _Sequence:
    """A request holding a cache row: its text assembly, sampler state and progress."""

    request: GenerationRequest
    row: int
    run: GenerationRun
    generator: torch.Generator | None
    penalties: PenaltyState | None
    prefilled: int = 0
    next_token: int | None = None  # sampled, not yet fed


class Scheduler:
    """Runs the requests of one LLM with continuous batching on a named daemon thread."""

    def __init__(self, llm: Any, *, name: str, max_batch: int, max_queue: int, context: int, prefill_chunk: int,
                 retry_after_s: int = 1, on_finish: Any = None, prefix_cache: bool = True,
                 min_prefix: int = 8) -> None:
        self.llm = llm
        self.prefix_cache = prefix_cache
        self.min_prefix = min_prefix
        self.name = name
        self.context = context
        self.max_queue = max_queue
        self.prefill_chunk = prefill_chunk
        self.retry_after_s = retry_after_s
        self.on_finish = on_finish  # callback(request) for metrics, called on the scheduler thread
        self.decoder = BatchedDecoder(llm, max_batch, context)
        self._pending: collections.deque[GenerationRequest] = collections.deque()
        self._active: dict[int, _Sequence] = {}
        self._free = list(range(max_batch))
        # when each row last served a sequence (a tick count): a new prompt, or the copy of a cached prefix, goes to
        # the least recently used free row, so the rows a burst of repeated prompts finds are the ones it evicts last
        self._used = [0] * max_batch
        self._clock = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._paused = False
        self._thread = threading.Thread(target=self._loop, name=f"arrowengine-serve-{name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ API for the routes
    def submit(self, request: GenerationRequest) -> None:
        """Queue ``request``; raises ``OverloadedError`` when the queue is full or the server stops."""
        with self._cond:
            if self._stopping:
                raise OverloadedError("the server is shutting down; retry on another instance or later",
                                      self.retry_after_s)
            if len(self._pending) >= self.max_queue:
                raise OverloadedError(f"the generation queue of {self.name} is full ({self.max_queue} waiting); "
                                      f"retry after the Retry-After delay", self.retry_after_s)
            request.enqueued_at = time.perf_counter()
            self._pending.append(request)
            self._cond.notify()

    @property
    def queued(self) -> int:
        """Requests waiting for a cache row."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Sequences holding a cache row."""
        return len(self._active)

    @property
    def busy(self) -> bool:
        """True while any request is queued or running."""
        return bool(self._pending or self._active)

    def pause(self) -> None:
        """Hold the batch between steps (queued requests wait, running ones stall) until ``resume``."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Continue after ``pause``."""
        with self._cond:
            self._paused = False
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new requests, let running ones finish for ``timeout`` seconds, then cancel the rest."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            with self._cond:
                for req in [*self._pending, *(s.request for s in self._active.values())]:
                    req.cancel()
                self._cond.notify()
            self._thread.join(5.0)

    # ------------------------------------------------------------------ the thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while (self._paused or not (self._pending or self._active)) and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._pending and not self._active:
                    return
                self._admit()
            try:
                self._tick()
            except Exception as exc:  # a failed step must not kill the server: fail its sequences, go on
                logger.exception("serve: a step of %s failed; failing its %d sequence(s)", self.name,
                                 len(self._active))
                for seq in list(self._active.values()):
                    self._finish(seq, "error", error=exc)

    def _admit(self) -> None:
        while self._pending and self._free:
            req = self._pending.popleft()
            if req.cancelled.is_set():
                req.finish_reason = "cancelled"
                req.emit("done")
                continue
            row, keep = self._row_for(req.prompt_ids)
            self._free.remove(row)
            req.cached_tokens = keep
            req.admitted_at = time.perf_counter()
            p = req.params
            generator = torch.Generator().manual_seed(p.seed) if p.seed is not None else None
            penalties = None
            if p.uses_penalties:
                ids = torch.tensor([req.prompt_ids], dtype=torch.long)
                penalties = PenaltyState(ids, torch.ones_like(ids, dtype=torch.bool), self.llm.forward.spec.vocab_size)
            # GenerationRun is used only for its text assembly (detokenizer + stop strings), never iterated
            run = GenerationRun(self.llm.forward, self.llm.tokenizer, [req.prompt_ids], p, self.llm.stop_token_ids,
                                self.llm.pad_id)
            seq = _Sequence(req, row, run, generator, penalties, prefilled=keep)
            if keep == len(req.prompt_ids) - 1:
                # the row holds all but the prompt's last token (a repeated prompt or a chat's next turn whose
                # history is cached): that token is fed by the next batched decode step, with the running
                # streams, instead of a forward of its own before them
                seq.prefilled, seq.next_token = len(req.prompt_ids), req.prompt_ids[-1]
            self._active[row] = seq

    def _row_for(self, prompt: list[int]) -> tuple[int, int]:
        """(free row, prompt tokens already in its cache), the row's cache set up for the prompt.

        The free row holding the longest prefix of ``prompt`` (at least ``min_prefix`` tokens, never the whole
        prompt: its last token is fed for the logits; among equals the one holding the fewest tokens) is taken. When
        the prompt leaves that row's history inside the prompt (another chat sharing the system prompt), the prefix
        is copied into the least recently used free row instead, so that history stays cached for its own next
        turn. A row holding all of the prompt is taken in place: what it holds past the prompt is an earlier answer
        to the same prompt, which this request replaces. With no such prefix, the least recently used free row.
        Empty rows count as used longest ago; ties go to the row holding the fewest tokens, lowest first.

        Least recently used, not emptiest: with eight cached chats repeated at once, "emptiest" picked rows that
        held the very prompts the same burst was about to ask for, and those had to be prefilled again.
        """
        lengths = self.decoder.lengths
        target = min(self._free, key=lambda row: (self._used[row], lengths[row], row))
        best, keep = target, 0
        if self.prefix_cache:
            for row in self._free:
                common = min(self.decoder.common_prefix(row, prompt), len(prompt) - 1)
                if common >= self.min_prefix and (common, -lengths[row]) > (keep, -lengths[best]):
                    best, keep = row, common
        self._clock += 1
        self._used[best] = self._clock  # a hit counts as a use: the row is worth keeping
        if keep and keep < len(prompt) - 1 and best != target and lengths[best] > keep:
            self.decoder.copy_prefix(best, target, keep)
            self._used[target] = self._clock
            return target, keep
        self.decoder.reset(best, keep)
        return best, keep

    def _tick(self) -> None:
        for seq in list(self._active.values()):
            if seq.request.cancelled.is_set():
                self._finish(seq, "cancelled")
        # prefill up to prefill_chunk prompt tokens per tick, oldest first: several short prompts share one
        # tick (fewer decode steps before the last of them starts), a long one is cut into chunks
        budget = self.prefill_chunk
        prefilling = sorted((s for s in self._active.values() if s.prefilled < len(s.request.prompt_ids)),
                            key=lambda s: s.request.admitted_at or 0.0)
        for seq in prefilling:
            if budget <= 0:
                break
            ids = seq.request.prompt_ids
            chunk = ids[seq.prefilled:seq.prefilled + budget]
            logits = self.decoder.prefill(seq.row, chunk)
            seq.prefilled += len(chunk)
            budget -= len(chunk)
            if seq.prefilled == len(ids):
                self._accept(seq, logits)
        decoding = [s for s in self._active.values() if s.next_token is not None]
        if decoding:
            logits = self.decoder.step([s.row for s in decoding], [s.next_token for s in decoding])
            for i, seq in enumerate(decoding):
                self._accept(seq, logits[i:i + 1])

    def _accept(self, seq: _Sequence, logits: torch.Tensor) -> None:
        req, p = seq.request, seq.request.params
        if seq.run.constraints is not None:  # format= (JSON): the run holds the row's constraint
            token = sample_constrained(logits, p, seq.generator, seq.penalties, seq.run.constraints)
        else:
            token = sample_next(logits, p, seq.generator, seq.penalties)
        if seq.penalties is not None:
            seq.penalties.update(token)
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
        done = torch.zeros(1, dtype=torch.bool)
        last = req.completion_tokens + 1 >= p.max_new_tokens
        piece = seq.run.accept(token.tolist(), done, last=last)[0]
        req.completion_tokens += 1
        if piece:
            req.emit("text", piece)
        row_out = seq.run.rows[0]
        if row_out.finish_reason is not None:
            if row_out.finish_reason == "stop_token":
                req.completion_tokens -= 1  # the stop token is not part of the completion
            req.text = row_out.text
            self._finish(seq, _FINISH[row_out.finish_reason])
        else:
            seq.next_token = int(token)

    def _finish(self, seq: _Sequence, reason: str, error: Exception | None = None) -> None:
        req = seq.request
        req.finish_reason = reason
        req.finished_at = time.perf_counter()
        self._active.pop(seq.row, None)
        self._clock += 1
        self._used[seq.row] = self._clock  # the row now holds this sequence's whole history
        with self._cond:
            self._free.append(seq.row)
            self._free.sort()  # lowest rows first keeps the decode span short
        # Metrics first: a client that reads /metrics right after its reply must find this generation counted.
        if self.on_finish is not None:
            try:
                self.on_finish(req)
            except Exception:
                logger.exception("serve: the on_finish callback failed")
        if error is not None:
            req.emit("error", error)
        else:
            req.emit("done")
