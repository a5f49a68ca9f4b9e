"""``ConsolidationConfig``: selection, clustering, answer checks, source policy, the LLM and the triggers.

One dataclass per concern, defaults in the dataclasses. :func:`load_consolidation_config` reads the
``memory.consolidation`` section of ``arrowengine.yaml`` (``llm`` and ``triggers`` nested) and
``ARROWENGINE_MEMORY_CONSOLIDATION_<KEY>``, ``..._LLM_<KEY>``, ``..._TRIGGERS_<KEY>`` variables (an invalid
value is logged and its default used, as everywhere in arrowengine). ``OLLAMA_HOST`` is the documented fallback
for the Ollama host.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowengine.config import load_section, read_config_file
from memory.config import _choice, _rng, _validate

__all__ = ["ConsolidationConfig", "LLMConfig", "TriggerConfig", "load_consolidation_config"]

_BIG = 10**9
PROVIDERS = ("embedded", "ollama", "openai", "extractive")


@dataclass
class LLMConfig:
    """Which LLM writes the principles and how it is called.

    ``embedded``: arrowengine's own server (``arrowengine serve``) started on demand on 127.0.0.1 (any free port)
    with ``model`` from ``models_dir``, driven through the official ``ollama`` client; ``ollama``: an Ollama
    server at ``host`` (else ``$OLLAMA_HOST``, else Ollama's default); ``openai``: any OpenAI-compatible endpoint
    at ``base_url`` with the key in ``$<api_key_env>``; ``extractive``: no LLM, the most central source is kept.
    """

    provider: str = _choice("embedded", *PROVIDERS)
    model: str = "smollm2-135m-instruct"
    host: str | None = None  # ollama: None -> $OLLAMA_HOST -> http://127.0.0.1:11434
    base_url: str | None = None  # openai: e.g. https://api.openai.com/v1 or a gateway
    api_key_env: str = "OPENAI_API_KEY"
    models_dir: Path | None = None  # embedded: None -> arrowengine.config.resolve_models_dir()
    server_threads: int | None = _rng(None, 1, 1024)  # embedded: torch threads of the server
    timeout_s: float = _rng(120.0, 0.1, 86400.0)
    retries: int = _rng(3, 0, 100)  # transport errors only (connection, timeout, HTTP 5xx)
    backoff_s: float = _rng(1.0, 0.0, 600.0)  # doubled per retry
    max_tokens: int = _rng(96, 8, 8192)
    temperature: float = _rng(0.0, 0.0, 2.0)
    json_format: bool = True  # ollama / embedded: send format=<answer schema>: decoding constrained to its JSON
    fallback_extractive: bool = True  # no LLM reachable: keep the most central source as the principle

    def __post_init__(self) -> None:
        self.models_dir = None if self.models_dir is None else Path(self.models_dir)
        _validate(self)


@dataclass
class TriggerConfig:
    """When the daemon runs a consolidation: nightly (cron) and when the store is under storage pressure."""

    cron_hour: int = _rng(3, 0, 23)
    cron_minute: int = _rng(0, 0, 59)
    timezone: str | None = None  # IANA name, e.g. "Europe/Berlin"; None: local time
    pressure_interval_s: float = _rng(300.0, 0.01, 86400.0)
    max_rows: int | None = _rng(None, 1, 10**15)  # any threshold crossed -> a run
    max_bytes: int | None = _rng(None, 1, 10**15)
    max_short_fraction: float | None = _rng(None, 0.0, 1.0)

    def __post_init__(self) -> None:
        _validate(self)


@dataclass
class ConsolidationConfig:
    """Everything :class:`memory.consolidation.Consolidator` needs; every field has a working default."""

    # selection of hot short-term memories (memory.tiering.hot_mask, plus access frequency)
    hot_window_s: float = _rng(7 * 24 * 3600.0, 0.0, 10.0**12)
    salience_quantile: float = _rng(0.9, 0.0, 1.0)
    min_access_count: int = _rng(3, 1, _BIG)  # read this often -> hot, whatever its age
    max_memories: int = _rng(5000, 1, _BIG)  # hot memories considered per run (most recent first)
    # clustering by embedding similarity
    similarity_threshold: float = _rng(0.55, -1.0, 1.0)  # cosine to the cluster's seed
    min_cluster_size: int = _rng(3, 2, _BIG)
    max_cluster_size: int = _rng(12, 2, _BIG)  # bounds the prompt
    max_clusters: int = _rng(50, 1, _BIG)  # LLM calls per run are at most this
    # checks on the answer
    max_principles: int = _rng(3, 1, 100)
    min_relevance: float = _rng(0.3, -1.0, 1.0)  # cosine of a principle to its cluster's centroid
    # what happens to the sources once the principle is durable
    source_policy: str = _choice("archive", "archive", "delete")
    link_weight: float = _rng(0.9, 0.0, 1.0)
    journal_dir: Path | None = None  # None: <store>/consolidation (a store URI needs a local directory)
    kill_at_step: int | None = _rng(None, 1, _BIG)  # testing hook: SIGKILL instead of writing journal record N
    llm: LLMConfig = field(default_factory=LLMConfig)
    triggers: TriggerConfig = field(default_factory=TriggerConfig)

    def __post_init__(self) -> None:
        self.journal_dir = None if self.journal_dir is None else Path(self.journal_dir)
        _validate(self)
        if self.max_cluster_size < self.min_cluster_size:
            from arrowengine.errors import ConfigError

            raise ConfigError(f"consolidation max_cluster_size={self.max_cluster_size} is below min_cluster_size="
                              f"{self.min_cluster_size}; raise max_cluster_size")


def _mapping(values: Any) -> dict[str, Any]:
    return dict(values) if isinstance(values, Mapping) else {}


def load_consolidation_config(path: str | os.PathLike[str] | None = None, *,
                              environ: Mapping[str, str] | None = None, strict: bool = False) -> ConsolidationConfig:
    """``ConsolidationConfig`` from defaults, ``memory.consolidation`` in the YAML config file, then the environment."""
    env = dict(os.environ if environ is None else environ)
    data, _ = read_config_file(path, env)
    top = _mapping(_mapping(data.get("memory")).get("consolidation"))
    llm = load_section(LLMConfig, "memory_consolidation_llm", _mapping(top.get("llm")), strict=strict, environ=env)
    triggers = load_section(TriggerConfig, "memory_consolidation_triggers", _mapping(top.get("triggers")),
                            strict=strict, environ=env)
    base = load_section(ConsolidationConfig, "memory_consolidation",
                        {k: v for k, v in top.items() if k not in ("llm", "triggers")}, strict=strict, environ=env)
    return dataclasses.replace(base, llm=llm, triggers=triggers)
