"""A saved copy of the in-process index, next to the table, so a new process skips the full scan.

One directory per saved table version, ``<store>/<table>.index/v<version>/``, written into a temporary
directory and renamed into place: ``meta.json`` (format, the table version mirrored, that version's commit
timestamp, the scalars of each part), one ``.npy`` file per numpy array and one uncompressed Arrow IPC file
per Arrow table. Reading maps every file instead of loading it: numpy arrays copy-on-write
(``mmap_mode="c"``: in-place edits stay private to the process, the file is never written) and Arrow tables
zero-copy from a memory map, so opening costs the metadata plus the id and vocabulary maps, and a search
touches only the pages it reads (an IVF probe reads its lists, not the whole matrix).

The commit timestamp ties the copy to this table's history: a table deleted and re-created reaches the same
version numbers with other timestamps, and its snapshot is ignored. A newer table version is reached by the
ordinary incremental catch-up. Any unreadable or mismatched copy is logged and skipped: the index is then
built from a scan, as without a snapshot. The files are derived data (never user data) and hold no pickle:
opening a store never runs code from its directory. Older snapshots are removed once a newer one is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = ["FORMAT", "SnapshotParts", "find_snapshot", "write_snapshot"]

logger = logging.getLogger(__name__)
FORMAT = 2
_META = "meta.json"


@dataclass
class SnapshotParts:
    """What a snapshot holds: JSON scalars, named numpy arrays and named Arrow tables."""

    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    tables: dict[str, pa.Table] = field(default_factory=dict)


def _timestamps(reader: Any) -> dict[int, Any]:
    return {int(v["version"]): str(v["timestamp"]) for v in reader.list_versions()}


def _write_files(target: Path, parts: SnapshotParts) -> None:
    for name, array in parts.arrays.items():
        np.save(target / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    for name, table in parts.tables.items():
        table = table.combine_chunks()  # one record batch: the reader hands back single-chunk columns
        with pa.OSFile(str(target / f"{name}.arrow"), "wb") as sink, \
                pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    # written last: a directory without meta.json is never read
    meta = {**parts.meta, "arrays": sorted(parts.arrays), "tables": sorted(parts.tables)}
    (target / _META).write_text(json.dumps(meta), encoding="utf-8")


def write_snapshot(directory: Path, parts: SnapshotParts, reader: Any) -> Path | None:
    """Save ``parts`` (the index at ``parts.meta["version"]``); returns the directory, None when it failed
    (logged; the next process then scans the table)."""
    version = int(parts.meta["version"])
    target = directory / f"v{version}"
    tmp = None
    try:
        stamp = _timestamps(reader).get(version)
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=directory, prefix=".v", suffix=".tmp"))
        _write_files(tmp, SnapshotParts({"format": FORMAT, "timestamp": stamp, **parts.meta}, parts.arrays,
                                        parts.tables))
        if target.exists():  # another store object saved this version first: its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except (OSError, RuntimeError, ValueError, TypeError, pa.ArrowException) as exc:
        logger.warning("memory index snapshot at %s not written (%s); the next process scans the table", directory,
                       exc)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
    for old in directory.glob("v*"):
        if old != target:  # older versions, and format-1 pickles of earlier releases
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    logger.info("memory index snapshot written: %s", target)
    return target


def _load_array(path: Path) -> np.ndarray:
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    # numpy cannot map a zero-length array: those come back as plain (empty) arrays
    return array if array.size else np.load(path, allow_pickle=False)


def _read_files(path: Path, meta: dict[str, Any]) -> SnapshotParts:
    arrays = {name: _load_array(path / f"{name}.npy") for name in meta.pop("arrays")}
    tables = {name: pa.ipc.open_file(pa.memory_map(str(path / f"{name}.arrow"))).read_all()
              for name in meta.pop("tables")}
    return SnapshotParts(meta, arrays, tables)


def find_snapshot(directory: Path, reader: Any, latest: int, expect: dict[str, Any]) -> SnapshotParts | None:
    """The newest snapshot at or below table version ``latest`` whose commit timestamp and ``expect`` fields
    (dimension, BM25 settings) match, with its files mapped; None when there is none usable."""
    if not directory.is_dir():
        return None
    found = sorted(((int(p.name[1:]), p) for p in directory.glob("v*") if p.is_dir() and p.name[1:].isdigit()),
                   reverse=True)
    found = [(v, p) for v, p in found if v <= latest]
    if not found:
        return None
    version, path = found[0]
    try:
        meta = json.loads((path / _META).read_text(encoding="utf-8"))
        stamps = _timestamps(reader)
        mismatched = [k for k, v in expect.items() if meta.get(k) != v]
        if meta.get("format") != FORMAT or meta.get("version") != version or stamps.get(version) != meta.get(
                "timestamp") or mismatched:
            logger.warning("memory index snapshot %s does not match this table (%s); building from a scan", path,
                           mismatched or "another table history or format")
            return None
        return _read_files(path, meta)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, pa.ArrowException) as exc:
        logger.warning("memory index snapshot %s unreadable (%s); building from a scan", path, exc)
        return None
