"""The generation loop: left-padded batched prefill, then one decode step per token over the KV cache.

Rows of different lengths are left-padded; each row gets its own positions (0 at its first real token)
and a key mask that hides its padding, as ``transformers.generate`` does, so greedy tokens match it. A
row stops on its own (stop token, stop string, ``max_new_tokens``); finished rows keep feeding a pad token
until every row is done, so the batch shape never changes mid-run.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from arrowengine.runtime.llm.detokenize import IncrementalDetokenizer, StopStringMatcher
from arrowengine.runtime.llm.json_constraint import JsonConstraint
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.sampling import PenaltyState, SamplingParams, sample_constrained, sample_next

__all__ = ["GenerationRun", "RowOutput"]

logger = logging.getLogger(__name__)

DecodeStep = Callable[[torch.Tensor, torch.Tensor, Any, int, "torch.Tensor | None"], torch.Tensor]


@dataclass
class RowOutput:
    """What one prompt produced: the text (stop string excluded), its token ids and why it ended."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None  # "stop_token" | "stop_string" | "length"
    emitted: int = 0  # characters of ``text`` already yielded to a stream


class GenerationRun:
    """One batched generation; iterate it to get, per step, the new text of each row."""

    def __init__(self, model: LlamaForward, tokenizer: Any, prompts: list[list[int]], params: SamplingParams,
                 stop_token_ids: set[int], pad_id: int, decode_step: DecodeStep | None = None) -> None:
        self.model = model
        self.params = params
        self.eos_ids = set() if params.ignore_eos else set(stop_token_ids)
        self.stop_ids = self.eos_ids | set(params.stop_token_ids)
        self.pad_id = pad_id
        self.decode_step = decode_step or model.forward
        self.rows = [RowOutput() for _ in prompts]
        self._detok = [IncrementalDetokenizer(tokenizer) for _ in prompts]
        self._text = [""] * len(prompts)
        self._matcher = StopStringMatcher(params.stop)
        self._prompts = prompts
        self.constraints = None if params.json_schema is None else [
            JsonConstraint(tokenizer, json.loads(params.json_schema), set(stop_token_ids) | self.stop_ids)
            for _ in prompts]
        self.prefill_seconds = 0.0
        self.decode_steps = 0

    def __iter__(self) -> Iterator[list[str]]:
        model, params = self.model, self.params
        device = model.device
        bsz, width = len(self._prompts), max(len(p) for p in self._prompts)
        tokens = torch.full((bsz, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros(bsz, width, dtype=torch.bool)
        for r, ids in enumerate(self._prompts):
            tokens[r, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
            valid[r, width - len(ids):] = True
        tokens, valid = tokens.to(device), valid.to(device)
        padded = not bool(valid.all())
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        max_len = width + params.max_new_tokens
        cache = model.new_cache(bsz, max_len)
        # key validity per cache slot: prompt padding is invalid forever, generated slots are valid
        key_valid = torch.ones(bsz, max_len, dtype=torch.bool, device=device)
        key_valid[:, :width] = valid
        mask = _prefill_mask(valid) if padded else None
        generator = None
        if params.seed is not None:
            generator = torch.Generator(device=device).manual_seed(params.seed)
        penalties = PenaltyState(tokens, valid, model.spec.vocab_size) if params.uses_penalties else None

        logits = model.forward(tokens, positions, cache, 0, mask)[:, -1]
        next_pos = positions[:, -1] + 1
        done = torch.zeros(bsz, dtype=torch.bool)
        for step in range(params.max_new_tokens):
            if self.constraints is not None:
                chosen = sample_constrained(logits, params, generator, penalties, self.constraints)
            else:
                chosen = sample_next(logits, params, generator, penalties)
            if penalties is not None:
                penalties.update(chosen)
            chosen_list = chosen.tolist()
            yield self.accept(chosen_list, done, last=step == params.max_new_tokens - 1)
            if bool(done.all()):
                return
            slot = width + step
            feed = torch.tensor([[self.pad_id if done[r] else t] for r, t in enumerate(chosen_list)],
                                dtype=torch.long, device=device)
            step_mask = key_valid[:, None, None, :slot + 1] if padded else None
            logits = self.decode_step(feed, next_pos[:, None], cache, slot, step_mask)[:, -1]
            next_pos = next_pos + 1
            self.decode_steps += 1

    def accept(self, chosen: list[int], done: torch.Tensor, *, last: bool) -> list[str]:
        """Record one token per unfinished row; return each row's newly emittable text.

        The hook for a driver that runs its own decode steps (the server's continuous batching): it sets
        ``finish_reason`` on rows that stop and keeps the detokenised text in step with ``generate``.
        """
        pieces = []
        for r, tok in enumerate(chosen):
            row = self.rows[r]
            if row.finish_reason is not None:
                pieces.append("")
                continue
            if tok in self.stop_ids:
                row.finish_reason = "stop_token"
            else:
                row.token_ids.append(tok)
                before = len(self._text[r])
                self._text[r] += self._detok[r].push(tok)
                hit = self._matcher.find(self._text[r], before)
                if hit >= 0:
                    self._text[r] = self._text[r][:hit]
                    row.finish_reason = "stop_string"
                elif last:
                    row.finish_reason = "length"
            if row.finish_reason in ("stop_token", "length"):
                tail = self._detok[r].flush()  # a partial character at the very end: emit what decode gives
                hit = self._matcher.find(self._text[r] + tail, len(self._text[r]))
                self._text[r] = (self._text[r] + tail)[:hit] if hit >= 0 else self._text[r] + tail
            row.text = self._text[r]
            safe = len(row.text) if row.finish_reason else self._matcher.safe_length(row.text)
            pieces.append(row.text[row.emitted:safe])
            row.emitted = max(row.emitted, safe)
            if row.finish_reason is not None:
                done[r] = True
        return pieces


def _prefill_mask(valid: torch.Tensor) -> torch.Tensor:
    """``[B, 1, T, T]`` causal mask that hides left padding; pad queries see themselves (no NaN rows)."""
    width = valid.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=valid.device).tril()
    mask = causal[None] & valid[:, None, :]
    mask |= torch.eye(width, dtype=torch.bool, device=valid.device)[None]
    return mask[:, None]
