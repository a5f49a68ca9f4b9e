"""Pluggable eviction and compression policies, found by name in two registries.

An eviction policy orders memories from "evict first" to "keep"; the store deletes from the front until the
table fits its capacity (rows or bytes). A compression policy turns a cold row into its archived form and
back. New policies register with :func:`register_eviction_policy` / :func:`register_compression_policy`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import zstandard

from memory.errors import UnknownPolicyError

__all__ = [
    "COMPRESSION_POLICIES",
    "EVICTION_POLICIES",
    "ArchivePolicy",
    "CompressionPolicy",
    "EvictionPolicy",
    "decode_embedding",
    "encode_embedding",
    "get_compression_policy",
    "get_eviction_policy",
    "register_compression_policy",
    "register_eviction_policy",
    "select_evictions",
]

logger = logging.getLogger(__name__)


class EvictionPolicy(Protocol):
    """Orders rows (``id, created_at, last_access, access_count, importance, nbytes``) by eviction priority."""

    name: str

    def order(self, rows: pa.Table) -> np.ndarray:
        """Row indices, the first to evict first."""
        ...


class CompressionPolicy(Protocol):
    """Turns a cold row into its archived columns, and an archived row back into its raw columns."""

    name: str

    def compress(self, row: dict[str, Any]) -> dict[str, Any]:
        """Changed columns for an archived copy of ``row``."""
        ...

    def restore(self, row: dict[str, Any]) -> dict[str, Any]:
        """Changed columns that bring an archived ``row`` back to its raw form."""
        ...


EVICTION_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {}
COMPRESSION_POLICIES: dict[str, Callable[..., CompressionPolicy]] = {}


def register_eviction_policy(name: str) -> Callable[[type], type]:
    """Class decorator: make an eviction policy available under ``name``."""

    def deco(cls: type) -> type:
        EVICTION_POLICIES[name] = cls
        cls.name = name
        return cls

    return deco


def register_compression_policy(name: str) -> Callable[[type], type]:
    """Class decorator: make a compression policy available under ``name``."""

    def deco(cls: type) -> type:
        COMPRESSION_POLICIES[name] = cls
        cls.name = name
        return cls

    return deco


def get_eviction_policy(name: str) -> EvictionPolicy:
    """The eviction policy registered as ``name``."""
    if name not in EVICTION_POLICIES:
        raise UnknownPolicyError(
            f"eviction policy {name!r} is not registered; known: {sorted(EVICTION_POLICIES)}"
        )
    return EVICTION_POLICIES[name]()


def get_compression_policy(name: str, **kwargs: Any) -> CompressionPolicy:
    """The compression policy registered as ``name``, built with ``kwargs``."""
    if name not in COMPRESSION_POLICIES:
        raise UnknownPolicyError(
            f"compression policy {name!r} is not registered; known: {sorted(COMPRESSION_POLICIES)}"
        )
    return COMPRESSION_POLICIES[name](**kwargs)


def _sort_by(rows: pa.Table, column: str, descending: bool = False) -> np.ndarray:
    values = rows.column(column).to_numpy()
    created = rows.column("created_at").to_numpy()
    # created_at breaks ties so the order is deterministic (older first)
    return np.lexsort((created, -values if descending else values))


@register_eviction_policy("lru")
class LRUPolicy:
    """Least recently used (created or read) first."""

    def order(self, rows: pa.Table) -> np.ndarray:
        recency = np.maximum(rows.column("created_at").to_numpy(), rows.column("last_access").to_numpy())
        return np.lexsort((rows.column("created_at").to_numpy(), recency))


@register_eviction_policy("lfu")
class LFUPolicy:
    """Least frequently read first."""

    def order(self, rows: pa.Table) -> np.ndarray:
        return _sort_by(rows, "access_count")


@register_eviction_policy("age")
class AgePolicy:
    """Oldest created first."""

    def order(self, rows: pa.Table) -> np.ndarray:
        return np.argsort(rows.column("created_at").to_numpy(), kind="stable")


@register_eviction_policy("importance")
class ImportancePolicy:
    """Least important first."""

    def order(self, rows: pa.Table) -> np.ndarray:
        return _sort_by(rows, "importance")


def select_evictions(
    policy: EvictionPolicy, rows: pa.Table, capacity_rows: int | None, capacity_bytes: int | None
) -> list[str]:
    """Ids to delete, in the policy's order, until the rows fit both capacities."""
    order = policy.order(rows)
    nbytes = rows.column("nbytes").to_numpy()
    n_rows, n_bytes = rows.num_rows, int(nbytes.sum())
    ids = rows.column("id").to_pylist()
    out: list[str] = []
    for i in order:
        over_rows = capacity_rows is not None and n_rows > capacity_rows
        over_bytes = capacity_bytes is not None and n_bytes > capacity_bytes
        if not (over_rows or over_bytes):
            break
        out.append(ids[i])
        n_rows -= 1
        n_bytes -= int(nbytes[i])
    return out


def encode_embedding(vec: np.ndarray, codec: str) -> bytes:
    """Compact copy of a float32 embedding: ``float16``, ``int8`` (float32 scale + int8 values) or ``binary``."""
    vec = np.asarray(vec, dtype=np.float32)
    if codec == "float16":
        return vec.astype("<f2").tobytes()
    if codec == "int8":
        scale = np.float32(max(float(np.abs(vec).max()), 1e-12) / 127.0)
        return scale.astype("<f4").tobytes() + np.round(vec / scale).astype(np.int8).tobytes()
    if codec == "binary":
        return np.packbits(vec > 0).tobytes()
    raise UnknownPolicyError(f"embedding codec {codec!r} is not one of float16, int8, binary")


def decode_embedding(blob: bytes, codec: str, dim: int) -> np.ndarray:
    """Inverse of :func:`encode_embedding` (binary decodes to +-1/sqrt(d), a unit vector)."""
    if codec == "float16":
        return np.frombuffer(blob, dtype="<f2").astype(np.float32)
    if codec == "int8":
        scale = np.frombuffer(blob[:4], dtype="<f4")[0]
        return np.frombuffer(blob[4:], dtype=np.int8).astype(np.float32) * scale
    if codec == "binary":
        bits = np.unpackbits(np.frombuffer(blob, dtype=np.uint8))[:dim]
        return (bits.astype(np.float32) * 2 - 1) / np.sqrt(dim)
    raise UnknownPolicyError(f"embedding codec {codec!r} is not one of float16, int8, binary")


def _extractive_summary(text: str, limit: int = 160) -> str:
    """First sentence, cut at ``limit`` characters: a cheap stand-in until the Compressor's summary is wired in."""
    for sep in (". ", "? ", "! ", "\n"):
        head, found, _ = text.partition(sep)
        if found:
            text = head + sep.strip()
            break
    return text if len(text) <= limit else text[: limit - 1] + "…"


@register_compression_policy("archive")
class ArchivePolicy:
    """Raw content to zstd in ``content_zstd``; ``content`` becomes the summary; a compact embedding copy."""

    def __init__(self, embedding_codec: str = "int8", zstd_level: int = 19) -> None:
        self.embedding_codec = embedding_codec
        self._cctx = zstandard.ZstdCompressor(level=zstd_level)
        self._dctx = zstandard.ZstdDecompressor()

    def compress(self, row: dict[str, Any]) -> dict[str, Any]:
        """Archived columns for ``row`` (the float32 embedding stays: the vector index searches it)."""
        summary = row.get("summary") or _extractive_summary(row["content"])
        return {
            "content": summary,
            "summary": summary,
            "content_zstd": self._cctx.compress(row["content"].encode("utf-8")),
            "embedding_q": encode_embedding(np.asarray(row["embedding"]), self.embedding_codec),
            "embedding_codec": self.embedding_codec,
            "tier": "archived",
        }

    def restore(self, row: dict[str, Any]) -> dict[str, Any]:
        """Raw columns for an archived ``row``."""
        return {
            "content": self.reconstruct(row),
            "content_zstd": None,
            "embedding_q": None,
            "embedding_codec": None,
            "tier": "short",
        }

    def reconstruct(self, row: dict[str, Any]) -> str:
        """The exact original content of an archived row."""
        return self._dctx.decompress(row["content_zstd"]).decode("utf-8")
