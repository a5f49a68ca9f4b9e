"""A KV cache with one row per running sequence, and the batched decode step over rows of different lengths.

``LLM``'s own loop runs a fixed batch whose rows share cache slots (left padding); continuous batching
needs rows that join and leave between steps, each at its own length. Here every sequence owns one row
of a ``[layers, rows, 2 * kv_heads, max_len + 1, head_dim]`` cache (the last slot is scratch): a prompt is
prefilled into its row in chunks through ``LlamaForward.forward`` (a view of the row is a ``KVCache`` of
batch 1), and one decode step feeds one token to each decoding row, writing its K/V at that row's own
length and masking the slots past it. Rows in the step's range that are not decoding (free, or still
prefilling) write to the scratch slot, so their cache is never touched.

A row keeps the token ids of its K/V after its sequence ends: the scheduler gives a new sequence the free row
holding the longest prefix of its prompt and prefills only the rest (``reset(row, keep)``), or, when that row
holds a longer different history, a copy of the prefix in another free row (``copy_prefix``).

A lone decoding row goes through the LLM's own single-token step with no mask, which is what
``LLM.generate`` / ``LLM.chat`` run for one prompt: greedy output through the server equals ``LLM.chat``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from arrowengine.runtime.llm.decode import step_tables, torch_step
from arrowengine.runtime.llm.kv_cache import KVCache

__all__ = ["BatchedDecoder"]

logger = logging.getLogger(__name__)


class BatchedDecoder:
    """Per-row KV cache plus ``prefill(row, ids)`` and ``step(rows, tokens)`` over an ``LLM``.

    ``rows`` sequences of up to ``max_len`` tokens each. Cache pages are allocated lazily by the OS
    (``torch.empty``), so memory grows with the tokens actually held, not with ``rows * max_len``.
    """

    def __init__(self, llm: Any, rows: int, max_len: int) -> None:
        fwd = llm.forward
        self.forward = fwd
        self.rows = rows
        self.max_len = max_len
        self.cache = fwd.new_cache(rows, max_len + 1)
        self.row_caches = [KVCache(self.cache.kv[:, r:r + 1]) for r in range(rows)]
        self.lengths = [0] * rows
        # the token ids whose K/V row r holds (its first lengths[r] slots): a new sequence whose prompt starts
        # with them keeps that prefix instead of prefilling it again (a repeated system prompt / chat history)
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        # slots below clean[r] of row r hold finite values: a masked slot still enters attention as 0 * value,
        # and the uninitialised memory of torch.empty may hold NaN bit patterns (0 * NaN = NaN)
        self._clean = [0] * rows
        # the LLM's own one-token step when it has one (exact parity with LLM.chat); else its general forward
        self._single: Callable[..., torch.Tensor] = getattr(llm, "decode_step", None) or fwd.forward
        self._cos, self._sin_signed, self._layers = step_tables(fwd)  # the tables DecodeStep uses

    def reset(self, row: int, keep: int = 0) -> None:
        """Forget the tokens of ``row`` after its first ``keep`` (a new sequence takes it, reusing that prefix)."""
        if not 0 <= keep <= self.lengths[row]:
            raise ValueError(f"row {row} holds {self.lengths[row]} tokens; cannot keep {keep}")
        self.lengths[row] = keep
        del self.tokens[row][keep:]

    def copy_prefix(self, source: int, target: int, keep: int) -> None:
        """Make ``target`` hold the first ``keep`` tokens of ``source`` (their K/V copied; ``source`` keeps all of
        its own): a request sharing only a prefix with a cached row starts from a copy and leaves that row's longer
        history for its own next turn."""
        if not 0 <= keep <= self.lengths[source]:
            raise ValueError(f"row {source} holds {self.lengths[source]} tokens; cannot copy {keep}")
        self.cache.kv[:, target, :, :keep].copy_(self.cache.kv[:, source, :, :keep])
        self.lengths[target] = keep
        self.tokens[target] = self.tokens[source][:keep]
        self._clean[target] = max(self._clean[target], keep)

    def _hold(self, row: int, ids: Sequence[int]) -> None:
        """Record that ``row``'s cache now also holds the K/V of ``ids`` (written at its next slots)."""
        self.lengths[row] += len(ids)
        self.tokens[row].extend(int(i) for i in ids)
        self._clean[row] = max(self._clean[row], self.lengths[row])

    def common_prefix(self, row: int, ids: Sequence[int]) -> int:
        """How many leading ``ids`` row ``row`` already holds the K/V of."""
        held = self.tokens[row]
        count = 0
        for a, b in zip(held, ids, strict=False):
            if a != b:
                break
            count += 1
        return count

    @torch.inference_mode()
    def prefill(self, row: int, ids: Sequence[int]) -> torch.Tensor:
        """Append ``ids`` to ``row`` (one chunk of its prompt); returns fp32 next-token logits ``[1, vocab]``."""
        start = self.lengths[row]
        if start + len(ids) > self.max_len:
            raise ValueError(f"row {row} holds {start} tokens; {len(ids)} more overflow its {self.max_len} slots")
        device = self.forward.device
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=device)
        positions = torch.arange(start, start + len(ids), device=device)[None]
        logits = self.forward.forward(tokens, positions, self.row_caches[row], start, None)[:, -1]
        self._hold(row, ids)
        return logits

    @torch.inference_mode()
    def step(self, rows: Sequence[int], tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens[i]`` to ``rows[i]`` at each row's own position; returns fp32 logits ``[len(rows), vocab]``."""
        device = self.forward.device
        if len(rows) == 1:
            row = rows[0]
            slot = self.lengths[row]
            feed = torch.tensor([[tokens[0]]], dtype=torch.long, device=device)
            pos = torch.tensor([[slot]], dtype=torch.long, device=device)
            logits = self._single(feed, pos, self.row_caches[row], slot, None)[:, -1]
            self._hold(row, tokens[:1])
            return logits
        native = getattr(self._single, "native", None)
        if native is not None:  # a GGUF block model: one C call per layer, each row at its own length
            lengths = torch.tensor([self.lengths[r] for r in rows], dtype=torch.long)
            logits = native.rows(torch.tensor(list(tokens), dtype=torch.long), torch.tensor(list(rows)), lengths,
                                 self.cache.layers)[:, -1]
            for row, tok in zip(rows, tokens, strict=True):
                self._hold(row, [tok])
            return logits
        span = max(rows) + 1  # rows 0..span-1 run (a view of the cache); the ones not in `rows` idle
        feed = torch.full((span,), int(tokens[0]), dtype=torch.long)
        write = torch.full((span,), self.max_len, dtype=torch.long)  # idle rows write to the scratch slot
        pos = torch.zeros(span, dtype=torch.long)
        for row, tok in zip(rows, tokens, strict=True):
            feed[row], write[row], pos[row] = int(tok), self.lengths[row], self.lengths[row]
        end = int(write[list(rows)].max()) + 1
        for row in range(span):
            if self._clean[row] < end:
                self.cache.kv[:, row, :, self._clean[row]:end].zero_()
                self._clean[row] = end
        # a decoding row sees its own slots 0..length; an idle row sees slot 0 only (its output is dropped)
        limit = torch.where(write == self.max_len, 0, write)
        mask = (torch.arange(end)[None, :] <= limit[:, None])[:, None, None, :]
        logits = self._batched(feed.to(device), pos.to(device), write.to(device), mask.to(device), end)
        for row, tok in zip(rows, tokens, strict=True):
            self._hold(row, [tok])
        return logits[list(rows)]

    def _batched(self, tokens: torch.Tensor, pos: torch.Tensor, write: torch.Tensor, mask: torch.Tensor,
                 end: int) -> torch.Tensor:
        return torch_step(self.forward, self._layers, self._cos, self._sin_signed, tokens, pos, self.cache.layers,
                          write, end, mask)
