"""Hybrid retrieval: Lance vector search + Lance full-text search, reciprocal rank fusion, link re-ranking.

1. Vector: cosine top-N in Lance (through the ANN index with ``nprobes``/``refine_factor`` once one exists).
2. Full-text: BM25 top-N from the Lance inverted index (text queries only).
3. Fusion: RRF, ``sum 1 / (rrf_k + rank)`` over the lists, min-max scaled over the candidate pool to [0, 1]
   (best fused candidate 1.0); in vector-only mode the fused score is the cosine similarity.
4. Links: from the ``walk_from`` best candidates, a walk of ``hops`` over the ``fanout`` strongest links
   fetches neighbours not yet in the pool; ``score = alpha * fused + beta * link_score`` where
   ``link_score`` is the best path weight x neighbour cosine similarity.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from memory.config import RetrievalConfig
from memory.links import link_scores
from memory.schema import Hit, decode_metadata

__all__ = ["SEARCH_MODES", "build_filter", "quote", "run_search"]

SEARCH_MODES = ("vector", "hybrid")
_COLUMNS = ["id", "content", "modality", "session", "tier", "embedding", "association_links", "metadata"]


def quote(value: str) -> str:
    """A SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def build_filter(
    modalities: Sequence[str] | None, tiers: Sequence[str] | None, session: str | None
) -> str | None:
    """The Lance ``where`` clause for the search restrictions (None when unrestricted)."""
    parts = []
    if modalities:
        parts.append(f"modality IN ({', '.join(quote(m) for m in modalities)})")
    if tiers:
        parts.append(f"tier IN ({', '.join(quote(t) for t in tiers)})")
    if session is not None:
        parts.append(f"session = {quote(session)}")
    return " AND ".join(parts) or None


def _rows(table: pa.Table) -> list[dict[str, Any]]:
    return table.select([c for c in [*_COLUMNS, "_score"] if c in table.column_names]).to_pylist()


def _vector_candidates(table: Any, qvec: np.ndarray, n: int, where: str | None, cfg: RetrievalConfig,
                       indexed: bool) -> list[dict[str, Any]]:
    query = table.search(qvec, vector_column_name="embedding").distance_type("cosine").limit(n)
    if indexed:
        query = query.nprobes(cfg.nprobes).refine_factor(cfg.refine_factor)
    if where:
        query = query.where(where, prefilter=True)
    return _rows(query.select(_COLUMNS).to_arrow())


def _text_candidates(table: Any, text: str, n: int, where: str | None) -> list[dict[str, Any]]:
    query = table.search(text, query_type="fts").limit(n)
    if where:
        query = query.where(where, prefilter=True)
    return _rows(query.select(_COLUMNS).to_arrow())


def _fetch(table: Any, ids: Sequence[str], where: str | None) -> list[dict[str, Any]]:
    clause = f"id IN ({', '.join(quote(i) for i in ids)})"
    if where:
        clause = f"({clause}) AND {where}"
    return _rows(table.search().where(clause).select(_COLUMNS).limit(len(ids)).to_arrow())


def run_search(
    table: Any,
    qvec: np.ndarray,
    text: str | None,
    k: int,
    where: str | None,
    cfg: RetrievalConfig,
    *,
    mode: str,
    use_links: bool,
    indexed: bool,
) -> list[Hit]:
    """Search ``table`` for ``qvec`` (and ``text`` in hybrid mode); the ``k`` best ``Hit`` objects."""
    n = max(k, cfg.candidates)
    pool: dict[str, dict[str, Any]] = {}
    lists = [_vector_candidates(table, qvec, n, where, cfg, indexed)]
    if mode == "hybrid" and text and text.strip():
        lists.append(_text_candidates(table, text, n, where))
    fused: dict[str, float] = {}
    text_score: dict[str, float] = {}
    for li, rows in enumerate(lists):
        for rank, row in enumerate(rows, start=1):
            pool.setdefault(row["id"], row)
            fused[row["id"]] = fused.get(row["id"], 0.0) + 1.0 / (cfg.rrf_k + rank)
            if li == 1:
                text_score[row["id"]] = float(row["_score"])
    sim = {mid: float(np.dot(qvec, np.asarray(row["embedding"], dtype=np.float32))) for mid, row in pool.items()}
    if mode == "vector":
        fused = dict(sim)
    elif fused:
        # RRF values differ by ~1/rrf_k^2 per rank; min-max over the pool puts them on the [0, 1] scale of the
        # link term, otherwise any link would outweigh the fusion
        lo, hi = min(fused.values()), max(fused.values())
        fused = {mid: (f - lo) / (hi - lo) if hi > lo else 1.0 for mid, f in fused.items()}

    links: dict[str, tuple[float, str | None]] = {}
    if use_links and cfg.hops > 0 and cfg.beta > 0 and pool:
        frontier = sorted(fused, key=fused.__getitem__, reverse=True)[: cfg.walk_from]
        for _ in range(cfg.hops):
            wanted = {
                d["target"]
                for mid in frontier
                for d in sorted(pool[mid]["association_links"] or (), key=lambda d: -d["weight"])[: cfg.fanout]
            } - pool.keys()
            if not wanted:
                break
            fetched = _fetch(table, sorted(wanted), where)
            for row in fetched:
                pool[row["id"]] = row
                sim[row["id"]] = float(np.dot(qvec, np.asarray(row["embedding"], dtype=np.float32)))
                fused[row["id"]] = sim[row["id"]] if mode == "vector" else 0.0
            frontier = [row["id"] for row in fetched]
        links = link_scores(
            {mid: row["association_links"] or [] for mid, row in pool.items()}, sim, cfg.hops, cfg.fanout
        )

    hits = []
    for mid, row in pool.items():
        link, via = links.get(mid, (0.0, None))
        hits.append(
            Hit(
                id=mid,
                content=row["content"],
                modality=row["modality"],
                session=row["session"],
                tier=row["tier"],
                similarity=sim[mid],
                text_score=text_score.get(mid, 0.0),
                fused_score=fused[mid],
                link_score=link,
                score=cfg.alpha * fused[mid] + cfg.beta * link,
                via=via,
                metadata=decode_metadata(row["metadata"]),
            )
        )
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits[:k]
