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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from arrowengine import __version__
from arrowengine.errors import EngineError, SchemaError, WeightPathIsDirectoryError
from arrowengine.format.rows import Row, group_rows, is_gguf_blocks, is_quantized, layer_group, rows_for
from arrowengine.format.schema import (
    ALIGNMENT,
    BLOB_COLUMNS,
    CHECKSUM_ALGORITHM,
    MAX_CHUNK_BYTES,
    META_CHECKSUM,
    META_CONFIG,
    META_CREATED_BY,
    META_MODEL_TYPE,
    META_QUANT_RECIPE,
    META_SCHEMA_VERSION,
    PAD_COLUMN,
    SCHEMA_VERSION_GGUF,
    schema_for,
    small_columns,
)
from arrowengine.format.thrift import parse_page_header

__all__ = ["META_ALIASES", "META_INDEX", "WriteReport", "layer_group", "write_weights"]  # layer_group: re-export

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
_EMPTY = np.empty(0, dtype=np.uint8)
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
    schema_version: int = 1


def _storage_key(tensor: Any) -> tuple | None:
    if not isinstance(tensor, torch.Tensor) or tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    return (tensor.device.type, tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)


def _blob(row: Row, column: str) -> np.ndarray:
    """A row's bytes for a blob column (plain tensors in a V2 file have no scales or zero points)."""
    return row.blobs.get(column, _EMPTY)


def _blob_array(rows: list[Row], column: str, pads: list[int]) -> pa.Array:
    """A binary array of ``[zero pad][bytes]`` values built with one copy of the bytes."""
    lengths = np.array([pad + _blob(row, column).size for row, pad in zip(rows, pads, strict=True)], dtype=np.int64)
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.zeros(int(lengths.sum()), dtype=np.uint8)  # pads stay zero
    for row, pad, start in zip(rows, pads, offsets[:-1], strict=True):
        payload = _blob(row, column)
        blob[start + pad : start + pad + payload.size] = payload
    return pa.Array.from_buffers(pa.binary(), len(rows), [None, pa.py_buffer(offsets), pa.py_buffer(blob)])


def _table(rows: list[Row], pads: dict[str, list[int]], schema: pa.Schema, version: int) -> pa.Table:
    columns: dict[str, Any] = {
        "name": [r.name for r in rows],
        "dtype": [r.dtype for r in rows],
        "shape": [r.shape for r in rows],
        "chunk": [r.chunk for r in rows],
        "nbytes": [r.blobs["data"].size for r in rows],
        "checksum": [r.checksum for r in rows],
    }
    if version >= 2:
        for key in ("quant_type", "bits", "group_size", "axis", "symmetric", "scales_dtype", "packed_shape"):
            columns[key] = [r.quant[key] for r in rows]
        columns["scales_nbytes"] = [_blob(r, "scales").size for r in rows]
        columns["zero_points_nbytes"] = [_blob(r, "zero_points").size for r in rows]
    arrays = {}
    for name, values in columns.items():
        arrays[name] = pa.array(values, schema.field(name).type)
    for column in BLOB_COLUMNS[version]:
        arrays[PAD_COLUMN[column]] = pa.array(pads[column], pa.int32())
        arrays[column] = _blob_array(rows, column, pads[column])
    return pa.Table.from_pydict({name: arrays[name] for name in schema.names}, schema=schema)


def _serialise(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **_WRITER_OPTIONS) as writer:
        writer.write_table(table, row_group_size=table.num_rows)
    return sink.getvalue().to_pybytes()


def _payload_layout(buf: bytes, columns: tuple[str, ...]) -> tuple[dict[str, int], int]:
    """(offset of each blob column's page payload, size of the row group) in a one-row-group file in memory."""
    meta = pq.ParquetFile(pa.BufferReader(buf)).metadata
    names = meta.schema.names
    starts = {}
    for column in columns:
        chunk = meta.row_group(0).column(names.index(column))
        header = parse_page_header(memoryview(buf)[chunk.data_page_offset :])
        starts[column] = chunk.data_page_offset + header.header_length
    footer_length = int.from_bytes(buf[-8:-4], "little")
    return starts, len(buf) - 8 - footer_length - 4


def _aligned_pads(rows: list[Row], column: str, payload_start: int) -> list[int]:
    pads = []
    cursor = payload_start
    for row in rows:
        cursor += 4  # the PLAIN BYTE_ARRAY length prefix
        pad = -cursor % ALIGNMENT
        pads.append(pad)
        cursor += pad + _blob(row, column).size
    return pads


def _align_row_group(rows: list[Row], position: int, schema: pa.Schema, version: int) -> tuple[pa.Table, int]:
    """The row group's table with pads that align every blob when the group starts at file offset ``position``."""
    columns = BLOB_COLUMNS[version]
    pads = {column: [0] * len(rows) for column in columns}
    for _ in range(_MAX_PAD_ITERATIONS):
        table = _table(rows, pads, schema, version)
        starts, size = _payload_layout(_serialise(table), columns)
        done = True
        for column in columns:
            # In the trial file the row group starts right after the 4-byte magic; in the real one at `position`.
            new = _aligned_pads(rows, column, position + starts[column] - 4)
            if all((a - b) % ALIGNMENT == 0 for a, b in zip(pads[column], new, strict=True)):
                continue  # aligned already (a pad may carry an extra ALIGNMENT, see below)
            done = False
            if sum(new) < sum(pads[column]):
                # A smaller page can shrink its header varints and undo the alignment: never let a page shrink.
                new[0] += ALIGNMENT
            pads[column] = new
        if done:
            return table, size
    raise EngineError(f"could not align row group starting with {rows[0].name!r} (internal error; please report)")


def _metadata(
    metadata: Mapping[str, Any] | None, model_type: str | None, config: Mapping[str, Any] | None,
    aliases: dict[str, str], version: int, quant_recipe: Mapping[str, Any] | None,
) -> dict[str, str]:
    result = {
        META_SCHEMA_VERSION: str(version),
        META_MODEL_TYPE: model_type or (config or {}).get("model_type", "unknown"),
        META_CONFIG: json.dumps(dict(config or {}), sort_keys=True, default=str),
        META_CREATED_BY: f"arrowengine {__version__}",
        META_CHECKSUM: CHECKSUM_ALGORITHM,
    }
    if aliases:
        result[META_ALIASES] = json.dumps(aliases, sort_keys=True)
    if version >= 2:
        result[META_QUANT_RECIPE] = json.dumps(dict(quant_recipe or {}), sort_keys=True, default=str)
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise SchemaError(f"metadata key {key!r} is not a string")
        result[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return result


def _schema_version(state_dict: Mapping[str, Any]) -> int:
    """3 when any value is GGUF blocks, 2 when any is otherwise quantized, else 1."""
    if any(is_gguf_blocks(v) for v in state_dict.values()):
        return SCHEMA_VERSION_GGUF
    return 2 if any(is_quantized(v) for v in state_dict.values()) else 1


def write_weights(
    path: str | os.PathLike[str],
    state_dict: Mapping[str, Any],
    metadata: Mapping[str, Any] | None = None,
    *,
    model_type: str | None = None,
    config: Mapping[str, Any] | None = None,
    quant_recipe: Mapping[str, Any] | None = None,
    quant_types: Mapping[str, str] | None = None,
    max_chunk_bytes: int = MAX_CHUNK_BYTES,
    progress: Callable[[int], None] | None = None,
) -> WriteReport:
    """Write ``state_dict`` to ``path`` as an arrowengine weight file (atomically: temp file + rename).

    Values are tensors, or ``quant.QuantizedTensor`` objects: any of those makes the file schema V2 (quantized),
    else it is V1. ``quant_types`` names a quantized tensor's method (``gptq_int4`` ...; default ``int{bits}``);
    ``quant_recipe`` (V2) is stored as file metadata. Tensors that share storage with an earlier one (tied
    weights) are stored once and recorded as aliases. ``metadata`` values that are not strings are stored as
    JSON. ``progress`` is called with the number of bytes written after each row group (for progress bars).
    """
    start = time.perf_counter()
    path = Path(path)
    if path.is_dir():
        raise WeightPathIsDirectoryError(f"cannot write weights to {path}: it is a directory; pass a file path such "
                                         f"as {path / 'weights.parquet'}")
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise SchemaError(f"cannot write {path}: the state dict is empty or not a mapping of name -> tensor")
    if max_chunk_bytes <= 0 or max_chunk_bytes % ALIGNMENT:
        raise SchemaError(f"max_chunk_bytes must be a positive multiple of {ALIGNMENT}, got {max_chunk_bytes}")
    version = _schema_version(state_dict)
    float_dtype = str((quant_recipe or {}).get("dtype", "float32"))  # what quantized tensors dequantize to
    rows: list[Row] = []
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in state_dict.items():
        if not isinstance(name, str) or not name:
            raise SchemaError(f"state dict key {name!r} is not a non-empty string")
        key = _storage_key(value)
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        rows.extend(rows_for(name, value, max_chunk_bytes, quant_type=(quant_types or {}).get(name),
                             float_dtype=float_dtype))
    schema = schema_for(version, _metadata(metadata, model_type, config, aliases, version, quant_recipe))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    position = 4  # after the leading "PAR1" magic
    groups = group_rows(rows)
    index: dict[str, list] = {name: [] for name in small_columns(version)}
    try:
        with pq.ParquetWriter(str(tmp), schema, **_WRITER_OPTIONS) as writer:
            for group in groups:
                table, size = _align_row_group(group, position, schema, version)
                writer.write_table(table, row_group_size=table.num_rows)
                position += size
                for name in index:
                    index[name].extend(table.column(name).to_pylist())
                if progress is not None:
                    progress(sum(row.nbytes for row in group))
            writer.add_key_value_metadata({META_INDEX: json.dumps(index, separators=(",", ":"))})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    report = WriteReport(
        path=path,
        num_tensors=len(state_dict) - len(aliases),
        num_rows=len(rows),
        num_row_groups=len(groups),
        tensor_bytes=sum(row.nbytes for row in rows),
        file_bytes=path.stat().st_size,
        seconds=time.perf_counter() - start,
        aliases=aliases,
        schema_version=version,
    )
    logger.info("wrote %s: schema V%d, %d tensors, %d row groups, %.1f MiB in %.2f s", path, version,
                report.num_tensors, report.num_row_groups, report.file_bytes / 2**20, report.seconds)
    return report
