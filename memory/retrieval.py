"""Hybrid retrieval over the in-process index: direct scores from vector and BM25, context lent by links.

1. Vector: cosine top-N from :class:`memory.index.VectorIndex` (exact, or IVF lists with exact rescoring).
2. Full-text: BM25 top-N from :class:`memory.index.TextIndex` (text queries only).
3. Direct score of every candidate: ``w * cosine / best cosine + (1 - w) * bm25 / best bm25`` over the pool
   (``w`` = ``dense_weight``; a candidate missing from the BM25 list counts 0 there). Score fusion beats
   reciprocal-rank fusion here because it keeps how far apart the candidates are, not just their order.
   In vector-only mode the direct score is the cosine.
4. Context: from the ``walk_from`` best candidates a walk of ``hops`` over the ``fanout`` strongest links adds
   the memories around them (a conversation's neighbouring turns, near-duplicates, hand-made links);
   ``link_score`` is the best path weight x the direct score of the memory at the end, and
   ``score = direct + beta * link_score``. So a memory borrows relevance from what it is linked to: it can
   overtake a direct match only by less than ``beta`` x the strongest link weight, never a clearly better one.
5. Near-exact matches (cosine >= ``near_exact_cosine``: the memory's own text, or nearly) rank first, a
   memory whose content is the query's very text before them.

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
    pool = index.vector_search(qvec, n, allowed)[0].tolist()
    text_by_slot: dict[int, float] = {}
    if mode == "hybrid" and text and text.strip():
        slots, scores = index.text.search(text, n, allowed)
        text_by_slot = dict(zip(slots.tolist(), scores.tolist(), strict=True))
        pool = list(dict.fromkeys([*pool, *text_by_slot]))
    if not pool:
        return []
    sim_by_slot = dict(zip(pool, index.vectors.similarity(qvec, np.asarray(pool, dtype=np.int64)).tolist(),
                           strict=True))
    best_text = max(text_by_slot.values(), default=0.0)

    def direct(slot: int) -> float:
        if mode == "vector":
            return sim_by_slot[slot]
        # scaled by the pool's best so the two scores share a [0, 1] range whatever the corpus statistics
        best_sim = max(sim_by_slot[pool[0]], 1e-6)
        dense = max(sim_by_slot[slot], 0.0) / best_sim
        lexical = text_by_slot.get(slot, 0.0) / best_text if best_text > 0 else 0.0
        return cfg.dense_weight * dense + (1.0 - cfg.dense_weight) * lexical

    if mode == "hybrid":
        pool.sort(key=lambda s: -sim_by_slot[s])  # pool[0] is the best cosine, which direct() scales by
    slot_of = dict(zip(rows.column(np.asarray(pool, dtype=np.int64), "id"), pool, strict=True))
    fused = {mid: direct(slot) for mid, slot in slot_of.items()}

    links: dict[str, tuple[float, str | None]] = {}
    if use_links and cfg.hops > 0 and cfg.beta > 0:
        by_direct = sorted(fused, key=fused.__getitem__, reverse=True)
        frontier = [slot_of[mid] for mid in by_direct[: cfg.walk_from]]
        for _ in range(cfg.hops):
            reached = index.graph.expand(frontier, cfg.fanout, set(slot_of), allowed)
            if not reached:
                break
            sims = index.vectors.similarity(qvec, np.asarray(reached, dtype=np.int64)).tolist()
            for mid, slot, sim in zip(rows.column(np.asarray(reached, dtype=np.int64), "id"), reached, sims,
                                      strict=True):
                slot_of[mid] = slot
                sim_by_slot[slot] = sim
                fused[mid] = direct(slot)  # outside the BM25 top-N: its lexical part counts 0
            frontier = reached
        # link weights are at most 1, so context adds at most beta: only candidates within beta of the k-th
        # direct score can reach the top k, and only they need their links read (exact, not an approximation)
        kth = sorted(fused.values(), reverse=True)[min(k, len(fused)) - 1]
        contenders = [mid for mid in fused if fused[mid] + cfg.beta >= kth]
        if cfg.hops > 1:
            contenders = list(fused)  # a longer path runs through any candidate's links
        adjacency = index.graph.adjacency([slot_of[mid] for mid in contenders], contenders)
        links = link_scores(adjacency, fused, cfg.hops, cfg.fanout)

    def score(mid: str) -> float:
        return fused[mid] + cfg.beta * links.get(mid, (0.0, None))[0]

    def rank_key(mid: str) -> tuple[int, float, str]:
        slot = slot_of[mid]
        sim = sim_by_slot[slot]
        if sim < cfg.near_exact_cosine:
            return (2, -score(mid), mid)
        # the query's very text first: an uncased embedder cannot tell "Yeah" from "yeah"
        same_text = text is not None and rows.column(np.asarray([slot]), "content")[0] == text
        return (0 if same_text else 1, -sim, mid)

    hits = []
    top = sorted(slot_of, key=rank_key)[:k]
    records = rows.records([slot_of[mid] for mid in top], ("content", "modality", "session", "tier", "metadata"))
    for mid, row in zip(top, records, strict=True):
        slot = slot_of[mid]
        link, via = links.get(mid, (0.0, None))
        hits.append(
            Hit(
                id=mid,
                content=row["content"],
                modality=row["modality"],
                session=row["session"],
                tier=row["tier"],
                similarity=sim_by_slot[slot],
                text_score=text_by_slot.get(slot, 0.0),
                fused_score=fused[mid],
                link_score=link,
                score=score(mid),
                via=via,
                metadata=decode_metadata(row["metadata"]),
            )
        )
    return hits
