"""Chat prompts from the tokenizer's own chat template, with history truncated to fit the context window.

Truncation keeps the leading system message(s) and the newest turns: the oldest turns go first, and a
history never starts with an assistant turn (it would answer a question the model cannot see).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from arrowengine.runtime.llm.errors import ContextOverflowError, InvalidPromptError

__all__ = ["render_chat", "validate_messages"]

logger = logging.getLogger(__name__)


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Check that ``messages`` is a non-empty list of ``{"role", "content"}`` dicts; return plain dicts."""
    if isinstance(messages, (str, bytes)) or not messages:
        raise InvalidPromptError('chat() needs a non-empty list of {"role": ..., "content": ...} messages')
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise InvalidPromptError(f'chat message {i} is {msg!r}; each message needs "role" and "content" keys')
        out.append({"role": str(msg["role"]), "content": str(msg["content"])})
    return out


def _encode(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # the template already holds the special tokens; the tokenizer must not add a second BOS
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]], max_prompt_tokens: int
                ) -> tuple[list[int], int]:
    """Token ids of the chat prompt and the number of dropped messages, within ``max_prompt_tokens``."""
    msgs = validate_messages(messages)
    n_system = 0
    while n_system < len(msgs) and msgs[n_system]["role"] == "system":
        n_system += 1
    system, turns = msgs[:n_system], msgs[n_system:]
    if not turns:
        raise InvalidPromptError("chat() needs at least one user message after the system message(s)")

    def build(first: int) -> list[int]:
        kept = turns[first:]
        while len(kept) > 1 and kept[0]["role"] == "assistant":
            kept = kept[1:]
        return _encode(tokenizer, system + kept)

    ids = build(0)
    if len(ids) <= max_prompt_tokens:
        return ids, 0
    # fewer turns -> fewer tokens, so binary-search the oldest turn that can stay
    lo, hi = 1, len(turns) - 1
    best: tuple[int, list[int]] | None = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = build(mid)
        if len(candidate) <= max_prompt_tokens:
            best, hi = (mid, candidate), mid - 1
        else:
            lo = mid + 1
    if best is None:
        newest = len(build(len(turns) - 1))
        raise ContextOverflowError(
            f"the system message plus the newest chat turn take {newest} tokens, more than the "
            f"{max_prompt_tokens} the context window leaves for the prompt; shorten them or lower max_new_tokens")
    first, ids = best
    kept = turns[first:]
    while len(kept) > 1 and kept[0]["role"] == "assistant":
        first, kept = first + 1, kept[1:]
    logger.info("chat: dropped the %d oldest message(s) to fit %d prompt tokens", first, max_prompt_tokens)
    return ids, first
