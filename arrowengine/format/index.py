"""The tensor index of a weight file: schema checks, reading the small columns, and per-tensor descriptions."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from arrowengine.errors import (
    CorruptFileError,
    MissingColumnError,
    SchemaError,
    TensorSizeError,
    UnsupportedSchemaVersionError,
)
from arrowengine.format.schema import (
    BLOB_COLUMNS,
    GGUF_QUANT_TYPES,
    META_SCHEMA_VERSION,
    SUPPORTED_SCHEMA_VERSIONS,
    dtype_from_name,
    small_columns,
)

__all__ = ["QuantInfo", "TensorInfo", "build_infos", "check_schema", "index_from_footer", "read_small_columns"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuantInfo:
    """The V2 quantization fields of one tensor."""

    quant_type: str
    bits: int
    group_size: int
    axis: int
    symmetric: bool
    scales_dtype: torch.dtype
    packed_shape: tuple[int, ...]
    scales_nbytes: int
    zero_points_nbytes: int


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives: dtype, shape, byte count, its rows (chunks) and the file offset of each blob."""

    name: str
    dtype: torch.dtype  # for a quantized tensor: the float dtype it dequantizes to
    shape: tuple[int, ...]  # logical shape
    nbytes: int  # stored bytes of the data blob (packed codes for a quantized tensor)
    row_group: int
    rows: tuple[int, ...]  # global row indices of the chunks, in chunk order
    file_offsets: tuple[int | None, ...]  # data payload offset per chunk; None where the row group is not mapped
    checksums: tuple[int, ...]
    blob_offsets: dict[str, int | None] | None = None  # V2: scales / zero_points payload offsets (chunk 0)
    quant: QuantInfo | None = None

    @property
    def numel(self) -> int:
        """Number of elements (of the logical tensor)."""
        return math.prod(self.shape)

    @property
    def is_quantized(self) -> bool:
        """True for a V2 row with ``quant_type != none``."""
        return self.quant is not None


def check_schema(path: Path, parquet: pq.ParquetFile, metadata: dict[str, str]) -> int:
    """The file's schema version, after checking it is supported and every required column is present."""
    version_text = metadata.get(META_SCHEMA_VERSION)
    if version_text is None:
        raise SchemaError(f"{path} is Parquet but not an arrowengine weight file (no {META_SCHEMA_VERSION} "
                          f"metadata); convert the model with 'arrowengine convert'")
    if not version_text.isdigit() or int(version_text) not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaVersionError(
            f"{path} declares schema version {version_text!r}; this build reads versions "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. Upgrade arrowengine or re-convert the model."
        )
    version = int(version_text)
    names = set(parquet.schema_arrow.names)
    for column in (*small_columns(version), *BLOB_COLUMNS[version]):
        if column not in names:
            raise MissingColumnError(f"{path} lacks the required column {column!r}; the file was not written "
                                     f"by arrowengine.write_weights: re-convert the model")
    return version


def index_from_footer(metadata: dict[str, str], num_rows: int, version: int) -> dict[str, list] | None:
    """The small columns from the footer copy written by arrowengine (None if absent or inconsistent)."""
    from arrowengine.format.writer import META_INDEX

    text = metadata.get(META_INDEX)
    if not text:
        return None
    try:
        index = json.loads(text)
        if all(len(index[name]) == num_rows for name in small_columns(version)):
            return index
    except (ValueError, KeyError, TypeError):
        pass
    logger.warning("the footer index of this weight file is unreadable; reading the index columns instead")
    return None


def read_small_columns(path: Path, parquet: pq.ParquetFile, version: int) -> dict[str, list]:
    """The small (index) columns read from the file itself."""
    columns = list(small_columns(version))
    try:
        table = parquet.read(columns=columns, use_threads=False)
        return {name: table.column(name).to_pylist() for name in columns}
    except (pa.ArrowException, OSError, ValueError) as exc:  # ValueError: a name that is not UTF-8
        raise CorruptFileError(f"{path}: the tensor index columns cannot be decoded ({exc}); the file is "
                               f"damaged: re-convert the model") from None


def _quant_info(path: Path, small: dict[str, list], row: int, name: str, shape: tuple[int, ...]) -> QuantInfo:
    info = QuantInfo(
        quant_type=small["quant_type"][row], bits=int(small["bits"][row]), group_size=int(small["group_size"][row]),
        axis=int(small["axis"][row]), symmetric=bool(small["symmetric"][row]),
        scales_dtype=dtype_from_name(small["scales_dtype"][row], tensor=name, path=path),
        packed_shape=tuple(int(s) for s in small["packed_shape"][row]),
        scales_nbytes=int(small["scales_nbytes"][row]), zero_points_nbytes=int(small["zero_points_nbytes"][row]),
    )
    if not shape or not -len(shape) <= info.axis < len(shape):
        raise CorruptFileError(f"{path}: quantized tensor {name!r} has axis {info.axis} for shape {list(shape)}; "
                               f"the file is damaged: re-quantize the model")
    if info.quant_type in GGUF_QUANT_TYPES:
        return _check_gguf_info(path, info, name, shape)
    k = shape[info.axis]
    rows = math.prod(shape) // k if k else 0
    groups = 1 if info.group_size == 0 else math.ceil(k / info.group_size)
    expected_scales = rows * groups * info.scales_dtype.itemsize
    if info.scales_nbytes != expected_scales or info.zero_points_nbytes != rows * groups:
        raise TensorSizeError(
            f"{path}: quantized tensor {name!r} stores {info.scales_nbytes} bytes of scales and "
            f"{info.zero_points_nbytes} of zero points, but shape {list(shape)} with group_size={info.group_size} "
            f"needs {expected_scales} and {rows * groups}; the file is damaged: re-quantize the model"
        )
    return info


def _check_gguf_info(path: Path, info: QuantInfo, name: str, shape: tuple[int, ...]) -> QuantInfo:
    """A V3 GGUF block row: ``[rows, k]`` as ``[rows, k / 32 * block_bytes]`` bytes, no separate scales."""
    from quant.gguf import gguf_type

    kind = gguf_type(info.quant_type)
    assert kind is not None
    expect = (shape[0], shape[1] // 32 * kind.block_bytes) if len(shape) == 2 and shape[1] % 32 == 0 else None
    if expect is None or info.packed_shape != expect or info.scales_nbytes or info.zero_points_nbytes:
        raise TensorSizeError(
            f"{path}: GGUF tensor {name!r} ({info.quant_type}) of shape {list(shape)} stores blocks "
            f"{list(info.packed_shape)} with {info.scales_nbytes} + {info.zero_points_nbytes} bytes of separate "
            f"scales / zero points, but needs blocks {list(expect or ())} and none; the file is damaged: "
            f"re-convert the model")
    return info


def build_infos(path: Path, small: dict[str, list], version: int, group_of_row: list[int],
                offsets: dict[str, list[int | None]]) -> dict[str, TensorInfo]:
    """One :class:`TensorInfo` per tensor; sizes are checked against shape x dtype (or the packed shape)."""
    chunks: dict[str, list[int]] = {}
    for row, name in enumerate(small["name"]):
        chunks.setdefault(name, []).append(row)
    infos: dict[str, TensorInfo] = {}
    for name, rows in chunks.items():
        rows.sort(key=lambda r: small["chunk"][r])
        if [small["chunk"][r] for r in rows] != list(range(len(rows))):
            raise CorruptFileError(f"{path}: tensor {name!r} has chunks {[small['chunk'][r] for r in rows]}, "
                                   f"expected 0..{len(rows) - 1}; the file is damaged: re-convert the model")
        first = rows[0]
        dtype = dtype_from_name(small["dtype"][first], tensor=name, path=path)
        shape = tuple(int(s) for s in small["shape"][first])
        if any(s < 0 for s in shape):
            raise CorruptFileError(f"{path}: tensor {name!r} has a negative dimension in shape {shape}")
        nbytes = sum(int(small["nbytes"][r]) for r in rows)
        quant = None
        if version >= 2 and small["quant_type"][first] != "none":
            quant = _quant_info(path, small, first, name, shape)
            expected, what = math.prod(quant.packed_shape), f"packed shape {list(quant.packed_shape)} x uint8"
        else:
            expected, what = math.prod(shape) * dtype.itemsize, f"shape {list(shape)} x {dtype}"
        if nbytes != expected:
            raise TensorSizeError(
                f"{path}: tensor {name!r} (row group {group_of_row[first]}) stores {nbytes} bytes but {what} needs "
                f"{expected}; the file is damaged or was written by another tool: re-convert the model"
            )
        file_offsets = tuple(None if offsets["data"][r] is None else offsets["data"][r] for r in rows)
        blob_offsets: dict[str, Any] | None = None
        if version >= 2:
            blob_offsets = {column: offsets[column][first] for column in ("scales", "zero_points")}
        infos[name] = TensorInfo(name, dtype, shape, nbytes, group_of_row[first], tuple(rows), file_offsets,
                                 tuple(int(small["checksum"][r]) for r in rows), blob_offsets, quant)
    return infos
