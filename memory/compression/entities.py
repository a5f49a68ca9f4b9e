"""Key-entity extraction without a parser: dates, times, numbers, names and places by regex and capitalisation.

The extractor keeps each entity's exact surface form, in order of first appearance, without duplicates, so
"were all the original's entities kept" is a plain substring test on the reconstruction.
"""

from __future__ import annotations

import re

__all__ = ["entity_retention", "extract_entities"]

_MONTHS = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|Sep(?:t(?:ember)?)?"
    r"|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)"
)
_WEEKDAYS = r"(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day"
_ORD = r"(?:st|nd|rd|th)"

# order matters: the longest, most specific patterns claim their spans first
_PATTERNS = [
    ("date", r"\b\d{4}-\d{2}-\d{2}\b"),
    ("date", r"\b\d{1,2}/\d{1,2}(?:/\d{2,4})?\b"),
    ("date", rf"\b{_MONTHS}\.?\s+\d{{1,2}}{_ORD}?(?:,?\s+\d{{4}})?\b"),
    ("date", rf"\b\d{{1,2}}{_ORD}?\s+(?:of\s+)?{_MONTHS}\b(?:,?\s+\d{{4}})?"),
    ("time", r"\b\d{1,2}:\d{2}(?:\s?[aApP]\.?[mM]\.?)?"),
    ("time", r"\b\d{1,2}\s?[aApP]\.?[mM]\b"),
    ("date", rf"\b{_WEEKDAYS}s?\b"),
    ("date", rf"\b{_MONTHS}\b(?!\w)"),
    ("number", r"[$€£]?\b\d+(?:[.,]\d+)*(?:%|k\b|K\b)?"),
]
_CAPITALISED = re.compile(r"\b[A-Z][\w'’&-]*(?:[ \t]+(?:of[ \t]+|de[ \t]+|the[ \t]+)?[A-Z][\w'’&-]*)*")
_LOWER_WORD = re.compile(r"\b[a-z][a-z'’]*\b")
_JOINED_NAME = re.compile(r"\s+(?:and|&|or)\s+[A-Z]")
_SENTENCE_START = re.compile(r"(?:^|[.!?:;\"()\n]\s*|\s{2,})$")
# words capitalised in chat for reasons other than being a name
_NOT_NAMES = frozenset(
    "I I'm I’m I'll I've I'd Im Ive Id Ill OK Ok Okay LOL Lol OMG Omg BTW IDK TBH LMAO Haha Hahaha Yes No Oh "
    "Yeah Hi Hey Hello Thanks Thank Well So And But The A An It It's That This What How Why When Where Who "
    "Mr Mrs Ms Dr".split()
)


def _is_name(candidate: str, text: str, start: int) -> bool:
    words = candidate.split()
    if len(words) == 1 and (candidate.rstrip(".") in _NOT_NAMES or len(candidate) < 2):
        return False
    # a capitalised word opening a sentence says nothing unless it recurs, spans several capitalised words,
    # or is joined to a name ("Alice and Bob")
    if _SENTENCE_START.search(text[:start]) and len(words) == 1:
        return bool(_JOINED_NAME.match(text, start + len(candidate)))
    return True


def extract_entities(text: str) -> list[str]:
    """Dates, times, numbers and capitalised names/places in ``text``, exact strings, first occurrence first.

    A capitalised word the same text also writes in lower case ("NOT"/"not", "Imagine"/"imagine") is taken
    for a common word, not a name.
    """
    taken = [False] * len(text)
    found: list[tuple[int, str]] = []
    for _, pattern in _PATTERNS:
        for m in re.finditer(pattern, text):
            if not any(taken[m.start():m.end()]):
                taken[m.start():m.end()] = [True] * (m.end() - m.start())
                found.append((m.start(), m.group().strip()))
    lower_words = set(_LOWER_WORD.findall(text))
    for m in _CAPITALISED.finditer(text):
        candidate = m.group().rstrip("'’-&")
        if any(taken[m.start():m.start() + len(candidate)]) or not candidate:
            continue
        # drop leading/trailing pronoun-like words ("Yes Paris", "Hopefully I"), and a sentence-opening word the
        # text also uses in lower case ("Because", "Also"): a common word, not part of a name
        words = candidate.split()
        while words and words[0] in _NOT_NAMES:
            words.pop(0)
        while words and words[-1] in _NOT_NAMES:
            words.pop()
        if len(words) > 1 and words[0].lower() in lower_words and _SENTENCE_START.search(
                text[:m.start() + m.group().find(words[0])]):
            words.pop(0)
        if not words or (len(words) == 1 and words[0].lower() in lower_words):
            continue
        candidate = " ".join(words)
        start = m.start() + m.group().find(words[0])
        if _is_name(candidate, text, start):
            found.append((start, candidate))
    seen: set[str] = set()
    ordered: list[str] = []
    for _, entity in sorted(found):
        if entity and entity not in seen:
            seen.add(entity)
            ordered.append(entity)
    return ordered


def entity_retention(entities: list[str] | tuple[str, ...], reconstruction: str) -> float:
    """Fraction of ``entities`` found verbatim in ``reconstruction`` (1.0 when there are none)."""
    if not entities:
        return 1.0
    return sum(e in reconstruction for e in entities) / len(entities)
