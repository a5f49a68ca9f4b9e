"""Perplexity of a text under the model, with a sliding window for texts longer than the context.

Each window of ``window`` tokens advances by ``stride``; only the tokens a window adds beyond the previous
one are scored, so every token after the first is scored exactly once, with up to ``window - stride``
tokens of left context (the strided evaluation of the transformers perplexity guide); a window starts at
most one token before its first scored token, so ``stride == window`` scores every token too. The result is
``exp(sum of token NLLs / number of scored tokens)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from arrowengine.runtime.llm.errors import InvalidPromptError
from arrowengine.runtime.llm.llama import LlamaForward

__all__ = ["perplexity_of_ids", "window_plan"]


def window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_scored)`` per window: tokens ``first_scored..end-1`` are predicted in it."""
    if window < 2 or not 1 <= stride <= window:
        raise InvalidPromptError(f"perplexity needs window >= 2 and 1 <= stride <= window; got window={window}, "
                         f"stride={stride}")
    plan, prev_end = [], 1  # token 0 has no context: never scored
    for start in range(0, n_tokens, stride):
        # a window must hold the token before its first scored one (stride == window would skip it)
        begin = min(start, prev_end - 1)
        end = min(begin + window, n_tokens)
        if end > prev_end:
            plan.append((begin, end, prev_end))
            prev_end = end
        if end == n_tokens:
            break
    return plan


@torch.inference_mode()
def perplexity_of_ids(model: LlamaForward, ids: list[int], window: int, stride: int) -> float:
    """``exp(mean NLL)`` of ``ids[1:]`` given their left context, window by window."""
    if len(ids) < 2:
        raise InvalidPromptError(f"perplexity needs a text of at least 2 tokens; this one has {len(ids)}")
    tokens = torch.tensor(ids, dtype=torch.long, device=model.device)
    total, count = 0.0, 0
    for begin, end, first in window_plan(len(ids), window, stride):
        chunk = tokens[begin:end][None]
        positions = torch.arange(end - begin, device=model.device)[None]
        cache = model.new_cache(1, end - begin)
        logits = model.forward(chunk, positions, cache, 0, None, last_only=False)[0]
        # logits at i predict token i+1; score targets first..end-1
        pred = logits[first - begin - 1:end - begin - 1]
        total += float(F.cross_entropy(pred, tokens[first:end], reduction="sum"))
        count += end - first
    return math.exp(total / count)
