"""A saved copy of the in-process index, next to the table, so a new process skips the full scan.

One file per saved table version, ``<store>/<table>.index/v<version>.pkl``, written atomically (temporary file,
then rename). It carries the index parts (rows, vectors, BM25 postings), the version they mirror and that
version's commit timestamp, which ties the file to this table's history: a table deleted and re-created
reaches the same version numbers with other timestamps, and its snapshot is ignored. A newer table version is
reached by the ordinary incremental catch-up. Any unreadable or mismatched file is logged and skipped: the
index is then built from a scan, as without a snapshot. The file is derived data (never user data); older
snapshots are removed once a newer one is written.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["FORMAT", "find_snapshot", "write_snapshot"]

logger = logging.getLogger(__name__)
FORMAT = 1


def _timestamps(reader: Any) -> dict[int, Any]:
    return {int(v["version"]): v["timestamp"] for v in reader.list_versions()}


def write_snapshot(directory: Path, state: dict[str, Any], reader: Any) -> Path | None:
    """Save ``state`` (the index parts at ``state["version"]``); returns the file, None when it failed (logged)."""
    version = int(state["version"])
    try:
        stamp = _timestamps(reader).get(version)
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"v{version}.pkl"
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".v", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            pickle.dump({"format": FORMAT, "timestamp": stamp, **state}, fh, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, target)
    except (OSError, RuntimeError, ValueError, pickle.PicklingError) as exc:
        logger.warning("memory index snapshot at %s not written (%s); the next process scans the table", directory,
                       exc)
        return None
    for old in directory.glob("v*.pkl"):
        if old != target:
            old.unlink(missing_ok=True)
    logger.info("memory index snapshot written: %s", target)
    return target


def find_snapshot(directory: Path, reader: Any, latest: int, expect: dict[str, Any]) -> dict[str, Any] | None:
    """The newest snapshot at or below table version ``latest`` whose commit timestamp and ``expect`` fields
    (dimension, BM25 settings) match; None when there is none usable."""
    if not directory.is_dir():
        return None
    files = sorted(((int(p.stem[1:]), p) for p in directory.glob("v*.pkl") if p.stem[1:].isdigit()), reverse=True)
    files = [(v, p) for v, p in files if v <= latest]
    if not files:
        return None
    version, path = files[0]
    try:
        with path.open("rb") as fh:
            state = pickle.load(fh)
        stamps = _timestamps(reader)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ValueError, RuntimeError) as exc:
        logger.warning("memory index snapshot %s unreadable (%s); building from a scan", path, exc)
        return None
    mismatched = [k for k, v in expect.items() if state.get(k) != v]
    if state.get("format") != FORMAT or state.get("version") != version or stamps.get(version) != state.get(
            "timestamp") or mismatched:
        logger.warning("memory index snapshot %s does not match this table (%s); building from a scan", path,
                       mismatched or "another table history or format")
        return None
    return state
