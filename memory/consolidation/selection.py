"""Which short-term memories a consolidation looks at: the hot ones.

Hot is :func:`memory.tiering.hot_mask` (created or read within the window, or TF-IDF salient) or read at least
``min_access_count`` times. Memories that already feed a principle (a ``consolidated`` link) are left out, so a
memory moved back to ``short`` by ``maintain()`` is not summarised twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from memory.tiering import hot_mask, tfidf_salience

__all__ = ["CONSOLIDATED", "SCAN_COLUMNS", "Candidates", "select_hot"]

CONSOLIDATED = "consolidated"  # link kind between a principle and each of its sources
SCAN_COLUMNS = ["id", "tier", "modality", "content", "created_at", "last_access", "access_count",
                "association_links", "embedding"]


@dataclass(frozen=True)
class Candidates:
    """The selected memories: ids, texts and their (L2-normalised) embeddings, row-aligned."""

    ids: list[str]
    texts: list[str]
    vectors: np.ndarray


def _already_consolidated(links: list[list[dict] | None]) -> np.ndarray:
    return np.array([any(d["kind"] == CONSOLIDATED for d in row or ()) for row in links], dtype=bool)


def select_hot(rows: pa.Table, now: float, *, hot_window_s: float, salience_quantile: float,
               min_access_count: int, max_memories: int) -> Candidates:
    """The hot short-term text memories of ``rows`` (columns :data:`SCAN_COLUMNS`), most recent first."""
    tier = np.asarray(rows.column("tier").to_pylist(), dtype=object)
    modality = np.asarray(rows.column("modality").to_pylist(), dtype=object)
    keep = (tier == "short") & (modality == "text") & ~_already_consolidated(rows.column("association_links")
                                                                             .to_pylist())
    short = rows.filter(pa.array(keep))
    if short.num_rows == 0:
        return Candidates([], [], np.zeros((0, 0), dtype=np.float32))
    texts = short.column("content").to_pylist()
    created = short.column("created_at").to_numpy()
    last = short.column("last_access").to_numpy()
    hot = hot_mask(created, last, tfidf_salience(texts), now, hot_window_s, salience_quantile)
    hot |= short.column("access_count").to_numpy() >= min_access_count
    order = [i for i in np.argsort(-np.maximum(created, last), kind="stable").tolist() if hot[i]][:max_memories]
    vectors = np.asarray(short.column("embedding").to_pylist(), dtype=np.float32)[order] if order else np.zeros(
        (0, 0), dtype=np.float32)
    ids = short.column("id").to_pylist()
    return Candidates([ids[i] for i in order], [texts[i] for i in order], vectors)
