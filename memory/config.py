"""Configuration of the memory store: one dataclass per concern, defaults in the dataclasses.

``MemoryConfig`` nests ``RetrievalConfig`` (hybrid search, the link walk, the in-process index) and
``TieringConfig`` (hot/cold, eviction, compression). Limits are declared in each field's ``metadata``
(``range`` or ``choices``, arrowengine's config convention) and checked in ``__post_init__``, so a bad setting
fails where it is made. :func:`load_memory_config` reads the ``memory`` section of ``arrowengine.yaml``
(``memory.retrieval`` and ``memory.tiering`` nested) and ``ARROWENGINE_MEMORY_<KEY>`` /
``ARROWENGINE_MEMORY_RETRIEVAL_<KEY>`` / ``ARROWENGINE_MEMORY_TIERING_<KEY>`` variables through arrowengine's
section loader: an invalid value is logged and the default used (``strict`` raises).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowengine.config import load_section, read_config_file
from arrowengine.errors import ConfigError

__all__ = ["MODALITIES", "TIERS", "MemoryConfig", "RetrievalConfig", "TieringConfig", "default_store_path",
           "is_uri", "load_memory_config"]

logger = logging.getLogger(__name__)
MODALITIES = ("text", "audio", "image")
TIERS = ("short", "long", "archived")
_BIG = 10**9


def is_uri(path: str | os.PathLike[str]) -> bool:
    """Whether a store path is an object-store URI (``s3://bucket/prefix``, ``gs://...``) rather than a directory."""
    return "://" in str(path)


def default_store_path() -> Path:
    """Where a store lives when no path is given: ``$ARROWENGINE_MEMORY_PATH`` or ``~/.arrowengine/memory``."""
    env = os.environ.get("ARROWENGINE_MEMORY_PATH")
    return Path(env) if env else Path.home() / ".arrowengine" / "memory"


def _rng(default: Any, lo: float, hi: float) -> Any:
    return field(default=default, metadata={"range": (lo, hi)})


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


def _validate(obj: Any) -> None:
    """Check every field against its declared ``range`` / ``choices`` (None passes: an optional setting is off)."""
    for spec in dataclasses.fields(obj):
        value = getattr(obj, spec.name)
        bounds, choices = spec.metadata.get("range"), spec.metadata.get("choices")
        if value is None:
            continue
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(f"memory config {spec.name}={value!r} is out of range [{bounds[0]}, {bounds[1]}]; "
                              "pick a value inside it")
        if choices is not None and value not in choices:
            raise ConfigError(f"memory config {spec.name}={value!r} is not one of {', '.join(map(str, choices))}")


@dataclass
class RetrievalConfig:
    """Hybrid search: candidate pool, score fusion, the context that links lend, index settings.

    The defaults were chosen on LoCoMo-dev (``scripts/memory_eval.py --locomo``) among standard settings only:
    BM25 k1 0.9 / b 0.4 are Anserini's defaults, dense and lexical weigh the same, one link hop.
    """

    candidates: int = _rng(100, 1, _BIG)  # per list (vector and full-text) before fusion
    dense_weight: float = _rng(0.5, 0.0, 1.0)  # direct score = w * cosine/best + (1 - w) * bm25/best
    beta: float = _rng(0.3, 0.0, 100.0)  # context: + beta x link weight x the linked memory's direct score
    hops: int = _rng(1, 0, 4)  # link-walk depth
    fanout: int = _rng(8, 1, _BIG)  # neighbours followed per node, strongest links first
    walk_from: int = _rng(20, 1, _BIG)  # how many top direct candidates start the walk
    near_exact_cosine: float = _rng(0.97, 0.0, 1.0)  # at or above: a near-exact match, ranked before the rest
    # the store's in-process index (memory.index), which serves search
    exact_max_rows: int = _rng(20_000, 1, _BIG)  # flat scan of all vectors below this; IVF lists from it
    ivf_lists: int = _rng(0, 0, 1 << 20)  # 0: about 2 sqrt(rows)
    ivf_nprobe: int = _rng(32, 1, _BIG)  # lists scanned per query (exact float32 scores inside them)
    # at most this share of rows, those far worse represented by their centroid than the rest, sit in one
    # list every query scans (memory.index.vector.ivf_layout)
    ivf_overflow_fraction: float = _rng(0.01, 0.0, 0.5)
    exact_filtered_rows: int = _rng(20_000, 1, _BIG)  # a filter leaving at most this many rows: exact search
    ivf_tail_fraction: float = _rng(0.2, 0.0, 10.0)  # rows added since the IVF layout that trigger a rebuild
    compact_dead_fraction: float = _rng(0.3, 0.0, 1.0)  # rewritten/deleted slots that trigger a rebuild
    # how often search checks the table version for other writers (own writes: always); a check is a lancedb
    # round trip (0.2 ms idle, ~10 ms on a loaded box), too much for every search
    index_refresh_s: float = _rng(0.5, 0.0, 86400.0)
    bm25_k1: float = _rng(0.9, 0.0, 10.0)
    bm25_b: float = _rng(0.4, 0.0, 1.0)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class TieringConfig:
    """Hot/cold rules, access-stat batching, and the eviction/compression policies applied by ``maintain()``."""

    # buffered access records before a flush (a search records its k hits), or after access_flush_seconds,
    # whichever first. A flush is one Lance merge whose cost is mostly fixed: at 100k memories 512 records took
    # 0.5-0.7 s and 4,096 1.3 s, and a flush every 51 searches, running beside them on 2 cores, doubled the
    # search p50 (13.4 -> 24 ms end to end). maintain() and close() flush whatever is pending.
    access_flush_every: int = _rng(4096, 1, _BIG)
    access_flush_seconds: float = 120.0
    background_flush: bool = True  # write due access statistics on a thread, off the search path
    # a due background flush first waits until no search has run for this long (at most access_flush_seconds):
    # at 1M memories a flush is ~5 s of Lance work, and beside a burst of searches it shares their two cores
    # (vector search p95 3.8-4.7 ms -> 15.7 ms in the 1M benchmark run that crossed the flush mark)
    access_flush_quiet_s: float = _rng(0.2, 0.0, 3600.0)
    hot_window_s: float = 7 * 24 * 3600.0  # accessed or created within this window -> hot (LRU recency)
    salience_quantile: float = _rng(0.9, 0.0, 1.0)  # TF-IDF salience at or above this quantile keeps a memory hot
    eviction_policy: str | None = None  # "lru" | "lfu" | "age" | "importance" | None
    capacity_rows: int | None = _rng(None, 1, 10**15)
    capacity_bytes: int | None = _rng(None, 1, 10**15)
    compression_policy: str | None = "archive"  # registered name, None disables compression
    embedding_codec: str = _choice("int8", "float16", "int8", "binary")  # stored beside the float32 column
    zstd_level: int = _rng(19, 1, 22)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class MemoryConfig:
    """Everything a :class:`memory.MemoryStore` needs; every field has a working default."""

    path: Path | str = field(default_factory=default_store_path)  # a directory, or an object-store URI (str)
    table: str = "memories"
    models_dir: Path | None = None  # None: the engine's store, arrowengine.config.resolve_models_dir()
    text_model: str = "all-MiniLM-L6-v2"
    joint_model: str = "joint-fusion"  # multimodal heads for audio / image memories (arrowengine fusion train)
    near_duplicate_threshold: float | None = _rng(0.92, -1.0, 1.0)  # cosine linking new to existing; None: off
    session_link_weight: float = 0.8
    duplicate_link_weight: float = 1.0
    commit_retries: int = _rng(20, 0, 1000)
    read_consistency_s: float = 0.0  # 0: see other processes' commits on every read
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    tiering: TieringConfig = field(default_factory=TieringConfig)

    def __post_init__(self) -> None:
        self.path = str(self.path) if is_uri(self.path) else Path(self.path)
        self.models_dir = None if self.models_dir is None else Path(self.models_dir)
        _validate(self)


def _section(values: Any, name: str, strict: bool) -> dict[str, Any]:
    if values is None:
        return {}
    if isinstance(values, Mapping):
        return dict(values)
    message = f"config: section {name!r} must be a mapping, got {type(values).__name__}"
    if strict:
        raise ConfigError(message)
    logger.error("%s; using defaults", message)
    return {}


def load_memory_config(path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None,
                       strict: bool | None = None) -> MemoryConfig:
    """``MemoryConfig`` from defaults, the ``memory`` section of the YAML config file, then the environment.

    Same file, precedence and rules as :func:`arrowengine.config.load_config` (``path``, else
    ``$ARROWENGINE_CONFIG``, else ``./arrowengine.yaml``); an invalid value is logged and its default used.
    """
    env = dict(os.environ if environ is None else environ)
    data, _ = read_config_file(path, env)
    if strict is None:
        raw = str(env.get("ARROWENGINE_STRICT", data.get("strict", False))).strip().lower()
        strict = raw in ("1", "true", "yes", "on")
    top = _section(data.get("memory"), "memory", strict)
    retrieval = load_section(RetrievalConfig, "memory_retrieval", _section(top.get("retrieval"), "memory.retrieval",
                                                                          strict), strict=strict, environ=env)
    tiering = load_section(TieringConfig, "memory_tiering", _section(top.get("tiering"), "memory.tiering", strict),
                           strict=strict, environ=env)
    base = load_section(MemoryConfig, "memory", top, strict=strict, environ=env)
    return dataclasses.replace(base, retrieval=retrieval, tiering=tiering)
