"""The servable models (every Llama LLM and BERT embedder under the models dir) and an LRU cache of loaded ones.

A model is addressed by its directory name, or ``name:tag`` where the tag picks an LLM precision (``latest``
is the server's ``llm_options``; ``fp32``, ``bf16``, ``int8``, ``int4``, ``gguf`` replace their precision). At most
``max_loaded_models`` are loaded (R-seed 000 AC1.3.1); loading another evicts the least recently used idle
one. A loaded model stays for its ``keep_alive`` after its last request (Ollama semantics: 0 unloads when the
request ends, a negative value keeps it until evicted). Unloading stops its scheduler and drops every
reference, so the weights and KV cache are freed (``gc.collect`` runs once).
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import hashlib
import json
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import ModelNotFoundError, OverloadedError
from arrowengine.serve.scheduler import Scheduler

__all__ = ["LoadedModel", "ModelEntry", "ModelRegistry"]

logger = logging.getLogger(__name__)

# a tag other than "latest" is an LLM precision (arrowengine.runtime.llm.precision), replacing the server's own
_TAGS = ("latest", "fp32", "bf16", "int8", "int4", "gguf", "q8_0")
_KINDS = {"llama": "llm", "bert": "embed"}


@dataclass(frozen=True)
class ModelEntry:
    """A servable model directory: its name, kind (``llm`` / ``embed``), config and file facts."""

    name: str
    path: Path
    kind: str
    config: dict[str, Any]
    size: int
    modified: float

    @property
    def digest(self) -> str:
        """A stable id of this model version (name, size and modification time; no hashing of the weights)."""
        return hashlib.sha256(f"{self.name}:{self.size}:{self.modified}".encode()).hexdigest()

    @property
    def family(self) -> str:
        """The architecture (``model_type``)."""
        return str(self.config.get("model_type", "unknown"))

    def details(self, tag: str = "latest") -> dict[str, Any]:
        """Ollama's ``details`` object."""
        params = self.config.get("num_parameters")
        return {"parent_model": "", "format": "arrowengine-parquet", "family": self.family,
                "families": [self.family], "parameter_size": str(params or ""),
                "quantization_level": tag.upper() if tag != "latest" else "default"}


@dataclass
class LoadedModel:
    """A model in memory: the ``LLM`` and its scheduler, or a ``TextEncoder`` (with a lock: one batch at a time)."""

    entry: ModelEntry
    tag: str
    llm: Any = None
    scheduler: Scheduler | None = None
    encoder: Any = None
    encoder_lock: threading.Lock = field(default_factory=threading.Lock)
    load_seconds: float = 0.0
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float = math.inf  # monotonic seconds; inf keeps it
    context: int = 0

    @property
    def key(self) -> str:
        """``name:tag``."""
        return f"{self.entry.name}:{self.tag}"

    @property
    def busy(self) -> bool:
        """True while a request uses it."""
        return self.in_use > 0 or (self.scheduler is not None and self.scheduler.busy)


def _release_memory() -> None:
    gc.collect()
    # glibc keeps freed heap pages in its arenas; malloc_trim returns them, so RSS drops when a model unloads
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            logger.debug("serve: malloc_trim is unavailable; freed memory stays in the allocator's arenas")


class ModelRegistry:
    """Finds models under ``config.models_dir`` and keeps at most ``max_loaded_models`` of them loaded."""

    def __init__(self, config: ServeConfig, on_finish: Any = None) -> None:
        self.config = config
        self.on_finish = on_finish
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ discovery
    def entries(self) -> list[ModelEntry]:
        """Every servable model in the models dir, by name."""
        found = []
        root = self.config.models_dir
        for cfg in sorted(root.glob("*/config.json")):
            weights = cfg.parent / "weights.parquet"
            try:
                config = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                logger.warning("serve: skipping %s (unreadable config.json)", cfg.parent)
                continue
            kind = _KINDS.get(str(config.get("model_type")))
            if kind is None or not weights.is_file():
                continue
            stat = weights.stat()
            found.append(ModelEntry(cfg.parent.name, cfg.parent, kind, config, stat.st_size, stat.st_mtime))
        return found

    def resolve(self, model: str, kind: str | None = None) -> tuple[ModelEntry, str]:
        """The entry and tag of ``name`` or ``name:tag``; ``ModelNotFoundError`` names the choices."""
        name, _, tag = model.partition(":")
        tag = tag or "latest"
        entries = {e.name: e for e in self.entries()}
        entry = entries.get(name)
        usable = sorted(n for n, e in entries.items() if kind is None or e.kind == kind)
        if entry is None or (kind is not None and entry.kind != kind):
            what = "a model" if kind is None else ("a chat/completion model" if kind == "llm" else "an embedding model")
            raise ModelNotFoundError(f"model {model!r} is not {what} on this server; "
                                     f"available: {', '.join(usable) or 'none (run arrowengine fetch)'}")
        if tag not in _TAGS or (entry.kind == "embed" and tag != "latest"):
            tags = sorted(_TAGS) if entry.kind == "llm" else ["latest"]
            raise ModelNotFoundError(f"model {model!r}: unknown tag {tag!r}; use one of {', '.join(tags)}")
        return entry, tag

    def loaded(self) -> list[LoadedModel]:
        """Models in memory, most recently used first."""
        return sorted(self._loaded.values(), key=lambda m: -m.last_used)

    # ------------------------------------------------------------------ the cache
    async def acquire(self, model: str, kind: str) -> tuple[LoadedModel, float]:
        """The loaded model (loading it, and evicting the LRU idle one, if needed) and the seconds spent loading.

        The caller must ``release`` it when its request ends.
        """
        entry, tag = self.resolve(model, kind)
        key = f"{entry.name}:{tag}"
        async with self._lock:
            loaded = self._loaded.get(key)
            load_seconds = 0.0
            if loaded is None:
                self._evict_for_one()
                started = time.perf_counter()
                loaded = await asyncio.to_thread(self._load, entry, tag)
                load_seconds = loaded.load_seconds = time.perf_counter() - started
                self._loaded[key] = loaded
            loaded.in_use += 1
            loaded.last_used = time.monotonic()
        return loaded, load_seconds

    def release(self, loaded: LoadedModel, keep_alive: float | None) -> None:
        """End one use of ``loaded``; it expires ``keep_alive`` seconds from now (None: the server default)."""
        loaded.in_use = max(0, loaded.in_use - 1)
        loaded.last_used = time.monotonic()
        seconds = self.config.keep_alive_s if keep_alive is None else keep_alive
        loaded.expires_at = math.inf if seconds < 0 else loaded.last_used + seconds
        if seconds == 0 and not loaded.busy:
            self._unload(loaded.key)

    def expire(self) -> None:
        """Unload every idle model whose keep_alive has passed (the app calls this every second)."""
        now = time.monotonic()
        for key, m in list(self._loaded.items()):
            if not m.busy and m.expires_at <= now:
                self._unload(key)

    def unload(self, model: str) -> bool:
        """Unload ``model`` now if it is loaded and idle; True when it was unloaded."""
        entry, tag = self.resolve(model)
        loaded = self._loaded.get(f"{entry.name}:{tag}")
        if loaded is None or loaded.busy:
            return False
        self._unload(loaded.key)
        return True

    def close(self) -> None:
        """Stop every scheduler (running streams get ``shutdown_grace_s`` to finish) and drop all models."""
        for key in list(self._loaded):
            self._unload(key)

    def _evict_for_one(self) -> None:
        if len(self._loaded) < self.config.max_loaded_models:
            return
        idle = [m for m in self._loaded.values() if not m.busy]
        if not idle:
            raise OverloadedError(f"all {len(self._loaded)} loaded models are busy and the cache holds at most "
                                  f"{self.config.max_loaded_models}; retry later or raise max_loaded_models",
                                  self.config.retry_after_s)
        victim = min(idle, key=lambda m: m.last_used)
        logger.info("serve: evicting %s (least recently used) to load another model", victim.key)
        self._unload(victim.key)

    def _unload(self, key: str) -> None:
        loaded = self._loaded.pop(key, None)
        if loaded is None:
            return
        if loaded.scheduler is not None:
            loaded.scheduler.stop(self.config.shutdown_grace_s)
        loaded.llm = loaded.scheduler = loaded.encoder = None
        _release_memory()
        logger.info("serve: unloaded %s", key)

    def _load(self, entry: ModelEntry, tag: str) -> LoadedModel:
        started = time.perf_counter()
        loaded = LoadedModel(entry, tag)
        if entry.kind == "llm":
            from arrowengine.runtime.llm import LLM

            options = {"max_context": self.config.context_tokens, **self.config.llm_options}
            if tag != "latest":
                for name in ("precision", "dtype", "weight_quant"):
                    options.pop(name, None)
                options["precision"] = tag
            loaded.llm = LLM(entry.path, **options)
            loaded.context = loaded.llm.max_context
            loaded.scheduler = Scheduler(loaded.llm, name=entry.name, max_batch=self.config.max_batch,
                                         max_queue=self.config.max_queue, context=loaded.context,
                                         prefill_chunk=self.config.prefill_chunk,
                                         retry_after_s=self.config.retry_after_s, on_finish=self.on_finish,
                                         prefix_cache=self.config.prefix_cache)
        else:
            from arrowengine.runtime.text_encoder import TextEncoder

            loaded.encoder = TextEncoder(entry.path, **self.config.embed_options)
            loaded.context = int(entry.config.get("max_position_embeddings", 512))
        logger.info("serve: loaded %s:%s in %.2f s", entry.name, tag, time.perf_counter() - started)
        return loaded
