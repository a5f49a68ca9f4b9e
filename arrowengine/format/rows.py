"""Turning tensors (plain or quantized) into weight-file rows, and grouping rows into row groups."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import xxhash

from arrowengine.errors import SchemaError
from arrowengine.format.schema import (
    ALIGNMENT,
    GGUF_QUANT_TYPES,
    MAX_ROW_GROUP_BYTES,
    MAX_ROW_GROUP_ROWS,
    QUANT_TYPES,
    dtype_name,
)

__all__ = ["Row", "group_rows", "is_gguf_blocks", "is_quantized", "layer_group", "rows_for"]

_LAYER_PATTERN = re.compile(r"^(.*?\.\d+)\.")
_EMPTY = np.empty(0, dtype=np.uint8)


@dataclass
class Row:
    """One row of a weight file: the index values and the raw bytes of each blob column."""

    name: str
    dtype: str
    shape: list[int]
    chunk: int
    blobs: dict[str, np.ndarray]  # column -> uint8 bytes (without pad)
    checksum: int
    quant: dict[str, Any] = field(default_factory=dict)  # the V2 columns of this row

    @property
    def nbytes(self) -> int:
        """Bytes of all blobs of this row."""
        return sum(b.size for b in self.blobs.values())


def layer_group(name: str) -> str:
    """Row-group key of a tensor: the name up to its first numeric component (``model.layers.3``), or ``""``."""
    match = _LAYER_PATTERN.match(name)
    return match.group(1) if match else ""


def is_quantized(value: object) -> bool:
    """True for a ``quant.QuantizedTensor`` (checked by shape of the object, so ``quant`` loads only if used)."""
    return all(hasattr(value, a) for a in ("packed", "scales", "zero_points", "bits", "group_size", "shape"))


def tensor_bytes(name: str, tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a flat uint8 array (a view when the tensor is contiguous on CPU)."""
    if not isinstance(tensor, torch.Tensor):
        raise SchemaError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise SchemaError(f"tensor {name!r} has layout {tensor.layout}; call .to_dense() before writing")
    if tensor.device.type == "meta":
        raise SchemaError(f"tensor {name!r} is on the meta device and has no data; materialise it first")
    dtype_name(tensor.dtype)  # raises UnknownDtypeError with the list of supported dtypes
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else _EMPTY


def _checksum(*parts: np.ndarray) -> int:
    digest = xxhash.xxh64()
    for part in parts:
        digest.update(memoryview(part))
    return digest.intdigest()


def _plain_quant(shape: list[int]) -> dict[str, Any]:
    return {"quant_type": "none", "bits": 0, "group_size": 0, "axis": 0, "symmetric": False, "scales_dtype": "none",
            "packed_shape": shape}


def rows_for(name: str, value: Any, max_chunk_bytes: int, *, quant_type: str | None = None,
             float_dtype: str = "float32") -> list[Row]:
    """Rows for one state-dict entry: a tensor (split into chunks over ``max_chunk_bytes``) or a quantized tensor."""
    if is_gguf_blocks(value):
        return [_gguf_row(name, value, float_dtype, max_chunk_bytes)]
    if is_quantized(value):
        return [_quantized_row(name, value, quant_type or f"int{value.bits}", float_dtype, max_chunk_bytes)]
    payload = tensor_bytes(name, value)
    dtype = dtype_name(value.dtype)
    shape = [int(s) for s in value.shape]
    pieces = [payload[i : i + max_chunk_bytes] for i in range(0, payload.size, max_chunk_bytes)] or [payload]
    return [Row(name, dtype, shape, index, {"data": piece}, _checksum(piece), _plain_quant(shape))
            for index, piece in enumerate(pieces)]


def _quantized_row(name: str, qt: Any, quant_type: str, float_dtype: str, max_chunk_bytes: int) -> Row:
    if quant_type not in QUANT_TYPES or quant_type == "none":
        raise SchemaError(f"tensor {name!r}: quant_type {quant_type!r} is not one of {', '.join(QUANT_TYPES[1:])}")
    data = tensor_bytes(name, qt.packed)
    scales = tensor_bytes(name + ".scales", qt.scales)
    zeros = tensor_bytes(name + ".zero_points", qt.zero_points)
    if data.size + scales.size + zeros.size > max_chunk_bytes:
        raise SchemaError(f"quantized tensor {name!r} holds {data.size} packed bytes, more than one chunk "
                          f"({max_chunk_bytes}); split the layer before quantizing")
    quant = {
        "quant_type": quant_type,
        "bits": int(qt.bits),
        "group_size": int(qt.group_size),
        "axis": int(qt.axis),
        "symmetric": bool(getattr(qt, "symmetric", False)),
        "scales_dtype": dtype_name(qt.scales.dtype),
        "packed_shape": [int(s) for s in qt.packed.shape],
    }
    return Row(name, float_dtype, [int(s) for s in qt.shape], 0,
               {"scales": scales, "zero_points": zeros, "data": data}, _checksum(data, scales, zeros), quant)


def is_gguf_blocks(value: object) -> bool:
    """True for a ``quant.gguf.GGUFBlocks`` (GGUF blocks kept as they are; a schema V3 row)."""
    return getattr(value, "quant_type", None) in GGUF_QUANT_TYPES and hasattr(value, "data")


def _gguf_row(name: str, blocks: Any, float_dtype: str, max_chunk_bytes: int) -> Row:
    data = tensor_bytes(name, blocks.data)
    if data.size > max_chunk_bytes:
        raise SchemaError(f"GGUF tensor {name!r} holds {data.size} bytes of blocks, more than one chunk "
                          f"({max_chunk_bytes}); raise max_chunk_bytes")
    quant = {"quant_type": blocks.quant_type, "bits": int(blocks.bits), "group_size": 32, "axis": 1,
             "symmetric": blocks.quant_type != "gguf_q4_1", "scales_dtype": "float16",
             "packed_shape": [int(s) for s in blocks.data.shape]}
    return Row(name, float_dtype, [int(s) for s in blocks.shape], 0, {"scales": _EMPTY, "zero_points": _EMPTY,
               "data": data}, _checksum(data, _EMPTY, _EMPTY), quant)


def group_rows(rows: list[Row]) -> list[list[Row]]:
    """Rows grouped by layer in first-appearance order, each group split to respect the row-group limits."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(layer_group(row.name), []).append(row)
    result: list[list[Row]] = []
    for group in groups.values():
        current: list[Row] = []
        current_bytes = 0
        for row in group:
            size = row.nbytes + 3 * ALIGNMENT
            if current and (len(current) >= MAX_ROW_GROUP_ROWS or current_bytes + size > MAX_ROW_GROUP_BYTES):
                result.append(current)
                current, current_bytes = [], 0
            current.append(row)
            current_bytes += size
        if current:
            result.append(current)
    return result
