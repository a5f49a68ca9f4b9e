"""Sampling parameters and the logits -> next-token pipeline.

Order per step: penalties (repetition, presence, frequency) -> greedy argmax when ``temperature == 0``,
else temperature -> top-k -> top-p -> min-p -> a draw from the seeded generator.
The repetition penalty looks at prompt and generated tokens (as transformers and vLLM do); presence and
frequency penalties count generated tokens only (as the OpenAI API and vLLM define them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from arrowengine.errors import ConfigError
from arrowengine.runtime.llm.errors import SamplingConfigError

if TYPE_CHECKING:
    from arrowengine.runtime.llm.json_constraint import JsonConstraint

__all__ = [
    "PenaltyState",
    "SamplingParams",
    "apply_frequency_penalty",
    "apply_min_p",
    "apply_presence_penalty",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "greedy",
    "sample_constrained",
    "sample_next",
]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. ``temperature=0`` means greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)
    ignore_eos: bool = False
    # constrain the output to JSON: a schema (dict or its JSON text), "json" / {} for any JSON object. Tokens are
    # chosen among those that keep the text a valid prefix (temperature applies; top-k/p and min-p do not)
    json_schema: str | None = None

    def __post_init__(self) -> None:
        # accept a single string / lists from callers, store tuples (the dataclass stays hashable)
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        object.__setattr__(self, "stop", stop)
        if self.json_schema is not None:
            from arrowengine.runtime.llm.json_constraint import parse_format

            try:
                schema = parse_format(self.json_schema)
            except ConfigError as exc:
                raise SamplingConfigError(f"SamplingParams.json_schema: {exc}") from exc
            object.__setattr__(self, "json_schema", None if schema is None else json.dumps(schema, sort_keys=True))
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        checks = [
            ("max_new_tokens", self.max_new_tokens >= 1, "an integer >= 1"),
            ("temperature", self.temperature >= 0 and math.isfinite(self.temperature), "a finite float >= 0"),
            ("top_k", self.top_k >= 0, "an integer >= 0 (0 disables it)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("min_p", 0 <= self.min_p < 1, "in [0, 1)"),
            ("repetition_penalty", self.repetition_penalty > 0, "a float > 0 (1 disables it)"),
        ]
        for name, ok, allowed in checks:
            if not ok:
                raise SamplingConfigError(f"SamplingParams.{name}={getattr(self, name)!r} is invalid; use {allowed}")
        if any(s == "" for s in stop):
            raise SamplingConfigError("SamplingParams.stop contains an empty string; remove it")

    def with_overrides(self, **overrides: Any) -> SamplingParams:
        """A copy with the given fields replaced (validated again)."""
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            raise SamplingConfigError(f"unknown sampling parameter(s) {unknown}; "
                                      f"valid: {sorted(self.__dataclass_fields__)}")
        return replace(self, **overrides)

    @property
    def uses_penalties(self) -> bool:
        """True when any penalty changes the logits."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Seen tokens' positive logits are divided by ``penalty``, negative ones multiplied (CTRL / transformers)."""
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_presence_penalty(logits: torch.Tensor, counts: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` once from every token generated at least once."""
    return logits - penalty * (counts > 0).to(logits.dtype)


def apply_frequency_penalty(logits: torch.Tensor, counts: torch.Tensor, penalty: float) -> torch.Tensor:
    """Subtract ``penalty`` times the number of times each token was generated."""
    return logits - penalty * counts.to(logits.dtype)


def apply_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` highest logits per row (ties with the k-th kept too), the rest become ``-inf``."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, -math.inf)


def apply_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (at least one token)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, -math.inf)


def apply_min_p(logits: torch.Tensor, min_p: float) -> torch.Tensor:
    """Drop tokens whose probability is below ``min_p`` times the most likely token's probability."""
    if min_p <= 0.0:
        return logits
    probs = logits.softmax(dim=-1)
    threshold = min_p * probs.max(dim=-1, keepdim=True).values
    return logits.masked_fill(probs < threshold, -math.inf)


class PenaltyState:
    """Per-row token statistics the penalties need: ``seen`` (prompt + generated) and generated ``counts``."""

    def __init__(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, vocab_size: int) -> None:
        bsz = prompt_ids.shape[0]
        self.seen = torch.zeros(bsz, vocab_size, dtype=torch.bool, device=prompt_ids.device)
        self.seen.scatter_(1, prompt_ids.masked_fill(~prompt_mask, 0), prompt_mask)
        self.counts = torch.zeros(bsz, vocab_size, dtype=torch.int32, device=prompt_ids.device)

    def update(self, tokens: torch.Tensor) -> None:
        """Record one generated token per row (``tokens [B]``)."""
        self.seen.scatter_(1, tokens[:, None], True)
        self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None], dtype=torch.int32))

    def apply(self, logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The logits with every active penalty applied."""
        if params.repetition_penalty != 1.0:
            logits = apply_repetition_penalty(logits, self.seen, params.repetition_penalty)
        if params.presence_penalty != 0.0:
            logits = apply_presence_penalty(logits, self.counts, params.presence_penalty)
        if params.frequency_penalty != 0.0:
            logits = apply_frequency_penalty(logits, self.counts, params.frequency_penalty)
        return logits


def sample_constrained(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                       penalties: PenaltyState | None, constraints: Sequence[JsonConstraint]) -> torch.Tensor:
    """Like :func:`sample_next`, each row's token chosen (and recorded) by its JSON constraint."""
    if penalties is not None:
        logits = penalties.apply(logits, params)
    chosen = [c.choose(logits[r], params.temperature, generator) for r, c in enumerate(constraints)]
    for c, token in zip(constraints, chosen, strict=True):
        c.advance(token)
    return torch.tensor(chosen, dtype=torch.long)


def greedy(logits: torch.Tensor) -> torch.Tensor:
    """The index of each row's largest logit (the first on ties, as ``torch.argmax``); ``[B]`` int64."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32 and not logits.requires_grad:
        # torch's CPU argmax over a 49k vocabulary took ~120 us a row here, numpy's ~6 us: at 8 streams that was
        # 4 ms of every ~40 ms decode step in the server
        return torch.from_numpy(logits.numpy().argmax(axis=-1).astype(np.int64))
    return logits.argmax(dim=-1)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                penalties: PenaltyState | None = None) -> torch.Tensor:
    """Pick one token per row from fp32 ``logits [B, vocab]``; returns ``[B]`` int64."""
    if penalties is not None:
        logits = penalties.apply(logits, params)
    if params.temperature == 0.0:
        return greedy(logits)
    logits = logits / params.temperature
    logits = apply_top_k(logits, params.top_k)
    logits = apply_top_p(logits, params.top_p)
    logits = apply_min_p(logits, params.min_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]
