"""The JSON schema of ``bench_baseline_advanced.py``'s report (documented in docs/benchmarks/SCHEMA.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["SCHEMA", "SCHEMA_VERSION", "validate_report"]

SCHEMA_VERSION = 1

_NUMBER_OR_NULL = {"type": ["number", "null"]}
_SPREAD = {
    "type": ["object", "null"],
    "required": ["median", "p25", "p75", "min", "max", "runs"],
    "properties": {k: _NUMBER_OR_NULL for k in ("median", "p25", "p75", "min", "max")} | {"runs": {"type": "integer"}},
}
_FIDELITY = {
    "type": ["object", "null"],
    "required": ["metric", "value", "threshold", "higher_is_better", "extra"],
    "properties": {
        "metric": {"enum": ["cosine_min", "rel_error", "token_agreement", "perplexity_increase"]},
        "value": _NUMBER_OR_NULL,
        "threshold": _NUMBER_OR_NULL,
        "higher_is_better": {"type": "boolean"},
        "extra": {"type": "object", "additionalProperties": _NUMBER_OR_NULL},
    },
}
_RESULT = {
    "type": "object",
    "required": ["suite", "group", "strategy", "role", "metric", "unit", "value", "higher_is_better", "spread",
                 "fidelity", "params", "baseline", "ratio", "status", "note"],
    "properties": {
        "suite": {"enum": ["ops", "text", "audio", "vision", "llm", "load"]},
        "group": {"type": "string"},
        "strategy": {"type": "string"},
        "role": {"enum": ["baseline", "peer", "ours"]},
        "metric": {"enum": ["latency", "throughput", "ttft", "decode", "batch_decode", "greedy_agreement", "load"]},
        "unit": {"type": "string"},
        "value": _NUMBER_OR_NULL,
        "higher_is_better": {"type": "boolean"},
        "spread": _SPREAD,
        "fidelity": _FIDELITY,
        "params": {"type": "object"},
        "baseline": {"type": ["string", "null"]},
        "ratio": _NUMBER_OR_NULL,
        "status": {"enum": ["ok", "skipped", "failed"]},
        "note": {"type": "string"},
    },
}
_MEMORY = {
    "type": "object",
    "required": ["model", "strategy", "anon_bytes", "file_bytes", "peak_rss_bytes", "model_resident_bytes",
                 "model_file_bytes", "vram_bytes"],
    "properties": {"model": {"type": "string"}, "strategy": {"type": "string"},
                   "vram_bytes": {"type": ["integer", "null"]}}
    | {k: {"type": "integer"} for k in ("anon_bytes", "file_bytes", "peak_rss_bytes", "model_resident_bytes",
                                        "model_file_bytes")},
}
_TARGET = {
    "type": "object",
    "required": ["name", "description", "value", "threshold", "comparison", "met", "evidence"],
    "properties": {"name": {"type": "string"}, "description": {"type": "string"}, "value": _NUMBER_OR_NULL,
                   "threshold": {"type": "number"}, "comparison": {"enum": [">=", "<="]},
                   "met": {"type": ["boolean", "null"]}, "evidence": {"type": "string"}},
}
SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "arrowengine bench_baseline_advanced report",
    "type": "object",
    "required": ["schema_version", "benchmark", "created_at", "seconds", "options", "environment", "results",
                 "memory", "targets"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "benchmark": {"const": "bench_baseline_advanced"},
        "created_at": {"type": "string"},
        "seconds": {"type": "number"},
        "options": {"type": "object", "required": ["quick", "models", "strategies", "suites", "dataset", "device"]},
        "environment": {
            "type": "object",
            "required": ["cpu_model", "isa", "isa_summary", "cores", "memory_bytes", "os", "python", "libraries",
                         "onednn_version", "gpu"],
        },
        "results": {"type": "array", "items": _RESULT},
        "memory": {"type": "array", "items": _MEMORY},
        "targets": {"type": "array", "items": _TARGET},
    },
}


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` when ``report`` does not follow :data:`SCHEMA`."""
    import jsonschema

    jsonschema.validate(report, SCHEMA)
