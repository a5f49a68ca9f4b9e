"""Errors raised by the memory store, rooted in :class:`arrowengine.errors.EngineError`.

Each class also derives from the builtin a caller would catch (a missing id is a ``KeyError``, a bad
embedding a ``ValueError``), and every message names the memory id, column or path involved and the fix.
"""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "CommitConflictError",
    "EmbedderOutputError",
    "EmbedderUnavailableError",
    "EmbeddingDimensionError",
    "EmptyContentError",
    "InvalidEmbeddingError",
    "InvalidMetadataError",
    "InvalidSearchError",
    "MemoryNotFoundError",
    "MemoryStoreError",
    "StoreCorruptError",
    "StorePathError",
    "StorePathIsFileError",
    "StoreUnreachableError",
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


class EmbedderOutputError(InvalidEmbeddingError):
    """An embedder returned a different number of rows than the texts it was given."""


class EmptyContentError(MemoryStoreError, ValueError):
    """Empty or whitespace-only content: a memory to add, a search query, or a memory to compress.

    The one class for the store and the compression SDK (``memory.compression`` re-exports it).
    """


class InvalidSearchError(MemoryStoreError, ValueError, TypeError):
    """A search argument of the wrong type or out of range (``k`` not a positive int, for one)."""


class InvalidMetadataError(MemoryStoreError, ValueError):
    """Metadata that is not a JSON-serialisable dict, or an importance outside [0, 1]."""


class UnknownModalityError(MemoryStoreError, ValueError):
    """A modality outside the supported set, or a media memory without its embedding."""


class UnknownPolicyError(MemoryStoreError, ValueError):
    """A tiering/eviction/compression policy name that is not registered."""


class StorePathError(MemoryStoreError, PermissionError):
    """The store directory cannot be created or written."""


class StoreUnreachableError(MemoryStoreError, ConnectionError):
    """An object-store URI whose server cannot be reached or refuses the credentials."""


class StorePathIsFileError(StorePathError, NotADirectoryError):
    """The store path names an existing file, not a directory."""


class EmbedderUnavailableError(MemoryStoreError, FileNotFoundError):
    """The default text embedder's converted model is missing."""


class CommitConflictError(MemoryStoreError, RuntimeError):
    """A write kept conflicting with concurrent writers after every retry."""


class StoreCorruptError(MemoryStoreError, RuntimeError):
    """The table cannot be opened at any valid version."""
