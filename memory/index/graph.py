"""The link graph as the index holds it: adjacency read from the row store, walked in a bounded number of hops.

Same rules as before the index existed (and as :func:`memory.links.link_scores`): from each frontier node
only its ``fanout`` strongest links are followed (ties keep the stored order), into rows that pass the
search filters; the nodes reached join the candidate pool with their exact similarity.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from memory.index.rows import RowStore

__all__ = ["LinkGraph"]


class LinkGraph:
    """Adjacency of the rows in a :class:`RowStore` (targets resolved to slots on demand)."""

    def __init__(self, rows: RowStore) -> None:
        self._rows = rows

    def expand(self, frontier: Iterable[int], fanout: int, known: set[str], allowed: np.ndarray) -> list[int]:
        """Slots of the allowed live rows one hop from ``frontier`` that are not already ``known`` (by id)."""
        wanted = {targets[i] for targets, weights in self._rows.links_many(list(frontier))
                  for i in sorted(range(len(weights)), key=weights.__getitem__, reverse=True)[:fanout]} - known
        slot_of = self._rows.slot_of
        found = [slot_of[t] for t in sorted(wanted) if t in slot_of]
        return [s for s in found if allowed[s]]

    def adjacency(self, slots: Iterable[int], ids: Iterable[str]) -> dict[str, tuple[list[str], list[float]]]:
        """``{id: (target ids, weights)}`` of the given slots' stored links (what ``link_scores`` reads)."""
        return dict(zip(ids, self._rows.links_many(list(slots)), strict=True))
