"""Cards and deltas as Arrow record batches: the payload of every Flight stream (docs/federation_protocol.md).

A tensor's payload is cut into parts of at most ``max_part_bytes`` (one row each) and rows are packed into
batches of at most ``max_batch_bytes``, so no Flight message nears gRPC's message size limit however large the
card. Every row carries the xxh64 of its payload; the reader checks it, the part numbering and the shapes
before anything is built, and raises :class:`DeltaError` / :class:`CardError` naming the row (a damaged delta:
:class:`DeltaIntegrityError`, which the sync protocol answers with a full sync).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import torch

from federation.card import META_CARD, CardMeta, LoRACard
from federation.checksum import bytes_checksum
from federation.delta import Delta
from federation.encoding import VALUE_DTYPES, EncodedTensor
from federation.errors import CardError, DeltaError, DeltaIntegrityError

__all__ = ["CARD_SCHEMA", "DELTA_SCHEMA", "META_DELTA", "META_KIND", "WireLimits", "card_batches",
           "card_from_batches", "card_schema", "delta_batches", "delta_from_batches", "delta_schema"]

META_KIND = "federation.kind"
META_DELTA = "federation.delta"
_SHAPE = pa.list_(pa.field("item", pa.int64(), nullable=False))
_COMMON = [pa.field("name", pa.string(), nullable=False), pa.field("part", pa.int32(), nullable=False),
           pa.field("parts", pa.int32(), nullable=False), pa.field("shape", _SHAPE, nullable=False)]
CARD_SCHEMA = pa.schema([*_COMMON, pa.field("dtype", pa.string(), nullable=False),
                         pa.field("data", pa.binary(), nullable=False),
                         pa.field("checksum", pa.uint64(), nullable=False)])
DELTA_SCHEMA = pa.schema([*_COMMON, pa.field("method", pa.string(), nullable=False),
                          pa.field("scale", pa.float32(), nullable=False),
                          pa.field("index_bits", pa.int8(), nullable=False),
                          pa.field("indices", pa.binary(), nullable=False),
                          pa.field("values", pa.binary(), nullable=False),
                          pa.field("checksum", pa.uint64(), nullable=False)])


class WireLimits:
    """Sizes of the pieces a stream is cut into (both sides use the same numbers)."""

    def __init__(self, max_part_bytes: int = 1 << 20, max_batch_bytes: int = 2 << 20) -> None:
        if max_part_bytes <= 0 or max_batch_bytes < max_part_bytes:
            raise DeltaError(f"need 0 < max_part_bytes ({max_part_bytes}) <= max_batch_bytes ({max_batch_bytes})")
        self.max_part_bytes = max_part_bytes
        self.max_batch_bytes = max_batch_bytes


def _batches(schema: pa.Schema, rows: Iterable[dict], limits: WireLimits) -> Iterator[pa.RecordBatch]:
    pending: list[dict] = []
    size = 0
    for row in rows:
        row_bytes = sum(len(v) for v in row.values() if isinstance(v, bytes))
        if pending and size + row_bytes > limits.max_batch_bytes:
            yield pa.RecordBatch.from_pylist(pending, schema=schema)
            pending, size = [], 0
        pending.append(row)
        size += row_bytes
    if pending:
        yield pa.RecordBatch.from_pylist(pending, schema=schema)


def _split(n: int, item_bytes: int, limits: WireLimits) -> list[tuple[int, int]]:
    per = max(1, limits.max_part_bytes // max(item_bytes, 1))
    return [(i, min(n, i + per)) for i in range(0, n, per)] or [(0, 0)]


# ---------------------------------------------------------------------------- cards
def card_schema(meta: CardMeta) -> pa.Schema:
    """The card stream schema with ``meta`` in its metadata."""
    return CARD_SCHEMA.with_metadata({META_KIND: "card", META_CARD: meta.to_json()})


def card_batches(card: LoRACard, limits: WireLimits | None = None) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """``card`` as its stream schema and batches (tensors in name order, each cut into parts)."""
    from arrowengine.format.rows import tensor_bytes
    from arrowengine.format.schema import dtype_name

    limits = limits or WireLimits()

    def rows() -> Iterator[dict]:
        for name in sorted(card.tensors):
            t = card.tensors[name]
            raw = tensor_bytes(name, t)
            spans = _split(t.numel(), t.element_size(), limits)
            for part, (a, b) in enumerate(spans):
                data = raw[a * t.element_size(): b * t.element_size()].tobytes()
                yield {"name": name, "part": part, "parts": len(spans), "shape": list(t.shape),
                       "dtype": dtype_name(t.dtype), "data": data, "checksum": bytes_checksum(data)}

    schema = card_schema(card.meta)
    return schema, list(_batches(schema, rows(), limits))


def _schema_json(schema: pa.Schema, key: str, kind: str, error: type[Exception]) -> str:
    metadata = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    if metadata.get(META_KIND) != kind or key not in metadata:
        raise error(f"the stream is not a {kind} stream (schema metadata {META_KIND}={metadata.get(META_KIND)!r}); "
                    f"see docs/federation_protocol.md")
    return metadata[key]


def _grouped(batches: Iterable[pa.RecordBatch], schema: pa.Schema, error: type[Exception],
             damaged: type[Exception]) -> dict[str, list[dict]]:
    """Rows by tensor name; ``error`` for a malformed stream, ``damaged`` for a failed checksum or missing parts."""
    parts: dict[str, list[dict]] = {}
    for batch in batches:
        if not batch.schema.equals(schema, check_metadata=False):
            raise error(f"a batch has schema {batch.schema.names}, expected {schema.names}")
        for row in batch.to_pylist():
            payload = b"".join(row[c] for c in ("indices", "values", "data") if c in row)
            if bytes_checksum(payload) != row["checksum"]:
                raise damaged(f"{row['name']} part {row['part']}: checksum mismatch (payload damaged in transit); "
                            f"nothing was applied, send it again")
            parts.setdefault(row["name"], []).append(row)
    for name, rows in parts.items():
        if [r["part"] for r in rows] != list(range(rows[0]["parts"])) or any(r["parts"] != rows[0]["parts"]
                                                                              for r in rows):
            raise damaged(f"{name}: parts {[r['part'] for r in rows]} of {rows[0]['parts']} are missing or out of "
                        f"order; the stream was cut short")
    return parts


def card_from_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> LoRACard:
    """Rebuild a card from its stream, checking checksums, part order and byte counts."""
    from arrowengine.format.schema import dtype_from_name

    meta = CardMeta.from_json(_schema_json(schema, META_CARD, "card", CardError))
    tensors = {}
    for name, rows in _grouped(batches, CARD_SCHEMA, CardError, CardError).items():
        dtype = dtype_from_name(rows[0]["dtype"], tensor=name)
        shape = tuple(rows[0]["shape"])
        data = bytearray(b"".join(r["data"] for r in rows))
        if len(data) != math.prod(shape) * torch.empty(0, dtype=dtype).element_size():
            raise CardError(f"{name}: {len(data)} bytes do not fill shape {list(shape)} of {dtype}")
        tensors[name] = torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.empty(shape, dtype=dtype)
    return LoRACard(meta, tensors)


# ---------------------------------------------------------------------------- deltas
def delta_schema(delta: Delta) -> pa.Schema:
    """The delta stream schema with the delta's base in its metadata."""
    head = json.dumps({"adapter": delta.adapter, "base_version": delta.base_version,
                       "base_checksum": delta.base_checksum}, sort_keys=True, separators=(",", ":"))
    return DELTA_SCHEMA.with_metadata({META_KIND: "delta", META_DELTA: head})


def delta_batches(delta: Delta, limits: WireLimits | None = None) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """``delta`` as its stream schema and batches."""
    limits = limits or WireLimits()

    def rows() -> Iterator[dict]:
        for name in sorted(delta.tensors):
            enc = delta.tensors[name]
            item = enc.values.itemsize + enc.indices.itemsize * bool(enc.indices.size)
            spans = _split(enc.values.size, item, limits)
            for part, (a, b) in enumerate(spans):
                indices, values = enc.indices[a:b].tobytes(), enc.values[a:b].tobytes()
                yield {"name": name, "part": part, "parts": len(spans), "shape": list(enc.shape),
                       "method": enc.method, "scale": enc.scale, "index_bits": enc.indices.itemsize * 8,
                       "indices": indices, "values": values, "checksum": bytes_checksum(indices + values)}

    schema = delta_schema(delta)
    return schema, list(_batches(schema, rows(), limits))


def delta_from_batches(schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Delta:
    """Rebuild a delta from its stream, checking checksums, part order and encodings."""
    try:
        head = json.loads(_schema_json(schema, META_DELTA, "delta", DeltaError))
        adapter, base_version, base_checksum = head["adapter"], int(head["base_version"]), str(head["base_checksum"])
    except (KeyError, TypeError, ValueError) as exc:
        raise DeltaError(f"the delta stream's {META_DELTA} metadata is malformed ({exc})") from exc
    tensors = {}
    for name, rows in _grouped(batches, DELTA_SCHEMA, DeltaError, DeltaIntegrityError).items():
        first = rows[0]
        method = first["method"]
        if method not in VALUE_DTYPES or first["index_bits"] not in (16, 32):
            raise DeltaError(f"{name}: unknown encoding {method!r} / index width {first['index_bits']}")
        index_dtype = np.uint16 if first["index_bits"] == 16 else np.uint32
        try:
            values = np.frombuffer(b"".join(r["values"] for r in rows), dtype=VALUE_DTYPES[method])
            indices = np.frombuffer(b"".join(r["indices"] for r in rows), dtype=index_dtype)
        except ValueError as exc:  # a byte count that is not a whole number of elements
            raise DeltaError(f"{name}: the {method} payload is malformed ({exc})") from exc
        tensors[name] = EncodedTensor(method, tuple(first["shape"]), values.copy(), indices.copy(),
                                      float(first["scale"]))
    return Delta(adapter, base_version, base_checksum, tensors)
