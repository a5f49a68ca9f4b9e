"""Hybrid retrieval over the in-process index: vector top-N, BM25 top-N, reciprocal rank fusion, link re-ranking.

1. Vector: cosine top-N from :class:`memory.index.VectorIndex` (exact, or IVF lists with exact rescoring).
2. Full-text: BM25 top-N from :class:`memory.index.TextIndex` (text queries only).
3. Fusion: RRF, ``sum 1 / (rrf_k + rank)`` over the lists, min-max scaled over the candidate pool to [0, 1]
   (best fused candidate 1.0); in vector-only mode the fused score is the cosine similarity.
4. Links: from the ``walk_from`` best candidates, a walk of ``hops`` over the ``fanout`` strongest links
   reaches neighbours not yet in the pool; ``score = alpha * fused + beta * link_score`` where
   ``link_score`` is the best path weight x neighbour cosine similarity.

Filters (modality, tier, session) are masks over the index's slots; the table is not queried.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memory.config import RetrievalConfig
from memory.index import MemoryIndex
from memory.links import link_scores
from memory.schema import Hit, decode_metadata

__all__ = ["SEARCH_MODES", "quote", "run_search"]

SEARCH_MODES = ("vector", "hybrid")


def quote(value: str) -> str:
    """A SQL string literal for a Lance filter (single quotes doubled)."""
    return "'" + str(value).replace("'", "''") + "'"


def run_search(
    index: MemoryIndex,
    qvec: np.ndarray,
    text: str | None,
    k: int,
    filters: tuple[Sequence[str] | None, Sequence[str] | None, str | None],
    cfg: RetrievalConfig,
    *,
    mode: str,
    use_links: bool,
) -> list[Hit]:
    """The ``k`` best ``Hit`` objects for ``qvec`` (and ``text`` in hybrid mode) among rows passing ``filters``.

    ``filters`` is ``(modalities, tiers, session)``; the caller has refreshed ``index`` and holds its lock.
    """
    n = max(k, cfg.candidates)
    rows = index.rows
    allowed = index.allowed(*filters)
    lists = [index.vector_search(qvec, n, allowed)[0]]
    text_by_slot: dict[int, float] = {}
    if mode == "hybrid" and text and text.strip():
        slots, scores = index.text.search(text, n, allowed)
        lists.append(slots)
        text_by_slot = dict(zip(slots.tolist(), scores.tolist(), strict=True))
    fused_by_slot: dict[int, float] = {}
    for found in lists:
        for rank, slot in enumerate(found.tolist(), start=1):
            fused_by_slot[slot] = fused_by_slot.get(slot, 0.0) + 1.0 / (cfg.rrf_k + rank)
    slots = list(fused_by_slot)
    ids = rows.column(np.asarray(slots, dtype=np.int64), "id")
    slot_of = dict(zip(ids, slots, strict=True))
    sim = dict(zip(ids, index.vectors.similarity(qvec, np.asarray(slots, dtype=np.int64)).tolist(), strict=True))
    text_score = {mid: text_by_slot.get(slot_of[mid], 0.0) for mid in ids}
    if mode == "vector":
        fused = dict(sim)
    else:
        fused = {mid: fused_by_slot[slot_of[mid]] for mid in ids}
        if fused:
            # RRF values differ by ~1/rrf_k^2 per rank; min-max over the pool puts them on the [0, 1] scale of the
            # link term, otherwise any link would outweigh the fusion
            lo, hi = min(fused.values()), max(fused.values())
            fused = {mid: (f - lo) / (hi - lo) if hi > lo else 1.0 for mid, f in fused.items()}

    links: dict[str, tuple[float, str | None]] = {}
    if use_links and cfg.hops > 0 and cfg.beta > 0 and slot_of:
        frontier = [slot_of[mid] for mid in sorted(fused, key=fused.__getitem__, reverse=True)[: cfg.walk_from]]
        for _ in range(cfg.hops):
            reached = index.graph.expand(frontier, cfg.fanout, slot_of.keys(), allowed)
            if not reached:
                break
            reached_ids = rows.column(np.asarray(reached, dtype=np.int64), "id")
            sims = index.vectors.similarity(qvec, np.asarray(reached, dtype=np.int64)).tolist()
            for mid, slot, s in zip(reached_ids, reached, sims, strict=True):
                slot_of[mid] = slot
                sim[mid] = s
                fused[mid] = s if mode == "vector" else 0.0
            frontier = reached
        links = link_scores(index.graph.adjacency(slot_of.values(), slot_of.keys()), sim, cfg.hops, cfg.fanout)

    ranked = sorted(slot_of, key=lambda mid: (-(cfg.alpha * fused[mid] + cfg.beta * links.get(mid, (0.0,))[0]),
                                              mid))[:k]
    hits = []
    for mid in ranked:
        row = rows.row(slot_of[mid])
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
    return hits
