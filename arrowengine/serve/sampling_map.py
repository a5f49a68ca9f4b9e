"""Each API's sampling fields mapped onto ``SamplingParams``, with each API's own defaults.

Ollama (``options``): ``temperature`` (default 0.8), ``top_k`` (40), ``top_p`` (0.9), ``min_p``, ``seed``,
``stop``, ``num_predict`` (-1 / -2: until the context is full, capped by ``max_tokens_limit``),
``repeat_penalty`` (1.1; applied over prompt and completion, where Ollama looks at the last 64 tokens),
``presence_penalty``, ``frequency_penalty``, ``num_ctx``. OpenAI: ``max_tokens`` / ``max_completion_tokens``,
``temperature`` (1.0), ``top_p`` (1.0), ``seed``, ``stop``, ``presence_penalty``, ``frequency_penalty``, ``n``
(1 only), and the vLLM extensions ``top_k``, ``min_p``, ``repetition_penalty``. Temperature 0 is greedy.

JSON output: Ollama's top-level ``format`` (``"json"`` or a JSON schema) and OpenAI's ``response_format``
(``{"type": "json_object"}`` or ``{"type": "json_schema", "json_schema": {"schema": ...}}``) constrain decoding
(:mod:`arrowengine.runtime.llm.json_constraint`).
"""

from __future__ import annotations

import json
from typing import Any

from arrowengine.errors import ConfigError
from arrowengine.runtime.llm.json_constraint import parse_format
from arrowengine.runtime.llm.sampling import SamplingParams
from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import BadRequestError
from arrowengine.serve.fields import get_float, get_int, get_stop

__all__ = ["ollama_sampling", "openai_sampling"]

_SEED_MAX = 2**63 - 1


def ollama_sampling(body: dict[str, Any], config: ServeConfig) -> tuple[SamplingParams, int | None]:
    """``SamplingParams`` and ``num_ctx`` of an Ollama request's ``options``."""
    options = body.get("options") or {}
    if not isinstance(options, dict):
        raise BadRequestError(f'"options" must be an object, got {type(options).__name__}', code="invalid_type")
    limit = config.max_tokens_limit
    predict = get_int(options, "num_predict", None, -2, limit, label="options.num_predict")
    if predict == 0:
        raise BadRequestError('"options.num_predict" must be -1, -2 or between 1 and '
                              f"{limit}, got 0", code="invalid_value")
    max_new = config.default_max_tokens if predict is None else (limit if predict < 0 else predict)
    num_ctx = get_int(options, "num_ctx", None, 1, 1 << 20, label="options.num_ctx")
    params = SamplingParams(
        max_new_tokens=max_new,
        temperature=get_float(options, "temperature", 0.8, 0.0, 100.0, label="options.temperature"),
        top_k=get_int(options, "top_k", 40, 0, 1 << 20, label="options.top_k"),
        top_p=get_float(options, "top_p", 0.9, 1e-9, 1.0, label="options.top_p"),
        min_p=get_float(options, "min_p", 0.0, 0.0, 0.999999, label="options.min_p"),
        repetition_penalty=get_float(options, "repeat_penalty", 1.1, 1e-6, 100.0, label="options.repeat_penalty"),
        presence_penalty=get_float(options, "presence_penalty", 0.0, -100.0, 100.0, label="options.presence_penalty"),
        frequency_penalty=get_float(options, "frequency_penalty", 0.0, -100.0, 100.0,
                                    label="options.frequency_penalty"),
        seed=get_int(options, "seed", None, -_SEED_MAX, _SEED_MAX, label="options.seed"),
        stop=get_stop(options, label="options.stop"),
        json_schema=_schema_text(body.get("format"), "format"),
    )
    return params, num_ctx


def _schema_text(value: Any, label: str) -> str | None:
    """A JSON format field as ``SamplingParams.json_schema`` (a 400 naming the field when it is malformed)."""
    try:
        schema = parse_format(value)
    except ConfigError as exc:
        raise BadRequestError(f'"{label}": {exc}', code="invalid_value") from exc
    return None if schema is None else json.dumps(schema, sort_keys=True)


def _openai_format(body: dict[str, Any]) -> str | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "{}"
    if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
        return _schema_text(fmt["json_schema"].get("schema") or {}, "response_format.json_schema.schema")
    raise BadRequestError('"response_format" must be {"type": "text"}, {"type": "json_object"} or {"type": '
                          '"json_schema", "json_schema": {"schema": {...}}}', code="invalid_value")


def openai_sampling(body: dict[str, Any], config: ServeConfig) -> SamplingParams:
    """``SamplingParams`` of an OpenAI chat or completions request."""
    limit = config.max_tokens_limit
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_new = get_int(body, name, config.default_max_tokens, 1, limit)
    n = get_int(body, "n", 1, 1, 1_000_000)
    if n != 1:
        raise BadRequestError(f'"n" must be 1 on this server (one choice per request), got {n}', code="invalid_value")
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=get_float(body, "temperature", 1.0, 0.0, 2.0),
        top_p=get_float(body, "top_p", 1.0, 1e-9, 1.0),
        top_k=get_int(body, "top_k", 0, 0, 1 << 20),
        min_p=get_float(body, "min_p", 0.0, 0.0, 0.999999),
        repetition_penalty=get_float(body, "repetition_penalty", 1.0, 1e-6, 100.0),
        presence_penalty=get_float(body, "presence_penalty", 0.0, -2.0, 2.0),
        frequency_penalty=get_float(body, "frequency_penalty", 0.0, -2.0, 2.0),
        seed=get_int(body, "seed", None, -_SEED_MAX, _SEED_MAX),
        stop=get_stop(body),
        json_schema=_openai_format(body),
    )
