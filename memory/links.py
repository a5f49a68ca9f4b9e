"""Association links: normalising user input, merging into a row's link list, and the bounded link walk.

A link is stored on its source row (``association_links``); a symmetric link is stored on both rows, so
``related(id)`` and the walk read one row and never scan the table for back-references.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from memory.errors import MemoryStoreError
from memory.schema import Link

__all__ = ["InvalidLinkError", "coerce_links", "link_scores", "merge_links", "remove_links"]


class InvalidLinkError(MemoryStoreError, ValueError):
    """A link given by hand is malformed (no target, a weight outside [0, 1], a link to itself)."""


def coerce_links(links: Iterable[Any] | None, source: str | None = None) -> list[Link]:
    """Accept ``Link``, ``{"target", "weight", "kind"}`` dicts, ``(target, weight[, kind])`` tuples or ids."""
    out: list[Link] = []
    for item in links or ():
        if isinstance(item, Link):
            link = item
        elif isinstance(item, str):
            link = Link(item, 1.0, "related")
        elif isinstance(item, Mapping):
            link = Link(str(item.get("target", "")), float(item.get("weight", 1.0)), str(item.get("kind", "related")))
        else:
            target, weight, *kind = item
            link = Link(str(target), float(weight), str(kind[0]) if kind else "related")
        if not link.target:
            raise InvalidLinkError(f"link {item!r} has no target id; give the id of an existing memory")
        if not 0.0 <= link.weight <= 1.0:
            raise InvalidLinkError(f"link to {link.target!r} has weight {link.weight}; weights must be in [0, 1]")
        if source is not None and link.target == source:
            raise InvalidLinkError(f"memory {source!r} cannot link to itself")
        out.append(link)
    return out


def merge_links(existing: list[dict[str, Any]] | None, new: Iterable[Link]) -> list[dict[str, Any]]:
    """``existing`` with each new link added, replacing any link to the same target of the same kind."""
    merged = {(d["target"], d["kind"]): dict(d) for d in existing or ()}
    for link in new:
        merged[(link.target, link.kind)] = {"target": link.target, "weight": link.weight, "kind": link.kind}
    return list(merged.values())


def remove_links(existing: list[dict[str, Any]] | None, target: str) -> list[dict[str, Any]]:
    """``existing`` without links to ``target``."""
    return [dict(d) for d in existing or () if d["target"] != target]


def _strongest(targets: list[str], weights: list[float], known: Mapping[str, float],
               fanout: int) -> list[tuple[str, float]]:
    """The ``fanout`` strongest links into ``known`` nodes, ties in stored order (a stable sort)."""
    out: list[tuple[str, float]] = []
    for i in sorted(range(len(weights)), key=weights.__getitem__, reverse=True):
        if targets[i] in known:
            out.append((targets[i], weights[i]))
            if len(out) == fanout:
                break
    return out


def link_scores(
    links: Mapping[str, tuple[list[str], list[float]]], similarity: Mapping[str, float], hops: int, fanout: int
) -> dict[str, tuple[float, str | None]]:
    """For every node: the best (path weight x neighbour similarity, neighbour id) within ``hops`` links.

    ``links`` maps a node to its stored links as (target ids, weights). Only the ``fanout`` strongest links of a
    node are followed, and only into nodes whose similarity is known (the candidate pool plus what the walk
    fetched). Path weight is the product of link weights.
    """
    strongest = {node: _strongest(targets, weights, similarity, fanout)
                 for node, (targets, weights) in links.items()}
    # reach[node] = best (weight product, end node) over paths of length <= h, never ending at the node itself
    best: dict[str, tuple[float, str | None]] = {node: (0.0, None) for node in similarity}
    paths: dict[str, dict[str, float]] = {node: {node: 1.0} for node in similarity}
    for _ in range(hops):
        grown: dict[str, dict[str, float]] = {}
        for node, ends in paths.items():
            nxt: dict[str, float] = {}
            for end, weight in ends.items():
                for target, link_weight in strongest.get(end, ()):
                    w = weight * link_weight
                    if target != node and w > nxt.get(target, 0.0):
                        nxt[target] = w
            grown[node] = nxt
            for end, w in nxt.items():
                score = w * similarity[end]
                if score > best[node][0]:
                    best[node] = (score, end)
        paths = grown
    return best
