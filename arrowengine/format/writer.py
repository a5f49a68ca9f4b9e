"""Write a state dict as a Parquet weight file whose tensor bytes can later be mapped zero-copy.

Layout (DESIGN section 3): one row per tensor (or per chunk of a tensor over 512 MiB), one row group per
transformer layer, uncompressed PLAIN pages without dictionary, and every tensor payload starting at a 64-byte
aligned file offset. A trailing pad cannot align the first blob of a page (its position depends on the page
header), so each row group is serialised in memory first to learn where its payloads land; the leading pads
(``data_offset``) are then chosen to align them, and the row group is written for real.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import xxhash

from arrowengine import __version__
from arrowengine.errors import EngineError, SchemaError
from arrowengine.format.schema import (
    ALIGNMENT,
    CHECKSUM_ALGORITHM,
    MAX_CHUNK_BYTES,
    MAX_ROW_GROUP_BYTES,
    MAX_ROW_GROUP_ROWS,
    META_CHECKSUM,
    META_CONFIG,
    META_CREATED_BY,
    META_MODEL_TYPE,
    META_SCHEMA_VERSION,
    dtype_name,
    schema_v1,
)
from arrowengine.format.thrift import parse_page_header

__all__ = ["META_ALIASES", "META_INDEX", "WriteReport", "layer_group", "write_weights"]

logger = logging.getLogger(__name__)

META_ALIASES = "arrowengine.aliases"  # JSON {alias: target} for tensors sharing storage (tied weights)
# JSON copy of the small columns ({column: [values...]}) in the footer, so that opening a file needs no column
# read at all; the columns stay the source of truth for other readers and for `arrowengine verify`.
META_INDEX = "arrowengine.index"
_WRITER_OPTIONS: dict[str, Any] = dict(
    compression="NONE",
    use_dictionary=False,
    write_statistics=["name"],
    data_page_version="1.0",
    write_page_index=False,
    write_page_checksum=False,
)
_LAYER_PATTERN = re.compile(r"^(.*?\.\d+)\.")
_MAX_PAD_ITERATIONS = 16


@dataclass(frozen=True)
class WriteReport:
    """What :func:`write_weights` wrote."""

    path: Path
    num_tensors: int
    num_rows: int
    num_row_groups: int
    tensor_bytes: int
    file_bytes: int
    seconds: float
    aliases: dict[str, str] = field(default_factory=dict)


@dataclass
class _Row:
    name: str
    dtype: str
    shape: list[int]
    chunk: int
    payload: np.ndarray  # uint8 view of the tensor (chunk) bytes
    checksum: int


def layer_group(name: str) -> str:
    """Row-group key of a tensor: the name up to its first numeric component (``model.layers.3``), or ``""``."""
    match = _LAYER_PATTERN.match(name)
    return match.group(1) if match else ""


def _tensor_bytes(name: str, tensor: torch.Tensor) -> np.ndarray:
    if not isinstance(tensor, torch.Tensor):
        raise SchemaError(f"state dict entry {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.is_sparse or tensor.layout != torch.strided:
        raise SchemaError(f"tensor {name!r} has layout {tensor.layout}; call .to_dense() before writing")
    if tensor.device.type == "meta":
        raise SchemaError(f"tensor {name!r} is on the meta device and has no data; materialise it first")
    dtype_name(tensor.dtype)  # raises UnknownDtypeError with the list of supported dtypes
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, dtype=np.uint8)


def _rows_for(name: str, tensor: torch.Tensor, max_chunk_bytes: int) -> list[_Row]:
    payload = _tensor_bytes(name, tensor)
    dtype = dtype_name(tensor.dtype)
    shape = [int(s) for s in tensor.shape]
    pieces = [payload[i : i + max_chunk_bytes] for i in range(0, payload.size, max_chunk_bytes)] or [payload]
    return [
        _Row(name, dtype, shape, index, piece, xxhash.xxh64_intdigest(memoryview(piece)))
        for index, piece in enumerate(pieces)
    ]


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    if tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    return (tensor.device.type, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def _group_rows(rows: list[_Row]) -> list[list[_Row]]:
    """Rows grouped by layer in first-appearance order, each group split to respect the row-group limits."""
    groups: dict[str, list[_Row]] = {}
    for row in rows:
        groups.setdefault(layer_group(row.name), []).append(row)
    result: list[list[_Row]] = []
    for group in groups.values():
        current: list[_Row] = []
        current_bytes = 0
        for row in group:
            size = row.payload.size + ALIGNMENT
            if current and (len(current) >= MAX_ROW_GROUP_ROWS or current_bytes + size > MAX_ROW_GROUP_BYTES):
                result.append(current)
                current, current_bytes = [], 0
            current.append(row)
            current_bytes += size
        if current:
            result.append(current)
    return result


def _table(rows: list[_Row], pads: list[int], schema: pa.Schema) -> pa.Table:
    lengths = np.array([pad + row.payload.size for row, pad in zip(rows, pads, strict=True)], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.zeros(int(lengths.sum()), dtype=np.uint8)  # pads stay zero
    for row, pad, start in zip(rows, pads, offsets[:-1], strict=True):
        blob[start + pad : start + pad + row.payload.size] = row.payload
    data = pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(blob)])
    columns = {
        "name": pa.array([r.name for r in rows], pa.string()),
        "dtype": pa.array([r.dtype for r in rows], pa.string()),
        "shape": pa.array([r.shape for r in rows], schema.field("shape").type),
        "chunk": pa.array([r.chunk for r in rows], pa.int32()),
        "data_offset": pa.array(pads, pa.int32()),
        "nbytes": pa.array([r.payload.size for r in rows], pa.int64()),
        "checksum": pa.array([r.checksum for r in rows], pa.uint64()),
        "data": data,
    }
    return pa.Table.from_pydict(columns, schema=schema)


def _serialise(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **_WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=table.num_rows)
    return sink.getvalue().to_pybytes()


def _payload_layout(buf: bytes) -> tuple[int, int]:
    """(offset of the data page payload, size of the row group) inside a one-row-group file in memory."""
    meta = pq.ParquetFile(pa.BufferReader(buf)).metadata
    column = meta.row_group(0).column(meta.num_columns - 1)  # "data" is the last column
    header = parse_page_header(memoryview(buf)[column.data_page_offset :])
    footer_length = int.from_bytes(buf[-8:-4], "little")
    return column.data_page_offset + header.header_length, len(buf) - 8 - footer_length - 4


def _aligned_pads(rows: list[_Row], payload_start: int) -> list[int]:
    pads = []
    cursor = payload_start
    for row in rows:
        cursor += 4  # the PLAIN BYTE_ARRAY length prefix
        pad = -cursor % ALIGNMENT
        pads.append(pad)
        cursor += pad + row.payload.size
    return pads


def _align_row_group(rows: list[_Row], position: int, schema: pa.Schema) -> tuple[pa.Table, int]:
    """The row group's table with pads that align its payloads when it starts at file offset ``position``."""
    pads = [0] * len(rows)
    for _ in range(_MAX_PAD_ITERATIONS):
        table = _table(rows, pads, schema)
        payload, size = _payload_layout(_serialise(table))
        # In the trial file the row group starts right after the 4-byte magic; in the real one at `position`.
        new_pads = _aligned_pads(rows, position + payload - 4)
        if all((a - b) % ALIGNMENT == 0 for a, b in zip(pads, new_pads, strict=True)):
            return table, size  # every payload already aligned (a pad may carry an extra ALIGNMENT, see below)
        if sum(new_pads) < sum(pads):
            # A smaller page can shrink its header varints and undo the alignment: never let the page shrink.
            new_pads[0] += ALIGNMENT
        pads = new_pads
    raise EngineError(f"could not align row group starting with {rows[0].name!r} (internal error; please report)")


def _metadata(
    metadata: Mapping[str, Any] | None, model_type: str | None, config: Mapping[str, Any] | None,
    aliases: dict[str, str],
) -> dict[str, str]:
    result = {
        META_SCHEMA_VERSION: "1",
        META_MODEL_TYPE: model_type or (config or {}).get("model_type", "unknown"),
        META_CONFIG: json.dumps(dict(config or {}), sort_keys=True, default=str),
        META_CREATED_BY: f"arrowengine {__version__}",
        META_CHECKSUM: CHECKSUM_ALGORITHM,
    }
    if aliases:
        result[META_ALIASES] = json.dumps(aliases, sort_keys=True)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise SchemaError(f"metadata key {key!r} is not a string")
        result[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return result


def write_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, Any] | None = None,
    *,
    model_type: str | None = None,
    config: Mapping[str, Any] | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> WriteReport:
    """Write ``state_dict`` to ``path`` as an arrowengine V1 weight file (atomically: temp file + rename).

    Tensors that share storage with an earlier one (tied weights) are stored once and recorded as aliases.
    ``metadata`` values that are not strings are stored as JSON. ``progress`` is called with the number of
    tensor bytes written after each row group (for progress bars).
    """
    start = time.perf_counter()
    path = Path(path)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise SchemaError(f"cannot write {path}: the state dict is empty or not a mapping of name -> tensor")
    if max_chunk_bytes <= 0 or max_chunk_bytes % ALIGNMENT:
        raise SchemaError(f"max_chunk_bytes must be a positive multiple of {ALIGNMENT}, got {max_chunk_bytes}")
    rows: list[_Row] = []
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        if not isinstance(name, str) or not name:
            raise SchemaError(f"state dict key {name!r} is not a non-empty string")
        key = _storage_key(tensor) if isinstance(tensor, torch.Tensor) else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        rows.extend(_rows_for(name, tensor, max_chunk_bytes))
    schema = schema_v1(_metadata(metadata, model_type, config, aliases))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    position = 4  # after the leading "PAR1" magic
    groups = _group_rows(rows)
    index: dict[str, list] = {name: [] for name in ("name", "dtype", "shape", "chunk", "data_offset", "nbytes",
                                                     "checksum")}
    try:
        with pq.ParquetWriter(str(tmp), schema, **_WRITER_OPTIONS) as writer:
            for group in groups:
                table, size = _align_row_group(group, position, schema)
                writer.write_table(table, row_group_size=table.num_rows)
                position += size
                for name in index:
                    index[name].extend(table.column(name).to_pylist())
                if progress is not None:
                    progress(sum(row.payload.size for row in group))
            writer.add_key_value_metadata({META_INDEX: json.dumps(index, separators=(",", ":"))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    report = WriteReport(
        path=path,
        num_tensors=len(state_dict) - len(aliases),
        num_rows=len(rows),
        num_row_groups=len(groups),
        tensor_bytes=sum(row.payload.size for row in rows),
        file_bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
        aliases=aliases,
    )
    logger.info("wrote %s: %d tensors, %d row groups, %.1f MiB in %.2f s", path, report.num_tensors,
                report.num_row_groups, report.file_bytes / 2**20, report.seconds)
    return report
