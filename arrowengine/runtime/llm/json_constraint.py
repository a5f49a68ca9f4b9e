"""Constrained decoding to JSON (Ollama's ``format``): every generated prefix stays valid JSON for a schema.

:func:`check_prefix` parses a text and says whether it is a valid prefix of a JSON value matching a schema
subset (``type`` object / array / string / number / integer / boolean / null, ``properties``, ``required``,
``items``, ``minItems``, ``maxItems``, ``minLength``, ``maxLength``, ``enum`` of strings; no schema: any JSON
value whose top level is an object, as Ollama's ``format: "json"``). Objects with ``properties`` admit only
those keys; a closing ``}`` waits for every ``required`` key, a closing ``]`` for ``minItems``.

:class:`JsonConstraint` picks each token as the sampler would, but among the tokens that keep the text a valid
prefix (candidates in order of logit, so greedy decoding checks only a few), and allows end of sequence only
once the value is complete. A value is complete when its closing bracket arrives; runs of whitespace are capped
(24 characters, one line break) and the text starts with the value itself, so a small model cannot spend its
tokens on blank lines.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from arrowengine.errors import ConfigError

__all__ = ["JsonConstraint", "check_prefix", "parse_format"]

_MAX_WS = 24  # consecutive whitespace characters allowed between tokens of the JSON text (indentation)
_MAX_NEWLINES = 1  # newlines allowed in one whitespace run: no blank lines
_WS = " \t\n\r"


class _Incomplete(Exception):
    """The text ended inside a value that may still become valid."""


class _Invalid(Exception):
    """No continuation of the text is valid."""


def parse_format(value: Any) -> dict[str, Any] | None:
    """Ollama's ``format`` field as a schema dict (``"json"`` -> ``{}``), None when absent.

    Raises:
        ConfigError: neither ``"json"`` nor a JSON-schema object (or its JSON text).
    """
    if value is None or value == "":
        return None
    if value == "json":
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f'format must be "json" or a JSON schema object, got {value[:80]!r}') from exc
    if not isinstance(value, Mapping):
        raise ConfigError(f'format must be "json" or a JSON schema object, got {type(value).__name__}')
    return dict(value)


class _Parser:
    def __init__(self, text: str) -> None:
        self.s, self.i = text, 0

    def ws(self) -> None:
        start = self.i
        while self.i < len(self.s) and self.s[self.i] in _WS:
            self.i += 1
        run = self.s[start : self.i]
        if len(run) > _MAX_WS or run.count("\n") + run.count("\r") > _MAX_NEWLINES:
            raise _Invalid
        if self.i == len(self.s):
            raise _Incomplete

    def literal(self, word: str) -> None:
        rest = self.s[self.i : self.i + len(word)]
        if not word.startswith(rest):
            raise _Invalid
        if len(rest) < len(word):
            raise _Incomplete
        self.i += len(word)

    def string(self, schema: Mapping[str, Any], choices: Sequence[str] | None = None) -> str:
        if self.s[self.i] != '"':
            raise _Invalid
        self.i += 1
        out: list[str] = []
        while True:
            if self.i >= len(self.s):
                self._check_partial("".join(out), choices)
                raise _Incomplete
            c = self.s[self.i]
            if c == '"':
                self.i += 1
                value = "".join(out)
                if choices is not None and value not in choices:
                    raise _Invalid
                if len(value) < int(schema.get("minLength", 0)):
                    raise _Invalid
                return value
            if c == "\\":
                if choices is not None:
                    raise _Invalid  # keys and enum values are written plainly
                if self.i + 1 >= len(self.s):
                    raise _Incomplete
                esc = self.s[self.i + 1]
                if esc == "u":
                    digits = self.s[self.i + 2 : self.i + 6]
                    if any(d not in "0123456789abcdefABCDEF" for d in digits):
                        raise _Invalid
                    if len(digits) < 4:
                        raise _Incomplete
                    out.append(chr(int(digits, 16)))
                    self.i += 6
                    continue
                if esc not in '"\\/bfnrt':
                    raise _Invalid
                out.append({"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}.get(esc, esc))
                self.i += 2
                continue
            if ord(c) < 0x20:
                raise _Invalid  # raw control characters (a newline) are not allowed inside a JSON string
            if "maxLength" in schema and len(out) >= int(schema["maxLength"]):
                raise _Invalid  # only the closing quote fits now
            out.append(c)
            self.i += 1
            self._check_partial("".join(out), choices)

    @staticmethod
    def _check_partial(prefix: str, choices: Sequence[str] | None) -> None:
        if choices is not None and not any(c.startswith(prefix) for c in choices):
            raise _Invalid

    def _digits(self) -> int:
        """Consume a run of digits (at least one, else the text is incomplete or invalid); return where it began."""
        begin = self.i
        while self.i < len(self.s) and self.s[self.i].isdigit():
            self.i += 1
        if self.i == begin:
            raise _Incomplete if self.i == len(self.s) else _Invalid
        return begin

    def number(self, integer: bool) -> None:
        s = self.s
        if s[self.i] == "-":
            self.i += 1
        digits = self._digits()
        if s[digits] == "0" and self.i - digits > 1:
            raise _Invalid
        if not integer and self.i < len(s) and s[self.i] == ".":
            self.i += 1
            self._digits()
        if not integer and self.i < len(s) and s[self.i] in "eE":
            self.i += 1
            if self.i < len(s) and s[self.i] in "+-":
                self.i += 1
            self._digits()
        if self.i == len(s):
            raise _Incomplete  # more digits may follow: a number is complete only at its delimiter

    def value(self, schema: Mapping[str, Any], top: bool = False) -> None:
        if top and self.s[:1] in tuple(_WS):
            raise _Invalid  # the answer starts with the value
        self.ws()
        kind = schema.get("type")
        c = self.s[self.i]
        if "enum" in schema:
            self.string(schema, [str(v) for v in schema["enum"]])
        elif kind == "object" or (kind is None and c == "{"):
            self.obj(schema)
        elif kind == "array" or (kind is None and c == "["):
            self.array(schema)
        elif kind == "string" or (kind is None and c == '"'):
            self.string(schema)
        elif kind in ("number", "integer") or (kind is None and (c == "-" or c.isdigit())):
            self.number(kind == "integer")
        elif kind == "boolean" or (kind is None and c in "tf"):
            self.literal("true" if c == "t" else "false")
        elif kind == "null" or (kind is None and c == "n"):
            self.literal("null")
        else:
            raise _Invalid

    def obj(self, schema: Mapping[str, Any]) -> None:
        if self.s[self.i] != "{":
            raise _Invalid
        self.i += 1
        props: Mapping[str, Any] | None = schema.get("properties")
        required = set(schema.get("required", ()))
        seen: set[str] = set()
        self.ws()
        if self.s[self.i] == "}":
            if required:
                raise _Invalid
            self.i += 1
            return
        while True:
            choices = None if props is None else [k for k in props if k not in seen]
            key = self.string({}, choices)
            if key in seen:
                raise _Invalid
            seen.add(key)
            self.ws()
            if self.s[self.i] != ":":
                raise _Invalid
            self.i += 1
            self.value(props[key] if props is not None else {})
            self.ws()
            c = self.s[self.i]
            self.i += 1
            if c == "}":
                if not required <= seen:
                    raise _Invalid
                return
            if c != "," or (props is not None and not [k for k in props if k not in seen]):
                raise _Invalid
            self.ws()

    def array(self, schema: Mapping[str, Any]) -> None:
        if self.s[self.i] != "[":
            raise _Invalid
        self.i += 1
        items = schema.get("items", {})
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        count = 0
        self.ws()
        if self.s[self.i] == "]":
            if low > 0:
                raise _Invalid
            self.i += 1
            return
        while True:
            self.value(items)
            count += 1
            self.ws()
            c = self.s[self.i]
            self.i += 1
            if c == "]":
                if count < low:
                    raise _Invalid
                return
            if c != "," or (high is not None and count >= int(high)):
                raise _Invalid


def check_prefix(text: str, schema: Mapping[str, Any] | None = None) -> tuple[bool, bool]:
    """``(valid_prefix, complete)`` of ``text`` for ``schema`` (``{}`` or None: any JSON object)."""
    schema = {"type": "object"} if not schema else schema
    p = _Parser(text)
    try:
        p.value(schema, top=True)
    except _Incomplete:
        return True, False
    except _Invalid:
        return False, False
    rest = text[p.i :]
    if rest.strip() or len(rest) > _MAX_WS or rest.count("\n") + rest.count("\r") > _MAX_NEWLINES:
        return False, False
    return True, True


class JsonConstraint:
    """Per-sequence state: the JSON text so far, and the token choice that keeps it a valid prefix.

    Args:
        tokenizer: the model's tokenizer (``decode([id])`` gives a token's text).
        schema: a JSON schema subset (:func:`check_prefix`); ``{}`` for any JSON object.
        stop_ids: end-of-sequence ids, allowed once the value is complete (and then forced).
        candidates: how many of the most likely tokens are checked per step before falling back to a scan of
            the whole vocabulary in logit order.
    """

    def __init__(self, tokenizer: Any, schema: Mapping[str, Any], stop_ids: set[int], candidates: int = 64) -> None:
        self.tokenizer, self.schema = tokenizer, dict(schema)
        self.stop_ids = set(stop_ids)
        self.candidates = candidates
        self.text = ""
        self.complete = False
        self._pieces: dict[int, str] = {}

    def _piece(self, token: int) -> str:
        piece = self._pieces.get(token)
        if piece is None:
            piece = self._pieces[token] = self.tokenizer.decode([token])
        return piece

    def allows(self, token: int, first: dict[str, bool] | None = None) -> bool:
        """Whether ``token`` may come next. ``first`` (one step's memo of which next characters are valid)
        rejects a token by its first character before its whole text is parsed: a valid prefix's own prefixes
        are valid, and most of a vocabulary scanned in logit order fails on its first character."""
        if token in self.stop_ids:
            return self.complete
        if self.complete:
            return False
        piece = self._piece(token)
        if not piece or "\ufffd" in piece:  # empty or a partial UTF-8 sequence: never needed for JSON text
            return False
        if first is not None:
            ok = first.get(piece[0])
            if ok is None:
                ok = first[piece[0]] = check_prefix(self.text + piece[0], self.schema)[0]
            if not ok or len(piece) == 1:
                return ok
        return check_prefix(self.text + piece, self.schema)[0]

    def choose(self, logits: torch.Tensor, temperature: float = 0.0, generator: torch.Generator | None = None
               ) -> int:
        """The next token from one row's ``logits [vocab]``: the best allowed one (greedy), or a sample from
        the allowed tokens among the ``candidates`` most likely (temperature > 0)."""
        if self.complete:
            return min(self.stop_ids)
        order = torch.argsort(logits, descending=True)
        top = order[: self.candidates].tolist()
        first: dict[str, bool] = {}
        allowed = [t for t in top if self.allows(t, first)] if temperature > 0 else []
        if temperature > 0 and allowed:
            scores = logits[allowed].float() / temperature
            pick = torch.multinomial(scores.softmax(-1), 1, generator=generator)
            return allowed[int(pick)]
        for token in (top if temperature == 0 else []) + order[self.candidates :].tolist():
            if self.allows(token, first):
                return int(token)
        return min(self.stop_ids)  # nothing fits (cannot happen with a byte-complete vocabulary): stop

    def advance(self, token: int) -> None:
        """Record the chosen token."""
        if token in self.stop_ids:
            return
        self.text += self._piece(token)
        self.complete = check_prefix(self.text, self.schema)[1]
