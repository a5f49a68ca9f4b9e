"""Cross-modal retrieval metrics: recall@k of a query set against a gallery, with the chance level beside it."""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

__all__ = ["chance_recall", "recall_at_k"]


def recall_at_k(queries: np.ndarray, query_groups: Sequence[str], gallery: np.ndarray,
                gallery_groups: Sequence[str], ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Share of queries with an item of their own group among the ``k`` gallery items nearest by cosine.

    Vectors are compared by dot product (pass unit vectors). Returns ``{"recall@1": ..., "recall@5": ...}`` and,
    for each k, ``"chance@k"``: the same figure for a random ranking, from the group sizes.
    """
    if len(queries) == 0 or len(gallery) == 0:
        raise ValueError("recall needs at least one query and one gallery item")
    scores = np.asarray(queries, np.float32) @ np.asarray(gallery, np.float32).T
    order = np.argsort(-scores, axis=1, kind="stable")
    gallery_groups = np.asarray(gallery_groups)
    match = gallery_groups[order] == np.asarray(query_groups)[:, None]
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(match[:, :k].any(axis=1).mean())
        out[f"chance@{k}"] = chance_recall(query_groups, gallery_groups, k)
    return out


def chance_recall(query_groups: Sequence[str], gallery_groups: Sequence[str], k: int) -> float:
    """Expected recall@k of a uniformly random ranking: 1 - C(g - m, k) / C(g, k) per query, averaged."""
    g = len(gallery_groups)
    counts: dict[str, int] = {}
    for group in gallery_groups:
        counts[group] = counts.get(group, 0) + 1
    k = min(k, g)
    return float(np.mean([1.0 - comb(g - counts.get(q, 0), k) / comb(g, k) for q in query_groups]))
