"""Reading a JSON request body under the size limit, and typed field getters whose errors name the field.

Every check a client can fail raises ``BadRequestError`` (400) or ``BodyTooLargeError`` (413) with a
message naming the field, what it got and what is allowed; the routes render it in their API's shape.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from arrowengine.serve.errors import BadRequestError, BodyTooLargeError

__all__ = ["get_bool", "get_float", "get_int", "get_messages", "get_stop", "get_str", "read_json", "reject_unsupported"]

_MISSING = object()


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; refuses bodies over ``limit`` bytes before reading all of them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"the request body is {declared} bytes, over the {limit}-byte limit; send less")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"the request body is over the {limit}-byte limit; send less")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks) or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from exc
    if not isinstance(body, dict):
        raise BadRequestError(f"the request body must be a JSON object, got {type(body).__name__}; "
                              f"send {{\"model\": ..., ...}}")
    return body


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def get_str(body: dict[str, Any], name: str, default: Any = _MISSING) -> Any:
    """A string field (``default`` when absent; required when no default is given)."""
    value = body.get(name, default)
    if value is _MISSING:
        raise BadRequestError(f'"{name}" is required; add it to the request', code="missing_field")
    if value is not default and not isinstance(value, str):
        raise BadRequestError(f'"{name}" must be a string, got {_describe(value)}', code="invalid_type")
    return value


def get_bool(body: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean field."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequestError(f'"{name}" must be true or false, got {_describe(value)}', code="invalid_type")
    return value


def get_int(body: dict[str, Any], name: str, default: Any, lo: int, hi: int, *, label: str | None = None) -> Any:
    """An integer field within ``[lo, hi]``."""
    value = body.get(name)
    label = label or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise BadRequestError(f'"{label}" must be an integer, got {_describe(value)}', code="invalid_type")
    if not lo <= value <= hi:
        raise BadRequestError(f'"{label}" must be between {lo} and {hi}, got {value}', code="invalid_value")
    return value


def get_float(body: dict[str, Any], name: str, default: Any, lo: float, hi: float, *,
              label: str | None = None) -> Any:
    """A finite number field within ``[lo, hi]``."""
    value = body.get(name)
    label = label or name
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequestError(f'"{label}" must be a number, got {_describe(value)}', code="invalid_type")
    if not lo <= value <= hi:
        raise BadRequestError(f'"{label}" must be between {lo} and {hi}, got {value}', code="invalid_value")
    return float(value)


def get_stop(body: dict[str, Any], name: str = "stop", *, label: str | None = None) -> tuple[str, ...]:
    """Stop strings: a string or a list of non-empty strings (at most 16)."""
    value = body.get(name)
    label = label or name
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or len(stops) > 16 or not all(isinstance(s, str) and s for s in stops):
        raise BadRequestError(f'"{label}" must be a non-empty string or a list of at most 16 non-empty strings, '
                              f"got {_describe(value)}", code="invalid_type")
    return tuple(stops)


def get_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages: a non-empty list of ``{"role": str, "content": str | [text parts]}``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError('"messages" must be a non-empty list of {"role": ..., "content": ...} objects, '
                              f"got {_describe(messages)}", code="invalid_type")
    out = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str):
            raise BadRequestError(f'"messages[{i}]" must be an object with a string "role", got {_describe(msg)}',
                                  code="invalid_type")
        content = msg.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise BadRequestError(f'"messages[{i}].content" may only hold text parts '
                                      '({"type": "text", "text": ...}); this server has no image input',
                                      code="invalid_type")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise BadRequestError(f'"messages[{i}].content" must be a string, got {_describe(content)}',
                                  code="invalid_type")
        out.append({"role": msg["role"], "content": content})
    return out


def reject_unsupported(body: dict[str, Any], names: tuple[str, ...]) -> None:
    """A 400 for fields this server cannot honour (silently ignoring tools or logprobs would mislead a client)."""
    for name in names:
        if body.get(name) not in (None, False, [], {}):
            raise BadRequestError(f'"{name}" is not supported by this server; remove it from the request',
                                  code="unsupported_parameter")
