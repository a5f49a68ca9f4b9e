"""Real chat conversations from the ``chitchat-dataset`` package: the one loader of the project.

The package (an optional dependency, extra ``data``) ships about 7,000 human chat conversations as one
JSON file; nothing is downloaded at run time. Benchmarks, evaluation scripts, tests and calibration
defaults read it through this module, so its shape is interpreted in one place:
``{conversation id: {"messages": [turn, ...]}}`` where a turn is a list of ``{"text", "sender"}`` messages
sent in a row by one person.
"""

from __future__ import annotations

import functools
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from arrowengine.errors import OptionalDependencyError

__all__ = ["CHITCHAT_MODULE", "ChatTurn", "chitchat_conversations", "chitchat_messages", "chitchat_turns"]

CHITCHAT_MODULE = "chitchat_dataset"
_INSTALL_HINT = "pip install 'arrowengine[data]' (or pip install chitchat-dataset==0.9.0)"


@dataclass(frozen=True)
class ChatTurn:
    """Messages one person sent in a row, exactly as stored (``texts`` may hold empty strings)."""

    sender: str
    texts: tuple[str, ...]

    @property
    def text(self) -> str:
        """The turn's messages joined by single spaces, unstripped."""
        return " ".join(self.texts)


@functools.cache
def _dataset_json() -> Path:
    spec = importlib.util.find_spec(CHITCHAT_MODULE)
    if spec is None or spec.origin is None:
        raise OptionalDependencyError(f"the chitchat-dataset package (real chat conversations) is not installed; "
                                      f"{_INSTALL_HINT}")
    return Path(spec.origin).parent / "dataset.json"


@functools.cache
def chitchat_turns() -> tuple[tuple[ChatTurn, ...], ...]:
    """Every conversation as its non-empty turns, in the package's order (parsed once per process: 40 MB).

    Raises:
        OptionalDependencyError: chitchat-dataset is not installed (the message says how to install it).
    """
    data = json.loads(_dataset_json().read_text(encoding="utf-8"))
    return tuple(
        tuple(ChatTurn(turn[0]["sender"], tuple(m["text"] for m in turn)) for turn in conv["messages"] if turn)
        for conv in data.values()
    )


@functools.cache
def chitchat_conversations() -> tuple[tuple[str, ...], ...]:
    """Every conversation as its stripped non-empty messages; conversations without any are left out."""
    out = []
    for conv in chitchat_turns():
        messages = tuple(t.strip() for turn in conv for t in turn.texts if t.strip())
        if messages:
            out.append(messages)
    return tuple(out)


def chitchat_messages(limit: int | None = None) -> list[str]:
    """The stripped non-empty messages of all conversations in order, the first ``limit`` when given."""
    out = [m for conv in chitchat_conversations() for m in conv]
    return out if limit is None else out[:limit]
