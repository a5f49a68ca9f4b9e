"""``ServeConfig``: every knob of ``arrowengine serve`` in one frozen dataclass (defaults live here)."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from arrowengine.serve.errors import ServeConfigError

__all__ = ["ServeConfig", "load_api_keys"]

logger = logging.getLogger(__name__)

# the documented fallback for keys when neither --api-key-file nor ServeConfig.api_keys is given
API_KEYS_ENV = "ARROWENGINE_API_KEYS"


@dataclass(frozen=True)
class ServeConfig:
    """Server, model cache, scheduler, limits and security settings.

    ``api_keys`` empty means no authentication (fine on 127.0.0.1; binding elsewhere without keys logs a
    loud warning). Limits of 0 are off. ``llm_options`` are passed to ``arrowengine.LLM`` as keyword
    arguments (``dtype``, ``weight_quant``, ...), so greedy output equals ``LLM(dir, **llm_options).chat``.
    """

    host: str = "127.0.0.1"
    port: int = 11434
    models_dir: Path = Path("models")
    # model cache (R-seed 000 AC1.3.1: at most 3 models loaded)
    max_loaded_models: int = 3
    keep_alive_s: float = 300.0
    llm_options: dict[str, Any] = field(default_factory=dict)
    embed_options: dict[str, Any] = field(default_factory=dict)
    context_tokens: int = 4096  # per-sequence KV length (caps the model's own window)
    # continuous batching
    max_batch: int = 8
    max_queue: int = 64
    prefill_chunk: int = 128
    # a new request takes the free cache row holding the longest prefix of its prompt (a repeated system prompt
    # or chat history) and prefills only the rest
    prefix_cache: bool = True
    # limits
    max_body_bytes: int = 1 << 20
    max_tokens_limit: int = 4096
    default_max_tokens: int = 512
    max_prompt_tokens: int = 0  # 0: the context window is the only limit
    max_streams_per_key: int = 0
    rate_limit_per_minute: int = 0
    retry_after_s: int = 1
    # security
    api_keys: tuple[str, ...] = ()
    # operations
    log_prompts: bool = False
    shutdown_grace_s: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "models_dir", Path(self.models_dir))
        object.__setattr__(self, "api_keys", tuple(k.strip() for k in self.api_keys if k.strip()))
        positive = ("max_loaded_models", "context_tokens", "max_batch", "max_queue", "prefill_chunk",
                    "max_body_bytes", "max_tokens_limit", "default_max_tokens")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ServeConfigError(f"ServeConfig.{name}={getattr(self, name)!r} is invalid; use an integer >= 1")
        non_negative = ("max_prompt_tokens", "max_streams_per_key", "rate_limit_per_minute", "retry_after_s")
        for name in non_negative:
            if int(getattr(self, name)) < 0:
                raise ServeConfigError(f"ServeConfig.{name}={getattr(self, name)!r} is invalid; use 0 (off) or more")
        if not 0 <= self.port <= 65535:
            raise ServeConfigError(f"ServeConfig.port={self.port} is invalid; use 0 (any free port) to 65535")

    def with_overrides(self, **overrides: Any) -> ServeConfig:
        """A copy with the given fields replaced (validated again)."""
        return replace(self, **overrides)

    @property
    def is_loopback(self) -> bool:
        """True when the server only listens on this machine."""
        return self.host in ("127.0.0.1", "localhost", "::1")

    def key_id(self, key: str | None) -> str:
        """A short, non-reversible name of a key for logs and per-key limits ("-" without a key)."""
        if not key:
            return "-"
        return hashlib.sha256(key.encode()).hexdigest()[:8]


def load_api_keys(path: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """API keys from ``path`` (one per line, ``#`` comments) or else ``$ARROWENGINE_API_KEYS`` (comma-separated)."""
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ServeConfigError(f"cannot read the API key file {path}: {exc}; pass a readable file") from exc
        keys = tuple(s.strip() for s in lines if s.strip() and not s.strip().startswith("#"))
        if not keys:
            raise ServeConfigError(f"the API key file {path} holds no key; write one key per line")
        return keys
    env = os.environ.get(API_KEYS_ENV, "")
    return tuple(k.strip() for k in env.split(",") if k.strip())
