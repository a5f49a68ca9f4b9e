"""Clusters of similar memories: greedy seeds by density, members by cosine to the seed.

Repeatedly, the unassigned memory with the most unassigned neighbours (cosine >= threshold) seeds a cluster
of itself and its nearest such neighbours (up to ``max_size``); seeds with fewer than ``min_size - 1``
neighbours end the search. Deterministic for given inputs, O(n^2) memory for n hot memories (n is bounded by
``ConsolidationConfig.max_memories``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["cluster_by_similarity"]


def cluster_by_similarity(vectors: np.ndarray, threshold: float, min_size: int, max_size: int,
                          max_clusters: int) -> list[list[int]]:
    """Row indices of each cluster of ``vectors`` (L2-normalised rows), largest first."""
    n = len(vectors)
    if n < min_size:
        return []
    sims = vectors @ vectors.T
    near = sims >= threshold
    np.fill_diagonal(near, False)
    free = np.ones(n, dtype=bool)
    clusters: list[list[int]] = []
    while len(clusters) < max_clusters:
        degree = (near & free[None, :]).sum(axis=1)
        degree[~free] = -1
        seed = int(np.argmax(degree))
        if degree[seed] < min_size - 1:
            break
        members = np.flatnonzero(near[seed] & free)
        members = members[np.argsort(-sims[seed, members], kind="stable")][: max_size - 1]
        chosen = [seed, *members.tolist()]
        free[chosen] = False
        clusters.append(sorted(chosen))
    return clusters
