"""The run log: one row per consolidation run in the store's ``consolidation_runs`` Lance table.

Columns: what the run saw and did (scanned: short-tier rows read; selected: the hot ones; clusters, clustered,
principles, archived, rejected), the short tier and the active bytes (content + float32 embedding of the short
and long tiers) before and after, the duration, LLM calls and failures, answers that needed repair (not one
valid JSON object), extractive principles, the LLM used, why clusters were rejected (JSON list of
``{"cluster", "reason"}``), and the status (``ok``, ``recovered``, ``abandoned``). ``arrowengine memory stats``
prints it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa

from memory.lance_io import commit_with_retry

__all__ = ["RUNLOG_TABLE", "RunReport", "append_run", "open_if_exists", "read_runs"]

RUNLOG_TABLE = "consolidation_runs"
_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("status", pa.string()), ("started_at", pa.float64()), ("duration_s", pa.float64()),
    ("scanned", pa.int64()), ("selected", pa.int64()), ("clusters", pa.int64()), ("clustered", pa.int64()),
    ("principles", pa.int64()), ("archived", pa.int64()), ("rejected", pa.int64()),
    ("short_before", pa.int64()), ("short_after", pa.int64()), ("bytes_before", pa.int64()),
    ("bytes_after", pa.int64()), ("llm_calls", pa.int64()), ("llm_failures", pa.int64()),
    ("repaired", pa.int64()), ("extractive", pa.int64()), ("llm", pa.string()), ("reasons", pa.string()),
])


@dataclass
class RunReport:
    """The figures of one run (also what :meth:`Consolidator.run` returns)."""

    run_id: str
    status: str = "ok"
    started_at: float = 0.0
    duration_s: float = 0.0
    scanned: int = 0
    selected: int = 0
    clusters: int = 0
    clustered: int = 0
    principles: int = 0
    archived: int = 0
    rejected: int = 0
    short_before: int = 0
    short_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    llm_calls: int = 0
    llm_failures: int = 0
    repaired: int = 0  # answers that were not one valid JSON object (their principles array was used)
    extractive: int = 0
    llm: str = ""
    reasons: list[dict[str, str]] = field(default_factory=list)
    principle_ids: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """The run-log row (reasons as JSON)."""
        out = asdict(self)
        out.pop("principle_ids")
        out["reasons"] = json.dumps(self.reasons, ensure_ascii=False)
        return out


def append_run(db: Any, report: RunReport, retries: int = 20) -> None:
    """Append ``report`` to the run log table (created on first use)."""
    table = db.create_table(RUNLOG_TABLE, schema=_SCHEMA, exist_ok=True)
    data = pa.Table.from_pylist([report.row()], schema=_SCHEMA)
    commit_with_retry(lambda: table.add(data), "append consolidation run log", retries)


def open_if_exists(db: Any, name: str) -> Any | None:
    """Table ``name`` of ``db``, or None when it does not exist."""
    try:
        return db.open_table(name)
    except ValueError:  # lancedb: "Table '...' was not found"
        return None


def read_runs(db: Any, last: int | None = None) -> list[dict[str, Any]]:
    """The run log, oldest first (the ``last`` runs only when given); reasons decoded."""
    table = open_if_exists(db, RUNLOG_TABLE)
    if table is None:
        return []
    rows = sorted(table.to_arrow().to_pylist(), key=lambda r: r["started_at"])
    for r in rows:
        r["reasons"] = json.loads(r["reasons"] or "[]")
    return rows[-last:] if last else rows
