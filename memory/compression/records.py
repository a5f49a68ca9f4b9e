"""``CompressedMemory``: one compressed memory, serialised as a one-row Arrow record.

The record carries everything a reconstructor needs to refuse what it cannot decode: the method, the coder
version, the checksum of the model (or zstd dictionary) and of the conversation context, the CRC32 and byte
length of the original, plus the quality metrics measured at compression time. Its stored size is the size of
its Arrow row (all value buffers, offsets and validity bits; the schema is shared by every row of a table and
not counted), which is what the ratio divides by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pyarrow as pa

from memory.compression.errors import RecordFormatError

__all__ = [
    "METHODS",
    "RECORD_SCHEMA",
    "RECORD_VERSION",
    "CompressedMemory",
]

RECORD_VERSION = 1
"""Layout version of :data:`RECORD_SCHEMA`; a reader refuses any other."""

METHODS = ("zstd", "zstd_dict", "lm", "semantic")
"""``zstd``/``zstd_dict``/``lm`` are lossless; ``semantic`` keeps a coded summary + entities and an embedding."""

RECORD_SCHEMA = pa.schema(
    [
        pa.field("record_version", pa.uint8(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("coder_version", pa.uint16(), nullable=False),
        pa.field("model_checksum", pa.string(), nullable=False),
        pa.field("context_checksum", pa.uint32(), nullable=False),
        pa.field("content_crc32", pa.uint32(), nullable=False),
        pa.field("original_length", pa.int64(), nullable=False),
        pa.field("token_path", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("summary", pa.string(), nullable=False),
        pa.field("entities", pa.list_(pa.field("item", pa.string(), nullable=False)), nullable=False),
        pa.field("embedding", pa.binary(), nullable=False),
        pa.field("embedding_scale", pa.float32(), nullable=False),
        pa.field("flagged", pa.bool_(), nullable=False),
        pa.field("ratio", pa.float32(), nullable=False),
        pa.field("cosine", pa.float32(), nullable=False),
        pa.field("entity_retention", pa.float32(), nullable=False),
        pa.field("latency_ms", pa.float32(), nullable=False),
    ],
    metadata={"arrowengine.compressed_memory.version": str(RECORD_VERSION)},
)
"""The Arrow layout of a compressed memory (one row per memory)."""

_FLOAT32_FIELDS = ("embedding_scale", "ratio", "cosine", "entity_retention", "latency_ms")


@dataclass(frozen=True)
class CompressedMemory:
    """One compressed memory plus the metrics measured when it was made.

    ``ratio`` is raw UTF-8 bytes over :attr:`stored_bytes`; ``cosine`` and ``entity_retention`` compare the
    original with its reconstruction (1.0 for the lossless methods, NaN when not measured); ``flagged`` marks a
    semantic compression below the quality threshold, whose payload then holds the raw text (zstd).
    """

    method: str
    coder_version: int
    original_length: int
    content_crc32: int
    payload: bytes = b""
    model_checksum: str = ""
    context_checksum: int = 0
    token_path: str = ""
    summary: str = ""
    entities: tuple[str, ...] = ()
    embedding: bytes = b""
    embedding_scale: float = 0.0
    flagged: bool = False
    ratio: float = math.nan
    cosine: float = math.nan
    entity_retention: float = math.nan
    latency_ms: float = math.nan
    record_version: int = RECORD_VERSION

    def __post_init__(self) -> None:
        # float fields are float32 in the record; round now so a round trip compares equal
        for name in _FLOAT32_FIELDS:
            object.__setattr__(self, name, float(np.float32(getattr(self, name))))

    @property
    def lossless(self) -> bool:
        """Whether :class:`~memory.compression.reconstructor.Reconstructor` returns the exact original."""
        return self.method != "semantic" or self.flagged

    @property
    def stored_bytes(self) -> int:
        """Bytes of this memory's Arrow row (values, offsets, validity): what the store keeps for it."""
        return int(self.to_arrow().nbytes)

    @property
    def payload_ratio(self) -> float:
        """Raw bytes over payload bytes alone: the coder's own ratio, comparable with a bare zstd frame."""
        return self.original_length / max(len(self.payload), 1)

    def embedding_vector(self) -> np.ndarray:
        """The stored embedding as float32 (int8 dequantized; binary as +-1/sqrt(d)); empty when there is none."""
        if self.method == "semantic" and self.token_path.endswith("/binary"):
            bits = np.unpackbits(np.frombuffer(self.embedding, dtype=np.uint8)).astype(np.float32)
            return (bits * 2.0 - 1.0) / np.float32(np.sqrt(max(bits.size, 1)))
        return np.frombuffer(self.embedding, dtype=np.int8).astype(np.float32) * np.float32(self.embedding_scale)

    def with_metrics(self, **metrics: Any) -> CompressedMemory:
        """A copy with metric fields replaced (``ratio``, ``cosine``, ``entity_retention``, ``latency_ms``...)."""
        return replace(self, **metrics)

    def to_arrow(self) -> pa.RecordBatch:
        """This memory as a one-row :class:`pyarrow.RecordBatch` with :data:`RECORD_SCHEMA`."""
        row = {f.name: getattr(self, f.name) for f in fields(self)}
        row["entities"] = list(self.entities)
        return pa.RecordBatch.from_pylist([row], schema=RECORD_SCHEMA)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table, row: int = 0) -> CompressedMemory:
        """Read row ``row`` of a record batch or table laid out as :data:`RECORD_SCHEMA`."""
        missing = [f.name for f in RECORD_SCHEMA if f.name not in batch.schema.names]
        if missing:
            raise RecordFormatError(
                f"Arrow record lacks field(s) {missing}; it is not a compressed-memory record "
                f"(expected the schema memory.compression.RECORD_SCHEMA)"
            )
        for f in RECORD_SCHEMA:
            actual = batch.schema.field(f.name).type
            if not actual.equals(f.type):
                raise RecordFormatError(
                    f"field {f.name!r} of the Arrow record has type {actual}, expected {f.type}"
                )
        if not 0 <= row < batch.num_rows:
            raise RecordFormatError(f"row {row} is out of range for an Arrow record of {batch.num_rows} rows")
        values = {name: batch.column(name)[row].as_py() for name in RECORD_SCHEMA.names}
        if values["record_version"] != RECORD_VERSION:
            raise RecordFormatError(
                f"compressed-memory record has layout version {values['record_version']}, this build reads "
                f"version {RECORD_VERSION}; upgrade arrowengine to read it"
            )
        values["entities"] = tuple(values["entities"])
        return cls(**values)

    def to_bytes(self) -> bytes:
        """Standalone serialisation: an Arrow IPC stream (schema + this one row)."""
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, RECORD_SCHEMA) as writer:
            writer.write_batch(self.to_arrow())
        return sink.getvalue().to_pybytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> CompressedMemory:
        """Read what :meth:`to_bytes` wrote."""
        try:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        except (pa.ArrowInvalid, OSError) as exc:
            raise RecordFormatError(
                f"{len(data)} bytes are not an Arrow IPC stream of a compressed memory: {exc}"
            ) from None
        return cls.from_arrow(table)
