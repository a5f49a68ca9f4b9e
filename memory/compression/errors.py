"""Errors of the memory-compression SDK, each rooted in :class:`arrowengine.errors.EngineError`.

Every class also derives from the builtin a caller would naturally catch, so ``except ValueError`` keeps
working for code that does not know about arrowengine.
"""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "CompressionError",
    "CorruptPayloadError",
    "EmptyContentError",
    "InvalidContentError",
    "MissingCoderError",
    "ModelMismatchError",
    "RecordFormatError",
]


class CompressionError(EngineError, ValueError):
    """Root of the compression SDK's errors."""


class EmptyContentError(CompressionError):
    """A memory to compress is empty (no text, or an empty list of memories)."""


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
