"""The index's row store: one *slot* per table row it has seen, its payload kept as Arrow chunks.

Slots are numbered in the order rows were loaded and never reused; a row rewritten or deleted in the table
only turns its slot dead (``live`` mask) until the next rebuild renumbers everything. Filter columns
(modality, tier, session) are held as small integer codes so filters are numpy masks, not table queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from memory.config import MODALITIES, TIERS

__all__ = ["PAYLOAD_COLUMNS", "GrowArray", "RowStore", "concat_ranges"]

PAYLOAD_COLUMNS = ["id", "content", "modality", "session", "tier", "metadata", "association_links"]
_NO_SESSION = -1


class GrowArray:
    """A numpy array with amortised O(1) appends (capacity doubling); ``view`` is the filled prefix."""

    def __init__(self, dtype: Any, width: int | None = None, capacity: int = 1024) -> None:
        shape = (capacity,) if width is None else (capacity, width)
        self._data = np.zeros(shape, dtype=dtype)
        self._n = 0

    @classmethod
    def wrap(cls, array: np.ndarray) -> GrowArray:
        """A full GrowArray over ``array`` as is (e.g. a memory map): no copy until the first append grows it."""
        grow = cls.__new__(cls)
        # a plain ndarray over the same buffer: every slice of an np.memmap goes through its Python-level
        # __getitem__ / __array_finalize__ (an IVF probe slices ~33 lists: 0.3 ms a search at 100k)
        grow._data, grow._n = np.asarray(array), len(array)
        return grow

    def __len__(self) -> int:
        return self._n

    @property
    def view(self) -> np.ndarray:
        """The filled part (a view: valid until the next append)."""
        return self._data[: self._n]

    def append(self, values: np.ndarray) -> None:
        """Append rows (1-d values, or [m, width] rows)."""
        values = np.asarray(values, dtype=self._data.dtype)
        need = self._n + len(values)
        if need > len(self._data):
            grown = np.zeros((max(need, 2 * len(self._data)), *self._data.shape[1:]), dtype=self._data.dtype)
            grown[: self._n] = self._data[: self._n]
            self._data = grown
        self._data[self._n : need] = values
        self._n = need


def concat_ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``starts[i] .. starts[i] + counts[i]`` for every i, concatenated, in one vectorised step (int64)."""
    starts, counts = np.asarray(starts, dtype=np.int64), np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.repeat(starts - (ends - counts), counts) + np.arange(int(ends[-1]) if len(ends) else 0)


def _codes(column: pa.ChunkedArray | pa.Array, values: Sequence[str]) -> np.ndarray:
    """Index of each cell in ``values`` (len(values) for a value outside them)."""
    idx = pc.index_in(column, value_set=pa.array(values, pa.string()))
    return pc.fill_null(idx, len(values)).to_numpy().astype(np.uint8)


def _link_arrays(payload: pa.Table) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """A chunk's links as (offsets by row, flat target ids, flat weights)."""
    links = payload.column("association_links").chunk(0) if payload.num_rows else pa.array(
        [], payload.schema.field("association_links").type)
    lengths = pc.fill_null(pc.list_value_length(links), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(links)
    return (np.concatenate([[0], np.cumsum(lengths)]), flat.field("target"),
            flat.field("weight").to_numpy(zero_copy_only=False).astype(np.float32))


class RowStore:
    """Payload, filter codes, liveness and the id -> slot map of every row the index holds."""

    def __init__(self) -> None:
        self._chunks: list[pa.Table] = []
        self._starts: list[int] = []
        self._links: list[tuple[np.ndarray, pa.Array, np.ndarray]] = []  # per chunk: offsets, targets, weights
        self.live = GrowArray(np.bool_)
        self.rowid = GrowArray(np.uint64)
        self.modality = GrowArray(np.uint8)
        self.tier = GrowArray(np.uint8)
        self.session = GrowArray(np.int32)
        self._session_codes: dict[str, int] = {}
        self.slot_of: dict[str, int] = {}
        self._ids: list[str] = []  # by slot: the same str objects as slot_of's keys, 8 bytes a slot
        self.n_live = 0

    def __len__(self) -> int:
        return len(self.live)

    def append(self, rows: pa.Table) -> np.ndarray:
        """Add ``rows`` (``PAYLOAD_COLUMNS`` plus ``_rowid``) as new live slots; returns the slot numbers."""
        start = len(self)
        n = rows.num_rows
        payload = rows.select(PAYLOAD_COLUMNS).combine_chunks()
        self._chunks.append(payload)
        self._starts.append(start)
        self._links.append(_link_arrays(payload))
        self.live.append(np.ones(n, np.bool_))
        self.rowid.append(rows.column("_rowid").to_numpy().astype(np.uint64))
        self.modality.append(_codes(payload.column("modality"), MODALITIES))
        self.tier.append(_codes(payload.column("tier"), TIERS))
        sessions = payload.column("session").to_pylist()
        codes = self._session_codes
        self.session.append(np.array([_NO_SESSION if s is None else codes.setdefault(s, len(codes))
                                      for s in sessions], np.int32))
        slots = np.arange(start, start + n, dtype=np.int64)
        ids = payload.column("id").to_pylist()
        self._ids.extend(ids)
        self.slot_of.update(zip(ids, slots.tolist(), strict=True))
        self.n_live += n
        return slots

    _ARRAYS = ("live", "rowid", "modality", "tier", "session")

    def snapshot(self) -> tuple[dict[str, np.ndarray], pa.Table, dict[str, Any]]:
        """(per-slot arrays, the payload of every slot as one table, scalars) for :mod:`memory.index.snapshot`."""
        arrays = {name: getattr(self, name).view for name in self._ARRAYS}
        payload = pa.concat_tables(self._chunks) if self._chunks else None
        return arrays, payload, {"sessions": list(self._session_codes), "n_live": self.n_live}

    @classmethod
    def from_snapshot(cls, arrays: dict[str, np.ndarray], payload: pa.Table | None,
                      meta: dict[str, Any]) -> RowStore:
        """The row store :meth:`snapshot` described, over the (mapped) arrays and payload as they are."""
        store = cls()
        for name in cls._ARRAYS:
            setattr(store, name, GrowArray.wrap(arrays[name]))
        store._session_codes = {s: code for code, s in enumerate(meta["sessions"])}
        store.n_live = int(meta["n_live"])
        if payload is not None and payload.num_rows:
            store._chunks, store._starts = [payload], [0]
            store._links = [_link_arrays(payload)]
            store._ids = payload.column("id").to_pylist()
            live = np.flatnonzero(store.live.view).tolist()
            ids = store._ids
            store.slot_of = {ids[slot]: slot for slot in live}  # dead slots left the map when they died
        return store

    def kill(self, slots: np.ndarray) -> np.ndarray:
        """Mark ``slots`` dead (rows deleted or rewritten in the table); returns those that were live."""
        slots = np.asarray(slots, dtype=np.int64)
        slots = slots[self.live.view[slots]]
        if len(slots):
            self.live.view[slots] = False
            self.n_live -= len(slots)
            dead = set(slots.tolist())
            for mid in self.column(slots, "id"):
                if self.slot_of.get(mid) in dead:  # a rewritten row's id already points at its new slot
                    del self.slot_of[mid]
        return slots

    def column(self, slots: np.ndarray, name: str) -> list[Any]:
        """One payload column for ``slots`` (in order): one Arrow ``take`` per chunk touched, not one per slot."""
        slots = np.asarray(slots, dtype=np.int64)
        if name == "id":  # the hot column of every search
            ids = self._ids
            return [ids[slot] for slot in slots.tolist()]
        out: list[Any] = [None] * len(slots)
        for chunk, pos, local in self._by_chunk(slots):
            values = self._chunks[chunk].column(name).take(pa.array(local)).to_pylist()
            for p, value in zip(pos.tolist(), values, strict=True):
                out[p] = value
        return out

    def _by_chunk(self, slots: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
        """``slots`` grouped by the payload chunk holding them: (chunk, positions in ``slots``, offsets in the
        chunk) for each chunk touched."""
        if len(slots) == 0:
            return []
        starts = np.asarray(self._starts, dtype=np.int64)
        chunk_of = np.searchsorted(starts, slots, side="right") - 1
        groups = []
        for chunk in np.unique(chunk_of).tolist():
            pos = np.flatnonzero(chunk_of == chunk)
            groups.append((chunk, pos, slots[pos] - starts[chunk]))
        return groups

    def records(self, slots: Sequence[int], names: Sequence[str]) -> list[dict[str, Any]]:
        """Payload columns ``names`` of ``slots`` as dicts, in order: one Arrow ``take`` per column and chunk
        (a search's hits, without converting the links column)."""
        slots = np.asarray(slots, dtype=np.int64)
        columns = {name: self.column(slots, name) for name in names}
        return [{name: columns[name][i] for name in names} for i in range(len(slots))]

    def links_many(self, slots: Sequence[int]) -> list[tuple[list[str], list[float]]]:
        """The stored links of ``slots``: (target ids, weights) each, in stored order. One Arrow ``take`` of the
        target ids per chunk touched, not a slice and conversion per slot (a search's link scoring reads ~150)."""
        slots = np.asarray(slots, dtype=np.int64)
        out: list[tuple[list[str], list[float]]] = [([], [])] * len(slots)
        for chunk, pos, local in self._by_chunk(slots):
            offsets, targets, weights = self._links[chunk]
            lo, counts = offsets[local], offsets[local + 1] - offsets[local]
            flat = concat_ranges(lo, counts)
            ids = targets.take(pa.array(flat)).to_pylist() if len(flat) else []
            values = weights[flat].tolist()
            begin = 0
            for p, end in zip(pos.tolist(), np.cumsum(counts).tolist(), strict=True):
                out[p] = (ids[begin:end], values[begin:end])
                begin = end
        return out

    def has_session(self, session: str) -> bool:
        """Whether any row (live or dead) ever held ``session``; False means no live row holds it."""
        return session in self._session_codes

    def mask(self, modalities: Sequence[str] | None, tiers: Sequence[str] | None,
             session: str | None) -> np.ndarray:
        """Live slots passing the filters (a fresh bool array)."""
        allowed = self.live.view.copy()
        if modalities:
            allowed &= np.isin(self.modality.view, [MODALITIES.index(m) for m in modalities])
        if tiers:
            allowed &= np.isin(self.tier.view, [TIERS.index(t) for t in tiers])
        if session is not None:
            code = self._session_codes.get(session)
            if code is None:
                allowed[:] = False
            else:
                allowed &= self.session.view == code
        return allowed

    @property
    def nbytes(self) -> int:
        """Approximate bytes held (payload chunks and per-slot arrays; the id map is not counted)."""
        arrays = (self.live, self.rowid, self.modality, self.tier, self.session)
        return sum(t.nbytes for t in self._chunks) + sum(a.view.nbytes for a in arrays)
