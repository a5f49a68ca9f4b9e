"""The memories table's Arrow schema and the records the store hands back (``Memory``, ``Hit``).

Schema per DESIGN section 6, plus three columns written only by compression policies: ``content_zstd``
(raw content archived with zstd), ``embedding_q`` and ``embedding_codec`` (a compact copy of the embedding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

__all__ = ["LINK_TYPE", "Hit", "Link", "Memory", "memory_schema", "table_dimension"]

LINK_TYPE = pa.struct([("target", pa.string()), ("weight", pa.float32()), ("kind", pa.string())])


def memory_schema(dim: int) -> pa.Schema:
    """The memories table schema for embeddings of dimension ``dim``."""
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),
            pa.field("created_at", pa.float64(), nullable=False),  # unix seconds
            pa.field("session", pa.string()),
            pa.field("modality", pa.string(), nullable=False),
            pa.field("content", pa.string(), nullable=False),  # text, a media pointer, or the summary once archived
            pa.field("summary", pa.string()),
            pa.field("embedding", pa.list_(pa.float32(), dim)),
            pa.field("association_links", pa.list_(LINK_TYPE)),
            pa.field("tier", pa.string(), nullable=False),
            pa.field("access_count", pa.int64(), nullable=False),
            pa.field("last_access", pa.float64(), nullable=False),
            pa.field("importance", pa.float32(), nullable=False),
            pa.field("source_ids", pa.list_(pa.string())),
            pa.field("metadata", pa.string()),  # JSON object
            pa.field("content_zstd", pa.binary()),
            pa.field("embedding_q", pa.binary()),
            pa.field("embedding_codec", pa.string()),
        ]
    )


def table_dimension(schema: pa.Schema) -> int:
    """The embedding dimension a table was created with."""
    return schema.field("embedding").type.list_size


@dataclass(frozen=True)
class Link:
    """One association link: the target id, its weight and its kind (``session``, ``duplicate``, ``related``...)."""

    target: str
    weight: float
    kind: str


@dataclass(frozen=True)
class Memory:
    """A stored memory, with its content reconstructed when the row was archived."""

    id: str
    content: str
    modality: str
    session: str | None
    created_at: float
    tier: str
    importance: float
    access_count: int
    last_access: float
    summary: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    links: tuple[Link, ...] = ()
    source_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The memory as a plain dict (the AI-OS facade's shape); links become dicts."""
        out = dict(self.__dict__)
        out["links"] = [link.__dict__.copy() for link in self.links]
        out["source_ids"] = list(self.source_ids)
        return out


@dataclass(frozen=True)
class Hit:
    """One search result and the scores that made it.

    ``similarity`` is the cosine to the query, ``text_score`` the BM25 score (0 when full-text did not match),
    ``fused_score`` the direct score (cosine and BM25, each scaled by the candidates' best, weighed by
    ``dense_weight``; the cosine in vector-only mode), ``link_score`` the best link weight x the direct score
    of a linked memory met on the walk, and ``score`` = fused + beta * link (see :mod:`memory.retrieval`).
    """

    id: str
    content: str
    modality: str
    session: str | None
    tier: str
    similarity: float
    text_score: float
    fused_score: float
    link_score: float
    score: float
    via: str | None = None  # the neighbour that gave the link score
    metadata: dict[str, Any] = field(default_factory=dict)


def decode_metadata(raw: str | None) -> dict[str, Any]:
    """Parse the JSON metadata column (None -> {})."""
    return json.loads(raw) if raw else {}


def links_from_arrow(raw: list[dict[str, Any]] | None) -> tuple[Link, ...]:
    """Turn the ``association_links`` cell into ``Link`` objects."""
    return tuple(Link(d["target"], float(d["weight"]), d["kind"]) for d in raw or ())
