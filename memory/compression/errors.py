"""Errors of the memory-compression SDK, rooted in :class:`memory.errors.MemoryStoreError` (an ``EngineError``).

Every class also derives from the builtin a caller would naturally catch, so ``except ValueError`` keeps
working for code that does not know about arrowengine.
"""

from __future__ import annotations

from memory.errors import EmptyContentError, MemoryStoreError

__all__ = [
    "CoderStateError",
    "CompressionError",
    "CorruptPayloadError",
    "EmptyContentError",
    "InvalidCoderSettingError",
    "InvalidContentError",
    "MissingCoderError",
    "ModelMismatchError",
    "RecordFormatError",
]


class CompressionError(MemoryStoreError, ValueError):
    """Root of the compression SDK's errors (``EmptyContentError`` is the store's own class, shared)."""


class CoderStateError(CompressionError, RuntimeError):
    """A coder or language model used out of order (a step before the message was begun)."""


class InvalidCoderSettingError(CompressionError):
    """A coder or language-model setting that cannot work (a tokenizer without an end token, a bad bit width)."""


class InvalidContentError(CompressionError, TypeError):
    """A memory is not a ``str`` (or holds text that cannot be stored as UTF-8)."""


class ModelMismatchError(CompressionError):
    """A record was written by another model, dictionary, coder version or context than the one decoding it."""


class CorruptPayloadError(CompressionError):
    """A record's payload does not decode to the text it was made from (checksum or length mismatch)."""


class RecordFormatError(CompressionError):
    """An Arrow record is not a compressed-memory record (missing field, wrong type, unknown layout version)."""


class MissingCoderError(CompressionError):
    """A method needs a component (LM, zstd dictionary, embedder) that was not given to the compressor."""
