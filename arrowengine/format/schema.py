"""The on-disk weight schema: column names, Arrow types, metadata keys and the layout constants.

Schema V1 stores float (or any plain) tensors; V2 adds quantization columns. Both are ordinary Parquet files
that pyarrow, DuckDB or Spark can read; the constraints below only make zero-copy mapping possible.
"""

from __future__ import annotations

import pyarrow as pa
import torch

from arrowengine.errors import UnknownDtypeError

__all__ = [
    "ALIGNMENT",
    "CHECKSUM_ALGORITHM",
    "MAX_CHUNK_BYTES",
    "MAX_ROW_GROUP_BYTES",
    "MAX_ROW_GROUP_ROWS",
    "META_CHECKSUM",
    "META_CONFIG",
    "META_CREATED_BY",
    "META_MODEL_TYPE",
    "META_SCHEMA_VERSION",
    "SMALL_COLUMNS",
    "SUPPORTED_SCHEMA_VERSIONS",
    "dtype_from_name",
    "dtype_name",
    "schema_v1",
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
SUPPORTED_SCHEMA_VERSIONS = (1,)

# Columns the reader loads at open time: everything but the tensor bytes.
SMALL_COLUMNS = ("name", "dtype", "shape", "chunk", "data_offset", "nbytes", "checksum")

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


def schema_v1(metadata: dict[str, str] | None = None) -> pa.Schema:
    """Arrow schema of a V1 weight file; every field is non-nullable (no definition levels in the pages)."""
    fields = [
        pa.field("name", pa.string(), nullable=False),
        pa.field("dtype", pa.string(), nullable=False),
        pa.field("shape", pa.list_(pa.field("item", pa.int64(), nullable=False)), nullable=False),
        pa.field("chunk", pa.int32(), nullable=False),
        pa.field("data_offset", pa.int32(), nullable=False),
        pa.field("nbytes", pa.int64(), nullable=False),
        pa.field("checksum", pa.uint64(), nullable=False),
        pa.field("data", pa.binary(), nullable=False),
    ]
    return pa.schema(fields, metadata=metadata)
