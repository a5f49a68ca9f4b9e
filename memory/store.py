"""``MemoryStore``: memories in one LanceDB table, found by meaning, kept small by ``maintain()``.

Writes go through :func:`memory.lance_io.commit_with_retry` (optimistic concurrency: a lost commit race is
retried, never dropped). Reads record access statistics in memory; they reach the table in one merge per
flush (on a size/interval trigger, ``maintain()`` and ``close()``), never one write per read.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import zstandard

from memory.config import MODALITIES, TIERS, MemoryConfig, load_memory_config
from memory.embedder import Embedder, default_embedder, normalise_rows
from memory.errors import (
    EmbedderOutputError,
    EmbeddingDimensionError,
    EmptyContentError,
    InvalidMetadataError,
    InvalidSearchError,
    MemoryNotFoundError,
    UnknownModalityError,
)
from memory.facade import FacadeMixin
from memory.index import MemoryIndex
from memory.index.blas import one_blas_thread
from memory.lance_io import commit_with_retry, connect, open_table
from memory.links import coerce_links, merge_links, remove_links
from memory.maintenance import MaintenanceMixin
from memory.media import MediaEmbedder, media_content
from memory.retrieval import SEARCH_MODES, quote, run_search
from memory.schema import Hit, Link, Memory, decode_metadata, links_from_arrow, memory_schema, table_dimension
from memory.tiering import AccessBuffer

__all__ = ["MemoryStore"]

logger = logging.getLogger(__name__)
_ITEM_KEYS = {"content", "modality", "session", "metadata", "links", "importance", "embedding", "id", "tier",
              "source_ids", "data", "sampling_rate"}


def _check_tier(tier: object) -> None:
    if tier not in TIERS:
        raise InvalidMetadataError(f"memory tier {tier!r} is not one of {list(TIERS)}")


def _check_k(k: object) -> None:
    """``k`` must be a positive int (numpy ints too); bools are ints to Python but never a meant count."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise InvalidSearchError(f"search k={k!r} is a {type(k).__name__}; give a positive int, e.g. k=10")
    if k <= 0:
        raise InvalidSearchError(f"search k={k} must be at least 1; give a positive int, e.g. k=10")


class MemoryStore(FacadeMixin, MaintenanceMixin):
    """A persistent, searchable memory of texts and media pointers with association links and tiers.

    ``config`` defaults to :func:`memory.config.load_memory_config` (the ``memory`` section of
    ``arrowengine.yaml`` and ``ARROWENGINE_MEMORY_*`` variables); ``path`` overrides its path. ``embedder`` is
    anything with ``encode(list[str]) -> ndarray`` (default: arrowengine's ``TextEncoder`` on
    ``models/all-MiniLM-L6-v2`` in its default, CPU-selected precision, loaded on first use). Search runs on an
    in-process index (:class:`memory.index.MemoryIndex`) built on first use (or loaded from the copy the last
    ``close()`` saved beside the table) and kept in sync with the table. ``path`` may be an object-store URI
    (``s3://bucket/prefix``; endpoint and credentials from the usual ``AWS_*`` variables).

    Audio and image memories (:meth:`add_audio`, :meth:`add_image`, or ``data=`` in :meth:`add_many`) and
    audio, image or composite queries (``search(audio=..., image=...)``) are embedded by ``joint``, a
    :class:`multimodal.JointEncoder` (default: ``models/joint-fusion``, loaded on first use) whose space is the
    text space, so all modalities are searched together.
    """

    def __init__(
        self, path: str | Path | None = None, embedder: Embedder | None = None, config: MemoryConfig | None = None,
        *, joint: Any | None = None,
    ) -> None:
        cfg = config or load_memory_config()
        if path is not None:
            cfg = dataclasses.replace(cfg, path=path)  # __post_init__ keeps a URI a str, a directory a Path
        self.config = cfg
        self.path = cfg.path
        self._db = connect(cfg.path, cfg.read_consistency_s)
        self._table = open_table(self._db, cfg.table, cfg.path)
        self._embedder = embedder
        self._media = MediaEmbedder(joint, cfg.models_dir, cfg.joint_model)
        self._access = AccessBuffer(cfg.tiering.access_flush_every, cfg.tiering.access_flush_seconds)
        self._session_tail: dict[str, str] = {}
        self._lock = threading.RLock()
        self._flush_guard = threading.Lock()
        self._flusher: threading.Thread | None = None
        self._last_search = time.monotonic()  # a due background flush waits for a quiet moment after it
        self._flush_now = threading.Event()  # set by close() / exit: a waiting flush stops waiting
        self._zstd = zstandard.ZstdDecompressor()
        self._index: MemoryIndex | None = None
        self._dim: int | None = None

    # ------------------------------------------------------------------ plumbing
    @property
    def dim(self) -> int | None:
        """The embedding dimension of the table (None until the first memory is added)."""
        if self._dim is None and self._table is not None:
            self._dim = table_dimension(self._table.schema)  # fixed once the table exists; schema() costs ~1 ms
        return self._dim

    @property
    def version(self) -> int:
        """The table's current Lance version (0 before the table exists)."""
        return 0 if self._table is None else self._table.version

    def _commit(self, fn: Any, what: str) -> Any:
        try:
            return commit_with_retry(fn, what, self.config.commit_retries)
        finally:
            if self._index is not None:
                self._index.mark_stale()  # the next search catches up on this write

    def _search_index(self) -> MemoryIndex:
        """The in-process index of the table, built on first use and brought to the latest version."""
        if self._index is None:
            path, name = self.config.path, self.config.table
            # its own connection with read consistency 0: it must see every commit, whatever the store's setting
            # a saved copy beside a local table lets a new process skip the full scan (memory.index.snapshot)
            snapshots = path / f"{name}.index" if isinstance(path, Path) else None
            self._index = MemoryIndex(lambda: connect(path, 0.0).open_table(name), self.dim, self.config.retrieval,
                                      snapshot_dir=snapshots)
        self._index.refresh()
        return self._index

    def _embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = default_embedder(self.config.models_dir, self.config.text_model)
        out = np.asarray(self._embedder.encode(texts), dtype=np.float32)
        rows = out.shape[0] if out.ndim == 2 else -1
        if rows != len(texts):
            # checked before anything is written: a misaligned batch would store texts under others' vectors
            got = f"{rows} rows" if rows >= 0 else f"an array of shape {out.shape}"
            raise EmbedderOutputError(
                f"text embedder {type(self._embedder).__name__} returned {got} for {len(texts)} texts; "
                "encode(texts) must return one row per text, shape [len(texts), dim]"
            )
        return out

    def _ensure_table(self, dim: int) -> Any:
        if self._table is None:
            with self._lock:
                from lancedb.index import BTree

                table = self._db.create_table(self.config.table, schema=memory_schema(dim), exist_ok=True)
                if not table.list_indices():
                    # the one Lance index: id lookups (get, links, merges); search reads memory.index, never Lance's
                    self._commit(lambda: table.create_index("id", config=BTree(), replace=False), "create id index")
                self._table = table
        if self.dim != dim:
            raise EmbeddingDimensionError(
                f"embedding dimension {dim} does not match the store's table dimension {self.dim} "
                f"({str(self.path)!r}); use the same embedder the store was created with, or a new store path"
            )
        return self._table

    def _rows_by_id(self, ids: Sequence[str], columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
        if self._table is None or not ids:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            query = self._table.search().where(f"id IN ({', '.join(quote(i) for i in chunk)})").limit(None)
            if columns:
                query = query.select(columns)
            out.update({row["id"]: row for row in query.to_arrow().to_pylist()})
        return out

    def _require(self, ids: Sequence[str], columns: list[str] | None = None) -> dict[str, dict[str, Any]]:
        rows = self._rows_by_id(list(dict.fromkeys(ids)), columns)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise MemoryNotFoundError(f"memory id(s) {missing} not found in store {str(self.path)!r}")
        return rows

    def _update_rows(self, columns: Mapping[str, list[Any]], what: str) -> None:
        """Overwrite the given columns of existing rows (``columns["id"]`` names them) in one merge commit."""
        schema = pa.schema([self._table.schema.field(name) for name in columns])
        data = pa.table(dict(columns), schema=schema)
        table = self._table
        self._commit(lambda: table.merge_insert("id").when_matched_update_all().execute(data), what)

    def _write_links(self, updates: Mapping[str, list[dict[str, Any]]]) -> None:
        """Replace the ``association_links`` of existing rows (one merge for all of them)."""
        if updates:
            self._update_rows({"id": list(updates), "association_links": list(updates.values())}, "update links")

    # ------------------------------------------------------------------ writes
    def _spec(self, item: str | Mapping[str, Any]) -> dict[str, Any]:
        spec = {"content": item} if isinstance(item, str) else dict(item)
        unknown = set(spec) - _ITEM_KEYS
        if unknown:
            raise InvalidMetadataError(f"memory item has unknown keys {sorted(unknown)}; allowed: {sorted(_ITEM_KEYS)}")
        modality = spec.setdefault("modality", "text")
        if modality not in MODALITIES:
            raise UnknownModalityError(f"modality {modality!r} is not one of {list(MODALITIES)}")
        if modality != "text" and spec.get("embedding") is None:
            if spec.get("data") is None:
                raise UnknownModalityError(
                    f"an {modality} memory ({spec.get('content')!r}) needs its input or a vector: use "
                    f"store.add_{modality}(...) (data=... in add_many), or pass embedding=... in the joint space"
                )
            spec["content"] = media_content(modality, spec["data"], spec.get("content"))
        elif modality == "text" and spec.get("data") is not None:
            raise InvalidMetadataError("data= is for audio and image memories; a text memory's data is its content")
        content = spec.get("content")
        if not isinstance(content, str) or not content.strip():
            raise EmptyContentError(f"memory content {content!r} is empty or not a string; give non-empty text")
        metadata = spec.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            raise InvalidMetadataError(f"metadata {metadata!r} must be a dict")
        try:
            spec["metadata"] = json.dumps(dict(metadata), ensure_ascii=False, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidMetadataError(f"metadata {metadata!r} is not JSON-serialisable ({exc})") from exc
        importance = float(spec.get("importance", 0.5))
        if not 0.0 <= importance <= 1.0:
            raise InvalidMetadataError(f"importance {importance} is outside [0, 1]")
        spec["importance"] = importance
        spec["links"] = coerce_links(spec.get("links"))
        _check_tier(spec.setdefault("tier", "short"))
        mid = spec.get("id")
        if mid is not None and (not isinstance(mid, str) or not mid):
            raise InvalidMetadataError(f"memory id {mid!r} must be a non-empty string (or left out for a new uuid)")
        spec["source_ids"] = [str(s) for s in spec.get("source_ids") or ()]
        return spec

    def add(self, content: str, *, modality: str = "text", session: str | None = None,
            metadata: Mapping[str, Any] | None = None, links: Iterable[Any] | None = None,
            importance: float = 0.5, embedding: np.ndarray | None = None) -> str:
        """Store one memory and return its id (see :meth:`add_many`)."""
        item = {"content": content, "modality": modality, "session": session, "metadata": metadata,
                "links": links, "importance": importance, "embedding": embedding}
        return self.add_many([item])[0]

    def add_audio(self, audio: Any, *, content: str | None = None, sampling_rate: int = 16_000,
                  **fields: Any) -> str:
        """Store speech (a WAV path or a 1-D waveform at ``sampling_rate``) embedded in the joint space.

        ``content`` is what the memory shows (default: the path); ``fields`` as in :meth:`add` (session,
        metadata, links, importance). The samples themselves are not stored.
        """
        return self.add_many([{"content": content, "modality": "audio", "data": audio, "sampling_rate": sampling_rate,
                               **fields}])[0]

    def add_image(self, image: Any, *, content: str | None = None, **fields: Any) -> str:
        """Store an image (a path, PIL image or array) embedded in the joint space; see :meth:`add_audio`."""
        return self.add_many([{"content": content, "modality": "image", "data": image, **fields}])[0]

    def add_many(self, items: Iterable[str | Mapping[str, Any]]) -> list[str]:
        """Store many memories with one embedding batch and one append; return their ids in order.

        Each item is a string or a dict with ``content`` and optionally ``modality``, ``session``, ``metadata``,
        ``links``, ``importance``, ``embedding``; an ``audio`` or ``image`` item without ``embedding`` gives its
        input as ``data`` (and ``sampling_rate`` for a waveform) and is embedded by the joint encoder.
        Consecutive memories of a session are linked, and so are near-duplicates (cosine >=
        ``near_duplicate_threshold``); hand-given links are stored on both ends.
        ``id``, ``tier`` (default ``short``) and ``source_ids`` are for writers that derive their own ids, such as
        the consolidator (an id that already exists is refused: check first).
        """
        specs = [self._spec(item) for item in items]
        if not specs:
            return []
        vectors: list[np.ndarray | None] = [None] * len(specs)
        media: dict[tuple[str, int], list[int]] = {}  # one joint-encoder batch per modality and sample rate
        for i, s in enumerate(specs):
            if s["modality"] != "text" and s.get("embedding") is None:
                media.setdefault((s["modality"], int(s.get("sampling_rate") or 16_000)), []).append(i)
        for (modality, rate), idx in media.items():  # before any text work: a missing joint model fails first
            encoded = self._media.embed(modality, [specs[i]["data"] for i in idx], rate)
            for row, i in enumerate(idx):
                specs[i]["embedding"] = encoded[row]
        todo = [i for i, s in enumerate(specs) if s.get("embedding") is None]
        if todo:
            encoded = normalise_rows(self._embed([specs[i]["content"] for i in todo]), self.dim, "text embedder")
            for row, i in enumerate(todo):
                vectors[i] = encoded[row]
        for i, s in enumerate(specs):
            if vectors[i] is None:
                vectors[i] = normalise_rows(s["embedding"], self.dim, f"memory {s['content'][:40]!r}")[0]
        dims = {len(v) for v in vectors}
        if len(dims) > 1:
            raise EmbeddingDimensionError(f"add_many got embeddings of different dimensions {sorted(dims)}")
        matrix = np.stack(vectors)
        with self._lock:
            table = self._ensure_table(matrix.shape[1])
            ids = [s.get("id") or uuid.uuid4().hex for s in specs]
            given = [s["id"] for s in specs if s.get("id")]
            taken = sorted(set(self._rows_by_id(given, ["id"]))) if given else []
            if taken or len(set(ids)) != len(ids):
                raise InvalidMetadataError(f"memory id(s) {taken or ids} already exist or repeat; give new ids")
            new_links, back_links = self._auto_links(specs, ids, matrix)
            # the rows that get a link's back half already exist: their links come from the index, which the link
            # search above brought to the latest version (a table query here was 3% of add_many's time)
            current = self._links_of(list(back_links)) if back_links else {}
            now = time.time()
            rows = [
                {"id": mid, "created_at": now + i * 1e-6, "session": s.get("session"), "modality": s["modality"],
                 "content": s["content"], "summary": None, "embedding": matrix[i],
                 "association_links": merge_links([], new_links[mid]), "tier": s["tier"], "access_count": 0,
                 "last_access": 0.0, "importance": s["importance"], "source_ids": s["source_ids"],
                 "metadata": s["metadata"],
                 "content_zstd": None, "embedding_q": None, "embedding_codec": None}
                for i, (mid, s) in enumerate(zip(ids, specs, strict=True))
            ]
            data = pa.Table.from_pylist(rows, schema=table.schema)
            self._commit(lambda: table.add(data), f"append {len(rows)} memories")
            if back_links:
                self._write_links({t: merge_links(current[t], ls) for t, ls in back_links.items() if t in current})
            for mid, s in zip(ids, specs, strict=True):
                if s.get("session") is not None:
                    self._session_tail[s["session"]] = mid
        logger.debug("stored %d memories (version %d)", len(ids), table.version)
        return ids

    def _links_of(self, ids: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
        """The stored ``association_links`` of the existing rows among ``ids`` (from the refreshed index)."""
        index = self._search_index()
        with index.lock:
            found = [(mid, index.rows.slot_of[mid]) for mid in ids if mid in index.rows.slot_of]
            links = index.rows.column(np.asarray([slot for _, slot in found], dtype=np.int64), "association_links")
        return {mid: list(value or []) for (mid, _), value in zip(found, links, strict=True)}

    def _tail_of(self, session: str) -> str | None:
        if session not in self._session_tail and self._table is not None:
            if not self._search_index().rows.has_session(session):
                return None  # a new session (the usual case in add_many): no table query

            rows = (self._table.search().where(f"session = {quote(session)}").select(["id", "created_at"])
                    .limit(None).to_arrow())
            if rows.num_rows:
                last = int(np.argmax(rows.column("created_at").to_numpy()))
                self._session_tail[session] = rows.column("id")[last].as_py()
        return self._session_tail.get(session)

    def _auto_links(self, specs: list[dict[str, Any]], ids: list[str], matrix: np.ndarray
                    ) -> tuple[dict[str, list[Link]], dict[str, list[Link]]]:
        """Links for the new rows, and links to add to existing rows (their symmetric halves)."""
        cfg = self.config
        new: dict[str, list[Link]] = {mid: [] for mid in ids}
        back: dict[str, list[Link]] = {}
        batch = set(ids)

        def both(a: str, b: str, weight: float, kind: str) -> None:
            new[a].append(Link(b, weight, kind))
            if b in batch:
                new[b].append(Link(a, weight, kind))
            else:
                back.setdefault(b, []).append(Link(a, weight, kind))

        targets = [link.target for s in specs for link in s["links"] if link.target not in batch]
        if targets:  # links between items of this batch need no lookup
            self._require(targets, ["id"])
        tails: dict[str, str] = {}
        for mid, s in zip(ids, specs, strict=True):
            for link in s["links"]:
                both(mid, link.target, link.weight, link.kind)
            session = s.get("session")
            if session is not None:
                prev = tails.get(session) or self._tail_of(session)
                if prev is not None:
                    both(mid, prev, cfg.session_link_weight, "session")
                tails[session] = mid
        if cfg.near_duplicate_threshold is not None:
            for a, b, cos in self._near_duplicates(ids, matrix):
                both(a, b, cfg.duplicate_link_weight, "duplicate")
                logger.debug("near-duplicate link %s <-> %s (cosine %.3f)", a, b, cos)
        return new, back

    def _near_duplicates(self, ids: list[str], matrix: np.ndarray) -> list[tuple[str, str, float]]:
        threshold = self.config.near_duplicate_threshold
        found: list[tuple[str, str, float]] = []
        with one_blas_thread():  # 64 x 64 at most; spinning BLAS workers would slow the next batch's embedding
            within = matrix @ matrix.T
        for i, j in zip(*np.nonzero(np.triu(within, k=1) >= threshold), strict=True):
            found.append((ids[j], ids[i], float(within[i, j])))
        if self._table is not None and self._table.count_rows() > 0:
            index = self._search_index()
            with index.lock:
                allowed = index.allowed(None, None, None)
                cfg = self.config.retrieval
                slots, scores = index.vectors.nearest(matrix, allowed, cfg.ivf_nprobe, cfg.exact_filtered_rows)
                hit = np.flatnonzero((slots >= 0) & (scores >= threshold))
                targets = index.rows.column(slots[hit], "id")
                found += [(ids[q], t, float(scores[q])) for q, t in zip(hit.tolist(), targets, strict=True)]
        return found

    def link(self, a: str, b: str, weight: float = 1.0, kind: str = "related", symmetric: bool = True) -> None:
        """Link memory ``a`` to ``b`` (and ``b`` to ``a`` when ``symmetric``), replacing a link of that kind."""
        (link,) = coerce_links([(b, weight, kind)], source=a)
        with self._lock:
            rows = self._require([a, b], ["id", "association_links"])
            updates = {a: merge_links(rows[a]["association_links"], [link])}
            if symmetric:
                updates[b] = merge_links(rows[b]["association_links"], [Link(a, weight, kind)])
            self._write_links(updates)

    def set_tier(self, ids: Sequence[str], tier: str) -> int:
        """Move the existing memories among ``ids`` to ``tier`` in one merge; returns how many exist (others are
        skipped: deleted meanwhile). Content is left as it is (``maintain()`` compresses cold archived rows)."""
        _check_tier(tier)
        with self._lock:
            found = list(self._rows_by_id(list(dict.fromkeys(ids)), ["id"]))
            if not found:
                return 0
            self._update_rows({"id": found, "tier": [tier] * len(found)}, f"move {len(found)} memories to tier {tier}")
        logger.info("%d memories moved to tier %s", len(found), tier)
        return len(found)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The store's text embeddings of ``texts`` (L2-normalised rows), as ``add`` would compute them."""
        if not texts:
            return np.zeros((0, self.dim or 0), dtype=np.float32)
        return normalise_rows(self._embed(list(texts)), self.dim, "text embedder")

    def delete(self, mid: str) -> None:
        """Delete memory ``mid`` and the links other memories hold to it."""
        with self._lock:
            row = self._require([mid], ["id", "association_links"])[mid]
            table = self._table
            self._commit(lambda: table.delete(f"id = {quote(mid)}"), f"delete memory {mid}")
            neighbours = self._rows_by_id([d["target"] for d in row["association_links"] or ()],
                                          ["id", "association_links"])
            self._write_links({n: remove_links(r["association_links"], mid) for n, r in neighbours.items()})
            self._session_tail = {s: t for s, t in self._session_tail.items() if t != mid}
        logger.info("memory %s deleted", mid)

    # ------------------------------------------------------------------ reads
    def get(self, mid: str) -> Memory:
        """The memory ``mid`` (archived content transparently decompressed); counts as one access."""
        row = self._require([mid])[mid]
        self._access.record([mid])
        content = row["content"]
        if row["content_zstd"] is not None:
            content = self._zstd.decompress(row["content_zstd"]).decode("utf-8")
        count, last = self._access.pending_for(mid)
        self._maybe_flush()
        return Memory(
            id=row["id"], content=content, modality=row["modality"], session=row["session"],
            created_at=row["created_at"], tier=row["tier"], importance=float(row["importance"]),
            access_count=row["access_count"] + count, last_access=max(row["last_access"], last),
            summary=row["summary"], metadata=decode_metadata(row["metadata"]),
            links=links_from_arrow(row["association_links"]), source_ids=tuple(row["source_ids"] or ()),
        )

    def related(self, mid: str) -> list[tuple[Link, Memory]]:
        """The memories ``mid`` links to, strongest link first, each with its link."""
        row = self._require([mid], ["id", "association_links"])[mid]
        links = sorted(links_from_arrow(row["association_links"]), key=lambda link: -link.weight)
        return [(link, self.get(link.target)) for link in links
                if link.target in self._rows_by_id([link.target], ["id"])]

    def search(self, query: str | np.ndarray | None = None, k: int = 10, *, audio: Any = None, image: Any = None,
               sampling_rate: int = 16_000, modalities: Sequence[str] | None = None,
               tiers: Sequence[str] | None = None, session: str | None = None, mode: str = "hybrid",
               links: bool = True) -> list[Hit]:
        """The ``k`` best memories of any modality for a text, audio, image or composite query.

        ``query`` is text or an embedding in the joint space; ``audio`` (a WAV path or waveform at
        ``sampling_rate``) and ``image`` (a path, array or PIL image) are embedded by the joint encoder, fused
        with the text when both are given. ``modalities`` keeps only memories of those modalities.
        ``mode="vector"`` skips full-text search; ``links=False`` skips the link re-ranking.
        """
        _check_k(k)
        for name, values, allowed in (("modality", modalities, MODALITIES), ("tier", tiers, TIERS)):
            bad = [v for v in values or () if v not in allowed]
            if bad:
                raise UnknownModalityError(f"search {name} filter {bad} is not in {list(allowed)}")
        if mode not in SEARCH_MODES:
            raise UnknownModalityError(f"search mode {mode!r} is not one of {list(SEARCH_MODES)}")
        if audio is not None or image is not None:
            if query is not None and not isinstance(query, str):
                raise InvalidSearchError("a composite query takes text, not an embedding, beside audio= / image=")
            text = query if isinstance(query, str) and query.strip() else None
            qvec = normalise_rows(self._media.query(text, audio, image, sampling_rate), self.dim, "query")[0]
        elif query is None:
            raise EmptyContentError("search needs a query: text, an embedding, audio= or image=")
        elif isinstance(query, str):
            if not query.strip():
                raise EmptyContentError("search query is empty; give text or an embedding")
            qvec, text = normalise_rows(self._embed([query]), self.dim, "query")[0], query
        else:
            qvec, text = normalise_rows(query, self.dim, "query embedding")[0], None
        if self._table is None:
            return []
        index = self._search_index()
        with index.lock:
            hits = run_search(index, qvec, text, k, (modalities, tiers, session), self.config.retrieval,
                              mode=mode, use_links=links)
        self._access.record([h.id for h in hits])
        self._last_search = time.monotonic()
        self._maybe_flush()
        return hits

    def __len__(self) -> int:
        return 0 if self._table is None else self._table.count_rows()

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
