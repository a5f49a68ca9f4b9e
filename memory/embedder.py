"""The embedder protocol and the default text embedder (arrowengine's ``TextEncoder`` on ``models/``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from memory.errors import EmbedderUnavailableError, EmbeddingDimensionError, InvalidEmbeddingError

__all__ = ["Embedder", "default_embedder", "normalise_rows"]

logger = logging.getLogger(__name__)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns a list of strings into a float32 ``[n, d]`` array of L2-normalised rows."""

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``."""
        ...


def default_embedder(models_dir: Path | None, name: str) -> Embedder:
    """arrowengine's ``TextEncoder`` on ``models_dir/name`` (imported lazily: only text memories need it).

    ``models_dir=None`` is the engine's model store, by the one rule of :func:`arrowengine.config.resolve_models_dir`.
    """
    from arrowengine.config import resolve_models_dir

    model_dir = Path(models_dir if models_dir is not None else resolve_models_dir()) / name
    if not (model_dir / "config.json").is_file():
        raise EmbedderUnavailableError(
            f"text embedder model {str(model_dir)!r} is missing; run `python scripts/fetch_models.py` "
            "to convert it, or pass embedder= to MemoryStore"
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub from a library code path
    from arrowengine import TextEncoder

    logger.info("memory store: default text embedder TextEncoder(%s)", model_dir)
    return TextEncoder(model_dir)


def normalise_rows(vectors: np.ndarray, dim: int | None, what: str) -> np.ndarray:
    """Check ``vectors`` is ``[n, dim]`` and finite, and L2-normalise each row (cosine search needs it)."""
    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidEmbeddingError(f"{what}: embedding has shape {arr.shape}; expected [n, d] or [d]")
    if dim is not None and arr.shape[1] != dim:
        raise EmbeddingDimensionError(
            f"{what}: embedding dimension {arr.shape[1]} does not match the store's table dimension {dim}; "
            "use the same embedder the store was created with, or a new store path"
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.all(np.isfinite(arr)) or np.any(norms == 0):
        raise InvalidEmbeddingError(f"{what}: embedding has a zero, NaN or infinite row; cannot be normalised")
    return np.ascontiguousarray(arr / norms, dtype=np.float32)
