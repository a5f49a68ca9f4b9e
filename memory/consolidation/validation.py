"""Checking an LLM answer before anything is written: JSON, schema, length and relevance.

A rejected answer writes nothing and archives nothing; its reason goes to the journal and the run log:
``empty answer``, ``non-JSON answer``, ``wrong JSON shape (...)``, ``principle longer than its sources``,
``off-topic principle (cosine ...)`` (every principle is off-topic; off-topic principles beside an on-topic one
are dropped, and only the on-topic ones are written).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import numpy as np

__all__ = ["ANSWER_SCHEMA", "Verdict", "answer_format", "check_answer", "parse_json_object"]

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["principles"],
    "properties": {
        "principles": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 3},
        },
    },
}


def answer_format(max_tokens: int) -> dict[str, Any]:
    """:data:`ANSWER_SCHEMA` tightened for constrained decoding (Ollama ``format``): few enough principles, short
    enough, that a whole answer fits ``max_tokens`` (~3 characters a token) and is never cut off mid-string."""
    items = 2 if max_tokens < 160 else 3
    length = max(20, min(200, (max_tokens - 16) * 3 // items))
    principles = {**ANSWER_SCHEMA["properties"]["principles"], "maxItems": items,
                  "items": {**ANSWER_SCHEMA["properties"]["principles"]["items"], "maxLength": length}}
    return {**ANSWER_SCHEMA, "properties": {"principles": principles}}


@dataclass(frozen=True)
class Verdict:
    """The accepted principles, or why the answer was rejected (``reason`` None when accepted)."""

    principles: tuple[str, ...] = ()
    reason: str | None = None
    repaired: bool = False  # the answer was not one valid JSON object; its principles array was

    @property
    def accepted(self) -> bool:
        """True when the answer yields principles to write."""
        return self.reason is None and bool(self.principles)


_PRINCIPLES_KEY = re.compile(r'"principles"\s*:\s*(?=\[)')


def parse_json_object(answer: str) -> tuple[Any, bool]:
    """The first JSON object in ``answer`` (code fences and text around it ignored) and whether it had to be
    repaired: when the object itself does not parse (cut at a stop sequence, junk before its closing brace), the
    JSON array after its ``"principles":`` key is taken as ``{"principles": [...]}``. ValueError if neither."""
    decoder = json.JSONDecoder()
    start = answer.find("{")
    if start >= 0:
        try:
            return decoder.raw_decode(answer[start:])[0], False
        except ValueError:
            pass
    key = _PRINCIPLES_KEY.search(answer)
    if key is None:
        raise ValueError("no JSON object")
    return {"principles": decoder.raw_decode(answer[key.end():])[0]}, True


def check_answer(answer: str, sources: list[str], centroid: np.ndarray, embed: Callable[[list[str]], np.ndarray],
                 *, max_principles: int, min_relevance: float) -> Verdict:
    """Validate ``answer`` for the cluster of ``sources`` (whose mean embedding is ``centroid``)."""
    if not answer or not answer.strip():
        return Verdict(reason="empty answer")
    try:
        obj, repaired = parse_json_object(answer)
    except ValueError:
        return Verdict(reason=f"non-JSON answer: {answer.strip()[:80]!r}")
    try:
        jsonschema.validate(obj, ANSWER_SCHEMA)
    except jsonschema.ValidationError as exc:
        return Verdict(reason=f"wrong JSON shape ({exc.message[:120]})", repaired=repaired)
    principles = list(dict.fromkeys(" ".join(p.split()) for p in obj["principles"] if p.strip()))[:max_principles]
    if not principles:
        return Verdict(reason="empty answer (no principle text)", repaired=repaired)
    source_chars = sum(len(s) for s in sources)
    if sum(len(p) for p in principles) > source_chars:
        return Verdict(reason=f"principle longer than its sources ({sum(len(p) for p in principles)} > "
                              f"{source_chars} characters)", repaired=repaired)
    vectors = embed(principles)
    norm = float(np.linalg.norm(centroid)) or 1.0
    cosines = vectors @ (centroid / norm)
    # an off-topic principle is dropped, not written; the answer counts only if one about the sources remains
    kept = tuple(p for p, c in zip(principles, cosines.tolist(), strict=True) if c >= min_relevance)
    if not kept:
        return Verdict(reason=f"off-topic principle (cosine {float(cosines.max()):.2f} to its sources < "
                              f"{min_relevance})", repaired=repaired)
    return Verdict(principles=kept, repaired=repaired)
