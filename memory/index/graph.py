"""The link graph as the index holds it: adjacency read from the row store, walked in a bounded number of hops.

Same rules as before the index existed (and as :func:`memory.links.link_scores`): from each frontier node
only its ``fanout`` strongest links are followed (ties keep the stored order), into rows that pass the
search filters; the nodes reached join the candidate pool with their exact similarity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from memory.index.rows import RowStore

__all__ = ["LinkGraph"]


class LinkGraph:
    """Adjacency of the rows in a :class:`RowStore` (targets resolved to slots on demand)."""

    def __init__(self, rows: RowStore) -> None:
        self._rows = rows

    def strongest(self, slot: int, fanout: int) -> list[str]:
        """Target ids of the ``fanout`` strongest links of ``slot`` (stable for equal weights)."""
        targets, weights = self._rows.links(slot)
        order = np.argsort(-weights, kind="stable")[:fanout]
        return [targets[i] for i in order.tolist()]

    def expand(self, frontier: Iterable[int], fanout: int, known: set[str], allowed: np.ndarray) -> list[int]:
        """Slots of the allowed live rows one hop from ``frontier`` that are not already ``known`` (by id)."""
        wanted = {t for slot in frontier for t in self.strongest(slot, fanout)} - known
        slot_of = self._rows.slot_of
        found = [slot_of[t] for t in sorted(wanted) if t in slot_of]
        return [s for s in found if allowed[s]]

    def adjacency(self, slots: Iterable[int], ids: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
        """``{id: [{"target", "weight"}, ...]}`` for the given slots (the shape ``link_scores`` reads)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for slot, mid in zip(slots, ids, strict=True):
            targets, weights = self._rows.links(slot)
            out[mid] = [{"target": t, "weight": float(w)} for t, w in zip(targets, weights.tolist(), strict=True)]
        return out
