"""The consolidation prompt (``prompts/principles.txt``, shipped with the package) as chat messages."""

from __future__ import annotations

import functools
from importlib import resources

__all__ = ["build_messages", "load_prompt"]

_ROLES = ("system", "user", "assistant")


@functools.cache
def load_prompt(name: str = "principles.txt") -> tuple[tuple[str, str], ...]:
    """The prompt file ``name`` as (role, text) pairs; ``{notes}`` marks where the memories go."""
    raw = resources.files("memory.consolidation").joinpath("prompts", name).read_text(encoding="utf-8")
    messages: list[tuple[str, list[str]]] = []
    for line in raw.splitlines():
        if line.startswith("#"):
            continue
        role = line.strip()[1:-1] if line.strip().startswith("[") and line.strip().endswith("]") else None
        if role in _ROLES:
            messages.append((role, []))
        elif messages:
            messages[-1][1].append(line)
    assert messages and "{notes}" in "\n".join(messages[-1][1]), f"prompt {name} has no {{notes}} slot"
    return tuple((role, "\n".join(lines).strip()) for role, lines in messages)


def build_messages(texts: list[str], max_chars_per_note: int = 300) -> list[dict[str, str]]:
    """Chat messages asking for the principles of ``texts`` (each note cut at ``max_chars_per_note``)."""
    notes = "\n".join("- " + " ".join(t.split())[:max_chars_per_note] for t in texts)
    return [{"role": role, "content": text.replace("{notes}", notes)} for role, text in load_prompt()]
