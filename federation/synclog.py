"""The sync log (R5.7): one row per sync with bytes, seconds, method and versions, kept as a Parquet dataset.

Each record is its own small Parquet file (written to a temporary name, then renamed), so concurrent writers
never corrupt each other and a crash loses at most the record being written; :meth:`SyncLog.table` reads them
all as one Arrow table.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["SYNC_LOG_SCHEMA", "SyncLog", "SyncRecord"]


@dataclass(frozen=True)
class SyncRecord:
    """One sync as seen by one side. Bytes: the IPC messages through Flight; messages: Flight's own counters."""

    role: str  # client | server
    node: str
    adapter: str
    op: str  # sync | pull | push | list
    method: str  # delta | full
    status: str  # ok | full_sync_required | rejected | error | apply_failed
    base_version: int | None
    new_version: int | None
    bytes_sent: int
    bytes_received: int
    messages_sent: int
    messages_received: int
    seconds: float
    error: str = ""
    time: float = dataclasses.field(default_factory=time.time)


SYNC_LOG_SCHEMA = pa.schema([
    ("time", pa.timestamp("us", tz="UTC")), ("role", pa.string()), ("node", pa.string()), ("adapter", pa.string()),
    ("op", pa.string()), ("method", pa.string()), ("status", pa.string()), ("base_version", pa.int64()),
    ("new_version", pa.int64()), ("bytes_sent", pa.int64()), ("bytes_received", pa.int64()),
    ("messages_sent", pa.int64()), ("messages_received", pa.int64()), ("seconds", pa.float64()),
    ("error", pa.string()),
])


class SyncLog:
    """Append-only table of :class:`SyncRecord` under ``root``."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, record: SyncRecord) -> None:
        """Write one record."""
        row = dataclasses.asdict(record)
        row["time"] = pa.scalar(int(record.time * 1e6), pa.timestamp("us", tz="UTC"))
        table = pa.Table.from_pylist([row], schema=SYNC_LOG_SCHEMA)
        name = f"{int(record.time * 1e6):017d}-{uuid.uuid4().hex[:8]}.parquet"
        with self._lock:
            tmp = self.root / f".{name}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, self.root / name)

    def table(self) -> pa.Table:
        """Every record, oldest first."""
        files = sorted(self.root.glob("*.parquet"))
        if not files:
            return SYNC_LOG_SCHEMA.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=SYNC_LOG_SCHEMA) for f in files])
