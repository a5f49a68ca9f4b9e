"""The store's housekeeping: access-stat flushes, tiering, eviction, compression, indexes and ``stats()``.

``maintain()`` runs, in order: flush access statistics; evict past capacity (configured eviction policy);
move cold memories to ``archived`` through the compression policy and bring re-read archived memories back
to ``short``; compact the table's small fragments (``optimize``). Every tier change is logged and appended to
the ``tier_log`` table. No Lance vector or full-text index is built: search reads the store's own index
(:mod:`memory.index`), so such an index would cost minutes at 1M rows and serve nothing.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from memory.config import MODALITIES, TIERS
from memory.lance_io import open_table
from memory.policies import get_compression_policy, get_eviction_policy, select_evictions
from memory.retrieval import quote
from memory.tiering import TierChange, hot_mask, tfidf_salience

__all__ = ["MaintenanceMixin"]

logger = logging.getLogger(__name__)

# stores whose background flush may be running: the flusher is a daemon thread, and one still inside a Lance
# write while the interpreter finalizes crashes the process at exit (Lance's threads call back into Python:
# "PyGILState_Release: thread state ... must be current", seen in a script that searched a 100k store and exited
# without close()); atexit runs before daemon threads are stopped, so each running flush is let finish
_FLUSHING: weakref.WeakSet[Any] = weakref.WeakSet()


@atexit.register
def _finish_flushes_at_exit() -> None:
    for store in list(_FLUSHING):
        store._join_flusher()
_TIER_LOG = pa.schema([("id", pa.string()), ("from_tier", pa.string()), ("to_tier", pa.string()),
                       ("reason", pa.string()), ("at", pa.float64())])
_LIGHT = ["id", "created_at", "last_access", "access_count", "importance", "tier", "content", "content_zstd",
          "embedding_q", "metadata"]


class MaintenanceMixin:
    """Housekeeping methods of :class:`memory.MemoryStore` (kept apart so each module holds one concern)."""

    # ------------------------------------------------------------------ access statistics
    def _maybe_flush(self) -> None:
        """Flush when due: on a background thread (so a search never pays for the write and the index catch-up
        it causes: p99 140-470 ms at 100k memories when it ran inline), or inline when configured so."""
        if not self._access.due():
            return
        if not self.config.tiering.background_flush:
            self.flush()
            return
        with self._flush_guard:
            if self._flusher is not None and self._flusher.is_alive():
                return
            self._flusher = threading.Thread(target=self._background_flush, name="memory-access-flush",
                                             daemon=True)
            _FLUSHING.add(self)
            self._flusher.start()

    def _background_flush(self) -> None:
        try:
            self._wait_for_quiet()
            self.flush()
            if self._index is not None:
                self._index.refresh()  # catch the index up here, not in the next search
        except Exception:  # the records went back to the buffer; the next flush retries them
            logger.exception("background flush of access statistics failed; kept for the next flush")

    def _wait_for_quiet(self) -> None:
        """Hold a due background flush until no search has run for ``access_flush_quiet_s`` (a burst of searches
        does not share the cores with the merge), at most ``access_flush_seconds``, or until close() / exit."""
        cfg = self.config.tiering
        deadline = time.monotonic() + cfg.access_flush_seconds
        while not self._flush_now.is_set():
            now = time.monotonic()
            wait = min(self._last_search + cfg.access_flush_quiet_s, deadline) - now
            if wait <= 0:
                return
            self._flush_now.wait(wait)

    def _join_flusher(self) -> None:
        flusher = self._flusher
        if flusher is not None:
            self._flush_now.set()  # a flush waiting for a quiet moment runs now
            flusher.join()
            self._flush_now.clear()

    def flush(self) -> int:
        """Write the buffered access statistics in one merge; returns how many memories were updated."""
        with self._lock:  # one flush at a time: the background one, maintain() or close()
            if self._table is None:
                return 0
            pending = self._access.drain()
            if not pending:
                return 0
            try:
                current = self._rows_by_id(list(pending), ["id", "access_count", "last_access"])
                ids = [mid for mid in pending if mid in current]  # deleted meanwhile: nothing to count
                if not ids:
                    self._access.settle()
                    return 0
                self._update_rows(
                    {"id": ids,
                     "access_count": [current[i]["access_count"] + pending[i][0] for i in ids],
                     "last_access": [max(current[i]["last_access"], pending[i][1]) for i in ids]},
                    "flush access statistics")
                self._access.settle()
            except BaseException:
                self._access.restore(pending)  # a failed flush keeps its records for the next one
                raise
            logger.debug("flushed access statistics of %d memories", len(ids))
            return len(ids)

    # ------------------------------------------------------------------ maintain
    def _scan(self) -> pa.Table:
        rows = self._table.search().select(_LIGHT).limit(None).to_arrow()
        size = (pc.fill_null(pc.binary_length(rows.column("content").cast(pa.binary())), 0)
                .to_numpy().astype(np.int64)
                + pc.fill_null(pc.binary_length(rows.column("content_zstd")), 0).to_numpy()
                + pc.fill_null(pc.binary_length(rows.column("embedding_q")), 0).to_numpy()
                + pc.fill_null(pc.binary_length(rows.column("metadata").cast(pa.binary())), 0).to_numpy()
                + 4 * (self.dim or 0) + 64)  # + float32 embedding and fixed-width columns
        return rows.append_column("nbytes", pa.array(size, pa.int64()))

    def maintain(self, now: float | None = None) -> dict[str, Any]:
        """Flush, evict, tier and compress, index; returns a report (counts and the tier changes)."""
        now = time.time() if now is None else now
        report: dict[str, Any] = {"flushed": self.flush(), "evicted": [], "archived": [], "restored": []}
        if self._table is None:
            return report
        tcfg = self.config.tiering
        changes: list[TierChange] = []
        with self._lock:
            rows = self._scan()
            if tcfg.eviction_policy and (tcfg.capacity_rows or tcfg.capacity_bytes):
                evict = select_evictions(get_eviction_policy(tcfg.eviction_policy), rows,
                                         tcfg.capacity_rows, tcfg.capacity_bytes)
                tier_of = dict(zip(rows.column("id").to_pylist(), rows.column("tier").to_pylist(), strict=True))
                for start in range(0, len(evict), 1000):
                    clause = f"id IN ({', '.join(quote(i) for i in evict[start:start + 1000])})"
                    self._commit(lambda clause=clause, table=self._table: table.delete(clause), "evict memories")
                changes += [TierChange(i, tier_of[i], "evicted", f"eviction:{tcfg.eviction_policy}", now)
                            for i in evict]
                report["evicted"] = evict
                if evict:
                    rows = rows.filter(pc.invert(pc.is_in(rows.column("id"), pa.array(evict))))
            if tcfg.compression_policy and rows.num_rows:
                changes += self._retier(rows, now)
            if changes:
                log = pa.Table.from_pylist([asdict(c) for c in changes], schema=_TIER_LOG)
                log_table = open_table(self._db, "tier_log", self.path) or self._db.create_table(
                    "tier_log", schema=_TIER_LOG, exist_ok=True)
                self._commit(lambda: log_table.add(log), "append tier log")
                for c in changes:
                    logger.info("memory %s: tier %s -> %s (%s)", c.id, c.from_tier, c.to_tier, c.reason)
            report["archived"] = [c.id for c in changes if c.to_tier == "archived"]
            report["restored"] = [c.id for c in changes if c.reason == "re-read"]
            report["index"] = self._maintain_indexes()
        return report

    def _retier(self, rows: pa.Table, now: float) -> list[TierChange]:
        tcfg = self.config.tiering
        policy = get_compression_policy(tcfg.compression_policy, embedding_codec=tcfg.embedding_codec,
                                        zstd_level=tcfg.zstd_level)
        created = rows.column("created_at").to_numpy()
        last = rows.column("last_access").to_numpy()
        hot = hot_mask(created, last, tfidf_salience(rows.column("content").to_pylist()), now,
                       tcfg.hot_window_s, tcfg.salience_quantile)
        tiers = np.asarray(rows.column("tier").to_pylist(), dtype=object)
        ids = np.asarray(rows.column("id").to_pylist(), dtype=object)
        to_archive = ids[(tiers == "short") & ~hot].tolist()
        to_restore = ids[(tiers == "archived") & (now - last <= tcfg.hot_window_s)].tolist()
        if not to_archive and not to_restore:
            return []
        full = self._rows_by_id(to_archive + to_restore)
        updates = [{"id": i, **policy.compress(full[i])} for i in to_archive if i in full]
        updates += [{"id": i, **policy.restore(full[i])} for i in to_restore if i in full]
        keep = ["id", "content", "summary", "content_zstd", "embedding_q", "embedding_codec", "tier"]
        self._update_rows({c: [u.get(c, full[u["id"]][c]) for u in updates] for c in keep}, "apply tiering")
        return ([TierChange(i, "short", "archived", f"cold:{policy.name}", now) for i in to_archive]
                + [TierChange(i, "archived", "short", "re-read", now) for i in to_restore])

    def _maintain_indexes(self) -> str:
        table = self._table
        self._commit(lambda: table.optimize(), "compact the table")  # also folds new rows into the id index
        return "optimized"

    # ------------------------------------------------------------------ stats / close
    def stats(self) -> dict[str, Any]:
        """Row counts by tier and modality (every tier and modality listed, empty ones as 0), dimension,
        version, indexes, bytes on disk, pending accesses."""
        out: dict[str, Any] = {"path": str(self.path), "rows": len(self), "dim": self.dim, "version": self.version,
                               "pending_access": len(self._access), "tiers": dict.fromkeys(TIERS, 0),
                               "modalities": dict.fromkeys(MODALITIES, 0), "indexes": []}
        if self._table is None:
            return out
        rows = self._table.search().select(["tier", "modality"]).limit(None).to_arrow()
        for col in ("tier", "modality"):
            counts = pc.value_counts(rows.column(col)).to_pylist() if rows.num_rows else []
            out["tiers" if col == "tier" else "modalities"].update({d["values"]: d["counts"] for d in counts})
        out["indexes"] = [f"{idx.name}:{idx.index_type}" for idx in self._table.list_indices()]
        if isinstance(self.path, Path):  # an object-store URI has no local files to count
            table_dir = self.path / f"{self.config.table}.lance"
            out["disk_bytes"] = sum(p.stat().st_size for p in table_dir.rglob("*") if p.is_file())
        return out

    def close(self) -> None:
        """Flush buffered access statistics and save the search index beside the table (when it changed);
        the store stays usable (a later close flushes again)."""
        self._join_flusher()
        self.flush()
        if self._index is not None:
            self._index.refresh()  # the flush above is a write: save the index as of the latest version
            self._index.save_snapshot()
