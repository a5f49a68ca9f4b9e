"""``MemoryIndex``: the in-process vector, text and link indexes of one memories table, kept in sync with it.

The Lance table stays the source of truth; the index mirrors one table version. It is built lazily from one
scan of the columns search needs and then caught up incrementally: ``_rowid`` is the row address (fragment id
<< 32 | offset) and a write only ever adds fragments with higher ids, so the rows committed since the mirrored
version are exactly those with ``_rowid >= next_rowid``. A rewritten row (links, tier, access statistics:
Lance writes it anew) comes back among them under a known id and retires its old slot; plain deletions show
as a row count below the expected one and are found from one scan of the row ids. The table version is
checked when the owner marks the index stale (its own writes) and otherwise at most every
``index_refresh_s`` (default 0.5 s: other processes' and other store objects' writes). Past
``compact_dead_fraction`` dead slots, or an IVF tail past ``ivf_tail_fraction``, the next refresh rebuilds
from a fresh scan. A store on a local directory saves the index beside the table on ``close()``
(:mod:`memory.index.snapshot`) and a new process starts from that copy plus the catch-up instead of the scan.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from memory.config import RetrievalConfig
from memory.errors import InvalidEmbeddingError
from memory.index.graph import LinkGraph
from memory.index.rows import PAYLOAD_COLUMNS, RowStore
from memory.index.snapshot import SnapshotParts, find_snapshot, write_snapshot
from memory.index.text import TextIndex
from memory.index.vector import VectorIndex, ivf_layout, ivf_list_count

__all__ = ["MemoryIndex"]

logger = logging.getLogger(__name__)
_SCAN = [*PAYLOAD_COLUMNS, "embedding"]


def _embeddings(table: pa.Table, dim: int) -> np.ndarray:
    col = table.column("embedding").combine_chunks() if table.num_rows else None
    if col is None:
        return np.zeros((0, dim), dtype=np.float32)
    if col.null_count:
        raise InvalidEmbeddingError(
            f"{col.null_count} memories have no embedding; every row of the table needs one: "
            "delete those rows or re-add them with an embedding"
        )
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


class MemoryIndex:
    """Rows, vectors, BM25 postings and link adjacency of a memories table, as of ``version``.

    ``open_reader`` returns a fresh table handle (the index pins it to a version while it reads). Use
    :meth:`refresh` before reading and hold :attr:`lock` while using the parts.
    """

    def __init__(self, open_reader: Callable[[], Any], dim: int, cfg: RetrievalConfig,
                 snapshot_dir: Path | None = None) -> None:
        self._open_reader = open_reader
        self._snapshot_dir = snapshot_dir
        self._saved_version = -1
        self._reader: Any = None
        self.dim = dim
        self.cfg = cfg
        self.lock = threading.RLock()
        self.version = -1
        self._next_rowid = 0
        self._stale = True
        self._last_check = float("-inf")
        self._mask_cache: dict[tuple[Any, ...], np.ndarray] = {}
        self.rows = RowStore()
        self.vectors = VectorIndex(dim)
        self.text = TextIndex(cfg.bm25_k1, cfg.bm25_b)
        self.graph = LinkGraph(self.rows)
        self.stats: dict[str, Any] = {"builds": 0, "catch_ups": 0, "build_s": 0.0, "snapshot_loaded": None}

    @property
    def built(self) -> bool:
        """True once the first scan has been loaded."""
        return self.version >= 0

    def mark_stale(self) -> None:
        """Make the next :meth:`refresh` check the table version whatever the interval (after a write)."""
        self._stale = True

    def refresh(self) -> None:
        """Bring the index to the table's latest version (a no-op when nothing was committed)."""
        with self.lock:
            now = time.monotonic()
            if not self._stale and now - self._last_check < self.cfg.index_refresh_s:
                return
            self._stale = False
            self._last_check = now
            if self._reader is None:
                self._reader = self._open_reader()
            reader = self._reader
            version = reader.version
            if version == self.version:
                return
            reader.checkout(version)  # every read below sees this one version
            try:
                if not self.built and self._load_snapshot(reader, version) and self.version != version:
                    self._catch_up(reader, version)
                elif not self.built:
                    self._build(reader, version)
                elif self.version != version:
                    self._catch_up(reader, version)
            finally:
                reader.checkout_latest()
            self._mask_cache.clear()

    # ------------------------------------------------------------------ snapshots
    def _expect(self) -> dict[str, Any]:
        return {"dim": self.dim, "bm25": [self.cfg.bm25_k1, self.cfg.bm25_b]}  # as JSON reads them back

    def _load_snapshot(self, reader: Any, version: int) -> bool:
        if self._snapshot_dir is None:
            return False
        t0 = time.perf_counter()
        parts = find_snapshot(self._snapshot_dir, reader, version, self._expect())
        if parts is None:
            return False
        meta, arrays = parts.meta, parts.arrays

        def prefixed(prefix: str) -> dict[str, np.ndarray]:
            return {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}

        try:
            rows = RowStore.from_snapshot(prefixed("rows."), parts.tables.get("payload"), meta["rows"])
            vectors = VectorIndex.from_snapshot(self.dim, prefixed("vectors."))
            text = TextIndex.from_snapshot(prefixed("text."), parts.tables["vocab"], meta["text"])
        except (KeyError, ValueError, TypeError, pa.ArrowException) as exc:
            logger.warning("memory index snapshot in %s is incomplete (%s); building from a scan",
                           self._snapshot_dir, exc)
            return False
        self.rows, self.vectors, self.text = rows, vectors, text
        self.graph = LinkGraph(self.rows)
        self.version, self._next_rowid = int(meta["version"]), int(meta["next_rowid"])
        self._saved_version = self.version
        self.stats["snapshot_loaded"] = self.version
        logger.info("memory index loaded from its snapshot at version %d (%d rows) in %.2f s", self.version,
                    self.rows.n_live, time.perf_counter() - t0)
        return True

    def save_snapshot(self) -> Path | None:
        """Write the index next to the table (when it has one and changed since the last save)."""
        with self.lock:
            if self._snapshot_dir is None or not self.built or self.version == self._saved_version:
                return None
            reader = self._reader if self._reader is not None else self._open_reader()
            row_arrays, payload, row_meta = self.rows.snapshot()
            text_arrays, vocab, text_meta = self.text.snapshot()
            arrays = {f"rows.{k}": v for k, v in row_arrays.items()}
            arrays |= {f"vectors.{k}": v for k, v in self.vectors.snapshot().items()}
            arrays |= {f"text.{k}": v for k, v in text_arrays.items()}
            tables = {"vocab": vocab} | ({"payload": payload} if payload is not None else {})
            meta = {"version": self.version, "next_rowid": self._next_rowid, "rows": row_meta, "text": text_meta,
                    **self._expect()}
            written = write_snapshot(self._snapshot_dir, SnapshotParts(meta, arrays, tables), reader)
            if written is not None:
                self._saved_version = self.version
            return written

    # ------------------------------------------------------------------ loading
    def _reset(self) -> None:
        self.rows = RowStore()
        self.vectors = VectorIndex(self.dim)
        self.text = TextIndex(self.cfg.bm25_k1, self.cfg.bm25_b)
        self.graph = LinkGraph(self.rows)

    def _build(self, reader: Any, version: int) -> None:
        t0 = time.perf_counter()
        data = reader.search().with_row_id(True).select(_SCAN).limit(None).to_arrow()
        emb = _embeddings(data, self.dim)
        data = data.drop_columns(["embedding"])
        self._reset()
        layout = None
        if data.num_rows >= self.cfg.exact_max_rows:
            lists = self.cfg.ivf_lists or ivf_list_count(data.num_rows)
            layout = ivf_layout(emb, lists, self.cfg.ivf_overflow_fraction, seed=0)
            order = np.argsort(layout.labels, kind="stable")  # each list becomes one contiguous block of slots
            data, emb = data.take(pa.array(order)), emb[order]
        self._append(data, emb)
        if layout is not None:
            self.vectors.set_lists(layout)
        rowids = self.rows.rowid.view
        self._next_rowid = ((int(rowids.max()) >> 32) + 1) << 32 if len(rowids) else 0
        self.version = version
        elapsed = time.perf_counter() - t0
        self.stats["builds"] += 1
        self.stats["build_s"] = elapsed
        mode = "exact" if layout is None else (f"IVF {len(layout.centroids)} lists + "
                                               f"{self.vectors.overflow_rows} overflow rows")
        logger.info("memory index built: %d rows at version %d in %.2f s (%s)", data.num_rows, version, elapsed, mode)

    def _append(self, data: pa.Table, emb: np.ndarray) -> None:
        first = len(self.rows)
        self.rows.append(data)
        self.vectors.append(emb)
        self.text.add(first, data.column("content").combine_chunks())

    def _kill(self, slots: Sequence[int] | np.ndarray) -> None:
        dead = self.rows.kill(np.asarray(slots, dtype=np.int64))
        if len(dead):
            self.text.remove(dead, pa.array(self.rows.column(dead, "content"), pa.string()))

    def _catch_up(self, reader: Any, version: int) -> None:
        new = reader.search().with_row_id(True).where(f"_rowid >= {self._next_rowid}").select(_SCAN) \
            .limit(None).to_arrow()
        if new.num_rows > max(1000, self.rows.n_live // 2):  # a compaction rewrote most rows: start over
            self._build(reader, version)
            return
        ids = new.column("id").to_pylist()
        slot_of = self.rows.slot_of
        self._kill([slot_of[i] for i in ids if i in slot_of])  # rewritten rows retire their old slot
        self._append(new.drop_columns(["embedding"]), _embeddings(new, self.dim))
        if new.num_rows:
            self._next_rowid = max(self._next_rowid, ((int(new.column("_rowid").to_numpy().max()) >> 32) + 1) << 32)
        if reader.count_rows() != self.rows.n_live:  # rows deleted: find which from the row ids alone
            present = reader.search().with_row_id(True).select(["id"]).limit(None).to_arrow()
            live = np.flatnonzero(self.rows.live.view)
            gone = ~np.isin(self.rows.rowid.view[live], present.column("_rowid").to_numpy().astype(np.uint64))
            self._kill(live[gone])
        self.version = version
        self.stats["catch_ups"] += 1
        total = len(self.rows)
        dead = 1.0 - self.rows.n_live / max(total, 1)
        tail = self.vectors.tail_rows / max(total, 1)
        crossed = not self.vectors.is_ivf and self.rows.n_live >= self.cfg.exact_max_rows
        if (dead > self.cfg.compact_dead_fraction and total > 1000) or tail > self.cfg.ivf_tail_fraction or crossed:
            logger.info("memory index: rebuilding (dead %.0f%%, tail %.0f%%, rows %d)", 100 * dead, 100 * tail,
                        self.rows.n_live)
            self._build(reader, version)

    # ------------------------------------------------------------------ reading
    def allowed(self, modalities: Sequence[str] | None, tiers: Sequence[str] | None,
                session: str | None) -> np.ndarray:
        """The mask of live slots passing the filters (cached until the index changes; do not modify)."""
        key = (tuple(modalities or ()), tuple(tiers or ()), session)
        mask = self._mask_cache.get(key)
        if mask is None:
            if len(self._mask_cache) > 64:
                self._mask_cache.clear()
            mask = self._mask_cache[key] = self.rows.mask(modalities, tiers, session)
        return mask

    def vector_search(self, query: np.ndarray, n: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` nearest allowed slots (cosine) and their similarities, best first."""
        return self.vectors.search(query, n, allowed, self.cfg.ivf_nprobe, self.cfg.exact_filtered_rows)

    def nbytes(self) -> int:
        """Approximate bytes held by the index (rows, vectors, postings; Python dicts not counted)."""
        return self.rows.nbytes + self.vectors.nbytes + self.text.nbytes
