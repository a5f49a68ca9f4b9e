"""Configuration of the memory store: one dataclass per concern, defaults in the dataclasses.

``MemoryConfig`` nests ``RetrievalConfig`` (hybrid search and the link walk) and ``TieringConfig`` (hot/cold,
eviction, compression). Values are checked in ``__post_init__`` so a bad setting fails where it is made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from arrowengine.errors import ConfigError

__all__ = ["MODALITIES", "TIERS", "MemoryConfig", "RetrievalConfig", "TieringConfig", "default_store_path"]

MODALITIES = ("text", "audio", "image")
TIERS = ("short", "long", "archived")
_REPO_ROOT = Path(__file__).resolve().parents[1]


def default_store_path() -> Path:
    """Where a store lives when no path is given: ``$ARROWENGINE_MEMORY_PATH`` or ``~/.arrowengine/memory``."""
    env = os.environ.get("ARROWENGINE_MEMORY_PATH")
    return Path(env) if env else Path.home() / ".arrowengine" / "memory"


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"memory config {name}={value!r} is out of range [{lo}, {hi}]; pick a value inside it")


@dataclass
class RetrievalConfig:
    """Hybrid search: candidate pool sizes, RRF constant, link-walk weights and bounds, ANN index settings."""

    candidates: int = 50  # per list (vector and full-text) before fusion
    rrf_k: int = 60  # the usual reciprocal-rank-fusion constant (Cormack et al. 2009)
    alpha: float = 1.0  # weight of the fused similarity
    beta: float = 0.3  # weight of link weight x neighbour similarity
    hops: int = 1  # link-walk depth
    fanout: int = 8  # neighbours followed per node, strongest links first
    walk_from: int = 20  # how many top fused candidates start the walk
    index_threshold: int = 50_000  # rows past which an ANN index is built
    index_type: str = "IVF_HNSW_SQ"  # or IVF_PQ
    nprobes: int = 20
    refine_factor: int = 10  # re-rank refine_factor * k candidates with exact distances (recall)

    def __post_init__(self) -> None:
        for name in ("candidates", "rrf_k", "fanout", "walk_from", "index_threshold", "nprobes", "refine_factor"):
            _check_range(name, getattr(self, name), 1, 10**9)
        _check_range("hops", self.hops, 0, 4)
        _check_range("alpha", self.alpha, 0.0, 100.0)
        _check_range("beta", self.beta, 0.0, 100.0)
        if self.index_type not in ("IVF_PQ", "IVF_HNSW_SQ"):
            raise ConfigError(f"memory config index_type={self.index_type!r} is not one of IVF_PQ, IVF_HNSW_SQ")


@dataclass
class TieringConfig:
    """Hot/cold rules, access-stat batching, and the eviction/compression policies applied by ``maintain()``."""

    access_flush_every: int = 512  # buffered access records before a flush
    access_flush_seconds: float = 30.0  # or after this long, whichever first
    hot_window_s: float = 7 * 24 * 3600.0  # accessed or created within this window -> hot (LRU recency)
    salience_quantile: float = 0.9  # TF-IDF salience at or above this quantile keeps a memory hot
    eviction_policy: str | None = None  # "lru" | "lfu" | "age" | "importance" | None
    capacity_rows: int | None = None
    capacity_bytes: int | None = None
    compression_policy: str | None = "archive"  # registered name, None disables compression
    embedding_codec: str = "int8"  # float16 | int8 | binary, stored beside the float32 column
    zstd_level: int = 19

    def __post_init__(self) -> None:
        _check_range("access_flush_every", self.access_flush_every, 1, 10**9)
        _check_range("salience_quantile", self.salience_quantile, 0.0, 1.0)
        _check_range("zstd_level", self.zstd_level, 1, 22)
        if self.embedding_codec not in ("float16", "int8", "binary"):
            raise ConfigError(
                f"memory config embedding_codec={self.embedding_codec!r} is not one of float16, int8, binary"
            )
        for name in ("capacity_rows", "capacity_bytes"):
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, 1, 10**15)


@dataclass
class MemoryConfig:
    """Everything a :class:`memory.MemoryStore` needs; every field has a working default."""

    path: Path = field(default_factory=default_store_path)
    table: str = "memories"
    models_dir: Path = _REPO_ROOT / "models"
    text_model: str = "all-MiniLM-L6-v2"
    near_duplicate_threshold: float | None = 0.92  # cosine from which new memories link to existing; None: off
    session_link_weight: float = 0.8
    duplicate_link_weight: float = 1.0
    commit_retries: int = 20
    read_consistency_s: float = 0.0  # 0: see other processes' commits on every read
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    tiering: TieringConfig = field(default_factory=TieringConfig)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.models_dir = Path(self.models_dir)
        if self.near_duplicate_threshold is not None:
            _check_range("near_duplicate_threshold", self.near_duplicate_threshold, -1.0, 1.0)
        _check_range("commit_retries", self.commit_retries, 0, 1000)
