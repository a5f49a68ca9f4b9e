"""Errors raised by the memory store, rooted in :class:`arrowengine.errors.EngineError`.

Each class also derives from the builtin a caller would catch (a missing id is a ``KeyError``, a bad
embedding a ``ValueError``), and every message names the memory id, column or path involved and the fix.
"""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "CommitConflictError",
    "EmbedderUnavailableError",
    "EmbeddingDimensionError",
    "EmptyContentError",
    "InvalidEmbeddingError",
    "InvalidMetadataError",
    "MemoryNotFoundError",
    "MemoryStoreError",
    "StoreCorruptError",
    "StorePathError",
    "UnknownModalityError",
    "UnknownPolicyError",
]


class MemoryStoreError(EngineError):
    """Root of the memory store's errors."""


class MemoryNotFoundError(MemoryStoreError, KeyError):
    """No memory with the requested id exists in the store."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class InvalidEmbeddingError(MemoryStoreError, ValueError):
    """An embedding with a zero, NaN or infinite row, or of the wrong rank."""


class EmbeddingDimensionError(InvalidEmbeddingError):
    """An embedding's dimension differs from the dimension of the store's table."""


class EmptyContentError(MemoryStoreError, ValueError):
    """A memory was added with empty or whitespace-only content."""


class InvalidMetadataError(MemoryStoreError, ValueError):
    """Metadata that is not a JSON-serialisable dict, or an importance outside [0, 1]."""


class UnknownModalityError(MemoryStoreError, ValueError):
    """A modality outside the supported set, or a media memory without its embedding."""


class UnknownPolicyError(MemoryStoreError, ValueError):
    """A tiering/eviction/compression policy name that is not registered."""


class StorePathError(MemoryStoreError, PermissionError):
    """The store directory cannot be created or written."""


class EmbedderUnavailableError(MemoryStoreError, FileNotFoundError):
    """The default text embedder's converted model is missing."""


class CommitConflictError(MemoryStoreError, RuntimeError):
    """A write kept conflicting with concurrent writers after every retry."""


class StoreCorruptError(MemoryStoreError, RuntimeError):
    """The table cannot be opened at any valid version."""
