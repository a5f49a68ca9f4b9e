"""The on-disk weight schema: column names, Arrow types, metadata keys and the layout constants.

Schema V1 stores float (or any plain) tensors; V2 adds quantization columns; V3 has V2's columns and may hold
GGUF block rows (``GGUF_QUANT_TYPES``). Both are ordinary Parquet files
that pyarrow, DuckDB or Spark can read; the constraints below only make zero-copy mapping possible.
"""

from __future__ import annotations

import pyarrow as pa
import torch

from arrowengine.errors import UnknownDtypeError

__all__ = [
    "ALIGNMENT",
    "BLOB_COLUMNS",
    "CHECKSUM_ALGORITHM",
    "GGUF_QUANT_TYPES",
    "MAX_CHUNK_BYTES",
    "MAX_ROW_GROUP_BYTES",
    "MAX_ROW_GROUP_ROWS",
    "META_CHECKSUM",
    "META_CONFIG",
    "META_CREATED_BY",
    "META_MODEL_TYPE",
    "META_QUANT_RECIPE",
    "META_SCHEMA_VERSION",
    "PAD_COLUMN",
    "QUANT_TYPES",
    "SCHEMA_VERSION_GGUF",
    "SMALL_COLUMNS",
    "SMALL_COLUMNS_V2",
    "SUPPORTED_SCHEMA_VERSIONS",
    "dtype_from_name",
    "dtype_name",
    "schema_for",
    "schema_v1",
    "schema_v2",
    "small_columns",
]

ALIGNMENT = 64  # every tensor payload starts at a file offset divisible by this (cache line, AVX-512 loads)
MAX_CHUNK_BYTES = 512 * 1024 * 1024  # tensors above this are split into chunks (one row each)
MAX_ROW_GROUP_BYTES = 1024 * 1024 * 1024  # Parquet pages must stay below INT32_MAX; keep a wide margin
MAX_ROW_GROUP_ROWS = 1000  # < 1024 rows keeps each column chunk a single page (pyarrow checks per 1024 values)

META_SCHEMA_VERSION = "arrowengine.schema_version"
META_MODEL_TYPE = "arrowengine.model_type"
META_CONFIG = "arrowengine.config"
META_CREATED_BY = "arrowengine.created_by"
META_CHECKSUM = "arrowengine.checksum"
CHECKSUM_ALGORITHM = "xxh64"
SUPPORTED_SCHEMA_VERSIONS = (1, 2, 3)
META_QUANT_RECIPE = "arrowengine.quant_recipe"  # V2: JSON of method, bits, group size, calibration, FP16 layers

# Columns the reader loads at open time: everything but the tensor bytes.
SMALL_COLUMNS = ("name", "dtype", "shape", "chunk", "data_offset", "nbytes", "checksum")
SMALL_COLUMNS_V2 = (*SMALL_COLUMNS, "quant_type", "bits", "group_size", "axis", "symmetric", "scales_dtype",
                    "scales_offset", "scales_nbytes", "zero_points_offset", "zero_points_nbytes", "packed_shape")
# Binary columns in file order (data last); each value is [leading pad][payload], the pad in its *_offset column.
BLOB_COLUMNS = {1: ("data",), 2: ("scales", "zero_points", "data"), 3: ("scales", "zero_points", "data")}
PAD_COLUMN = {"data": "data_offset", "scales": "scales_offset", "zero_points": "zero_points_offset"}
QUANT_TYPES = ("none", "int8", "int4", "int2", "gptq_int8", "gptq_int4", "gptq_int2")
# V3: V2's columns, plus rows that keep a GGUF tensor's blocks byte for byte (quant.gguf documents the layouts):
# ``data`` holds the blocks ``[rows, k / 32 * block_bytes]`` (each block's float16 scale, and Q4_1's float16 min,
# inside it with their exact bits), ``scales`` and ``zero_points`` are empty, ``scales_dtype`` is float16,
# ``group_size`` 32. A file holding such a row is written as version 3, so V2-only readers refuse it by version.
GGUF_QUANT_TYPES = ("gguf_q8_0", "gguf_q4_0", "gguf_q4_1")
SCHEMA_VERSION_GGUF = 3


def small_columns(version: int) -> tuple[str, ...]:
    """The index columns of schema ``version``."""
    return SMALL_COLUMNS if version == 1 else SMALL_COLUMNS_V2

_DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "int16": torch.int16,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "float8_e4m3fn": torch.float8_e4m3fn,
    "float8_e5m2": torch.float8_e5m2,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """The schema's name for a torch dtype (``torch.bfloat16`` -> ``"bfloat16"``)."""
    try:
        return _NAMES[dtype]
    except KeyError:
        raise UnknownDtypeError(
            f"dtype {dtype} cannot be stored; supported: {', '.join(sorted(_DTYPES))}. "
            f"Convert the tensor with .to(...) first."
        ) from None


def dtype_from_name(name: str, *, tensor: str = "?", path: object = "?") -> torch.dtype:
    """The torch dtype for a schema dtype name; ``UnknownDtypeError`` naming the tensor and file if unknown."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise UnknownDtypeError(
            f"{path}: tensor {tensor!r} has unknown dtype {name!r}; this build knows "
            f"{', '.join(sorted(_DTYPES))}. Upgrade arrowengine or rewrite the file with a supported dtype."
        ) from None


def _int_list() -> pa.DataType:
    return pa.list_(pa.field("item", pa.int64(), nullable=False))


def _index_fields() -> list[pa.Field]:
    return [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", _int_list(), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("data_offset", pa.int32(), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
        pa.field("checksum", pa.uint64(), nullable=False),
    ]


def schema_v1(metadata: dict[str, str] | None = None) -> pa.Schema:
    """Arrow schema of a V1 weight file; every field is non-nullable (no definition levels in the pages)."""
    return pa.schema([*_index_fields(), pa.field("data", pa.binary(), nullable=False)], metadata=metadata)


def schema_v2(metadata: dict[str, str] | None = None) -> pa.Schema:
    """Arrow schema of a V2 (quantized) weight file: V1's columns plus the quantization columns.

    For a quantized row, ``dtype`` is the float dtype it dequantizes to, ``shape`` the logical shape, ``data``
    the packed codes (``packed_shape`` uint8, bit order in ``quant.packing``), ``scales`` float16/float32 and
    ``zero_points`` uint8 raw little-endian blobs of ``[rows, groups]``. ``quant_type = none`` rows are plain
    tensors, as in V1, with empty scales and zero points.
    """
    fields = [
        *_index_fields(),
        pa.field("quant_type", pa.string(), nullable=False),
        pa.field("bits", pa.int8(), nullable=False),
        pa.field("group_size", pa.int32(), nullable=False),
        pa.field("axis", pa.int8(), nullable=False),
        pa.field("symmetric", pa.bool_(), nullable=False),
        pa.field("scales_dtype", pa.string(), nullable=False),
        pa.field("scales_offset", pa.int32(), nullable=False),
        pa.field("scales_nbytes", pa.int64(), nullable=False),
        pa.field("zero_points_offset", pa.int32(), nullable=False),
        pa.field("zero_points_nbytes", pa.int64(), nullable=False),
        pa.field("packed_shape", _int_list(), nullable=False),
        pa.field("scales", pa.binary(), nullable=False),
        pa.field("zero_points", pa.binary(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
    return pa.schema(fields, metadata=metadata)


def schema_for(version: int, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Arrow schema of weight-file schema ``version``."""
    return schema_v1(metadata) if version == 1 else schema_v2(metadata)
