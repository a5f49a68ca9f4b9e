"""Open a Parquet weight file and hand out tensors that live inside the file mapping (zero-copy).

At open only the footer, the small columns (name, dtype, shape, ...) and one page header per row group are
read; tensor pages fault in when a tensor is first touched. The file is mapped copy-on-write, so in-place edits
of a tensor never reach the file. Row groups that cannot be mapped (compressed, dictionary-encoded, several
pages: any Parquet writer other than ours) are decoded by pyarrow on first access instead, with one warning.
"""

from __future__ import annotations

import json
import logging
import math
import mmap
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from arrowengine.errors import (
    CorruptFileError,
    MissingColumnError,
    NotParquetError,
    SchemaError,
    TensorSizeError,
    UnsupportedSchemaVersionError,
    WeightFileNotFoundError,
)
from arrowengine.format.layout import RowGroupLayout, plan_row_group
from arrowengine.format.schema import (
    ALIGNMENT,
    META_CONFIG,
    META_MODEL_TYPE,
    META_SCHEMA_VERSION,
    SMALL_COLUMNS,
    SUPPORTED_SCHEMA_VERSIONS,
    dtype_from_name,
)
from arrowengine.format.writer import META_ALIASES, META_INDEX

__all__ = ["TensorInfo", "WeightFile", "ZeroCopyFallbackWarning", "resolve_weights_path"]

logger = logging.getLogger(__name__)

_MAGIC = b"PAR1"


class ZeroCopyFallbackWarning(UserWarning):
    """Some row groups of a weight file cannot be mapped and are decoded (copied) by pyarrow instead."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives: dtype, shape, byte count, its rows (chunks) and their file offsets."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    nbytes: int
    row_group: int
    rows: tuple[int, ...]  # global row indices of the chunks, in chunk order
    file_offsets: tuple[int | None, ...]  # payload offset of each chunk; None where the row group is not mapped
    checksums: tuple[int, ...]

    @property
    def numel(self) -> int:
        """Number of elements."""
        n = 1
        for s in self.shape:
            n *= s
        return n


def resolve_weights_path(path: str | os.PathLike[str]) -> Path:
    """``path`` itself, or ``path/weights.parquet`` for a model directory; a clear error if neither exists."""
    p = Path(path)
    if p.is_dir():
        p = p / "weights.parquet"
    if not p.is_file():
        raise WeightFileNotFoundError(
            f"weight file {p} does not exist; convert a model first (arrowengine convert SRC models/NAME) "
            f"or check the path"
        )
    return p


def _check_magic(path: Path) -> None:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if head != _MAGIC:
        raise NotParquetError(
            f"{path} is not a Parquet file (it does not start with the PAR1 magic); "
            f"point at a weights.parquet written by arrowengine, or convert the model with 'arrowengine convert'"
        )
    if size < 12 or tail != _MAGIC:
        raise CorruptFileError(
            f"{path} is truncated: the Parquet footer is missing ({size} bytes on disk); "
            f"the copy is incomplete: copy the file again or re-run 'arrowengine convert'"
        )


class WeightFile(Mapping[str, torch.Tensor]):
    """A lazily mapped weight file: a read-only mapping of tensor name -> tensor.

    Use :meth:`open`. Tensors from a mapped row group share memory with the file mapping (their ``data_ptr``
    lies inside it); the mapping stays alive as long as any tensor does, even after the ``WeightFile`` is gone.
    """

    def __init__(self, path: Path, parquet: pq.ParquetFile, infos: dict[str, TensorInfo],
                 aliases: dict[str, str], layouts: list[RowGroupLayout | None], mapping: mmap.mmap,
                 metadata: dict[str, str], fallback_reasons: dict[int, str], row_nbytes: list[int],
                 row_groups: list[tuple[int, int]]) -> None:
        self.path = path
        self._row_nbytes = row_nbytes  # stored bytes of each global row (without its pad)
        self._row_groups = row_groups  # (row group, index inside it) of each global row
        self._parquet = parquet
        self._infos = infos
        self._aliases = aliases
        self._layouts = layouts
        self._mm = mapping
        self._fallback_reasons = fallback_reasons
        self._fallback_cache: dict[int, pa.Table] = {}
        self.metadata = metadata
        self.schema_version = int(metadata[META_SCHEMA_VERSION])

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> WeightFile:
        """Open ``path`` (a weight file or a model directory holding ``weights.parquet``)."""
        path = resolve_weights_path(path)
        _check_magic(path)
        try:
            parquet = pq.ParquetFile(str(path), memory_map=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"{path}: the Parquet footer cannot be read ({exc}); the file is damaged: "
                                   f"re-convert the model or restore it from its source") from None
        metadata = {k.decode(): v.decode() for k, v in (parquet.metadata.metadata or {}).items()
                    if k != b"ARROW:schema"}
        _check_schema(path, parquet, metadata)
        small = _index_from_footer(metadata, parquet.metadata.num_rows) or _read_small_columns(path, parquet)
        size = path.stat().st_size
        with open(path, "rb") as fh:
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        layouts: list[RowGroupLayout | None] = []
        reasons: dict[int, str] = {}
        row_base = 0
        for index in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(index).num_rows
            lengths = [int(small["data_offset"][r]) + int(small["nbytes"][r])
                       for r in range(row_base, row_base + group_rows)]
            layout = plan_row_group(path, parquet.metadata, index, mapping, lengths, size)
            if isinstance(layout, str):
                reasons[index] = layout
                layouts.append(None)
            else:
                layouts.append(layout)
            row_base += group_rows
        infos = _tensor_infos(path, parquet, small, layouts)
        aliases = json.loads(metadata.get(META_ALIASES, "{}"))
        for alias, target in aliases.items():
            if target not in infos:
                raise SchemaError(f"{path}: alias {alias!r} points at missing tensor {target!r}; re-convert")
        if reasons:
            detail = "; ".join(f"row group {i}: {r}" for i, r in sorted(reasons.items())[:3])
            message = (f"{path}: {len(reasons)} of {len(layouts)} row groups cannot be mapped zero-copy and are "
                       f"decoded by pyarrow on access (a copy) [{detail}]. Rewrite the file with "
                       f"arrowengine.write_weights to map it.")
            warnings.warn(message, ZeroCopyFallbackWarning, stacklevel=2)
            logger.warning(message)
        unaligned = _unaligned(infos)
        if unaligned:
            logger.warning("%s: %d tensors are not %d-byte aligned (first: %s)", path, len(unaligned), ALIGNMENT,
                           unaligned[0])
        row_groups = [(g, local) for g in range(len(layouts))
                      for local in range(parquet.metadata.row_group(g).num_rows)]
        wf = cls(path, parquet, infos, aliases, layouts, mapping, metadata, reasons,
                 [int(n) for n in small["nbytes"]], row_groups)
        logger.info("opened %s: schema V%d, %d tensors, %d row groups, zero_copy=%s", path,
                    wf.schema_version, len(infos), len(layouts), wf.zero_copy)
        return wf

    # -- metadata ---------------------------------------------------------------------------------------
    @property
    def zero_copy(self) -> bool:
        """True when every row group is mapped (no tensor of this file needs a copy, chunked ones aside)."""
        return not self._fallback_reasons

    @property
    def fallback_reasons(self) -> dict[int, str]:
        """Row group index -> why it could not be mapped."""
        return dict(self._fallback_reasons)

    @property
    def model_type(self) -> str:
        """The ``arrowengine.model_type`` metadata (``bert``, ``llama`` ...)."""
        return self.metadata.get(META_MODEL_TYPE, "unknown")

    @property
    def config(self) -> dict[str, Any]:
        """The model config stored in the file metadata (may be empty)."""
        return json.loads(self.metadata.get(META_CONFIG, "{}") or "{}")

    @property
    def aliases(self) -> dict[str, str]:
        """Tied tensors stored once: alias name -> stored name."""
        return dict(self._aliases)

    @property
    def parquet(self) -> pq.ParquetFile:
        """The underlying ``pyarrow.parquet.ParquetFile`` (footer already parsed)."""
        return self._parquet

    @property
    def num_rows(self) -> int:
        """Rows in the file (tensors plus extra chunks of large tensors)."""
        return self._parquet.metadata.num_rows

    @property
    def num_row_groups(self) -> int:
        """Number of row groups in the file."""
        return len(self._layouts)

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` is stored; ``KeyError`` naming the file if absent."""
        name = self._aliases.get(name, name)
        try:
            return self._infos[name]
        except KeyError:
            raise KeyError(f"{self.path} has no tensor {name!r}") from None

    def mapping_range(self) -> tuple[int, int]:
        """(start, end) virtual addresses of the file mapping, for proving tensors live inside it."""
        import ctypes

        start = ctypes.addressof(ctypes.c_char.from_buffer(self._mm))
        return start, start + len(self._mm)

    # -- Mapping protocol -------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        info = self.info(name)
        if info.numel == 0:
            return torch.empty(info.shape, dtype=info.dtype)
        if len(info.rows) == 1 and info.file_offsets[0] is not None:
            flat = torch.frombuffer(self._mm, dtype=info.dtype, count=info.numel, offset=info.file_offsets[0])
            return flat.view(info.shape)
        return self._assemble(info)

    def __iter__(self) -> Iterator[str]:
        yield from self._infos
        yield from self._aliases

    def __len__(self) -> int:
        return len(self._infos) + len(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._infos or name in self._aliases

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor by name (aliases share the tensor of their target)."""
        tensors = {name: self[name] for name in self._infos}
        tensors.update({alias: tensors[target] for alias, target in self._aliases.items()})
        return tensors

    def raw_bytes(self, name: str, chunk: int = 0) -> memoryview:
        """The stored bytes of one chunk of tensor ``name`` (without its pad): mapped, or decoded if not mapped."""
        return self._chunk_bytes(self.info(name), chunk)

    def _chunk_bytes(self, info: TensorInfo, chunk: int) -> memoryview:
        offset = info.file_offsets[chunk]
        row = info.rows[chunk]
        nbytes = self._row_nbytes[row]
        if offset is not None:
            return memoryview(self._mm)[offset : offset + nbytes]
        group, local = self._row_groups[row]
        table = self._fallback_cache.get(group)
        if table is None:
            table = self._parquet.read_row_group(group, columns=["data_offset", "data"])
            self._fallback_cache[group] = table
        pad = table.column("data_offset")[local].as_py()
        value = table.column("data")[local].as_buffer()
        return memoryview(value)[pad : pad + nbytes]

    def _assemble(self, info: TensorInfo) -> torch.Tensor:
        # Chunked tensors (> 512 MiB) and tensors of unmapped row groups cost one copy.
        out = torch.empty(info.numel, dtype=info.dtype)
        raw = out.view(torch.uint8) if info.numel else out
        cursor = 0
        for chunk in range(len(info.rows)):
            piece = np.frombuffer(self._chunk_bytes(info, chunk), dtype=np.uint8)
            raw[cursor : cursor + piece.size] = torch.from_numpy(piece.copy())
            cursor += piece.size
        return out.view(info.shape)

    def close(self) -> None:
        """Drop this object's references; the mapping closes when the last tensor using it is freed."""
        self._fallback_cache.clear()

    def __repr__(self) -> str:
        return (f"WeightFile({str(self.path)!r}, schema_version={self.schema_version}, tensors={len(self._infos)}, "
                f"zero_copy={self.zero_copy})")


def _check_schema(path: Path, parquet: pq.ParquetFile, metadata: dict[str, str]) -> None:
    version_text = metadata.get(META_SCHEMA_VERSION)
    if version_text is None:
        raise SchemaError(f"{path} is Parquet but not an arrowengine weight file (no {META_SCHEMA_VERSION} "
                          f"metadata); convert the model with 'arrowengine convert'")
    if not version_text.isdigit() or int(version_text) not in SUPPORTED_SCHEMA_VERSIONS:
        raise UnsupportedSchemaVersionError(
            f"{path} declares schema version {version_text!r}; this build reads versions "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. Upgrade arrowengine or re-convert the model."
        )
    names = set(parquet.schema_arrow.names)
    for column in (*SMALL_COLUMNS, "data"):
        if column not in names:
            raise MissingColumnError(f"{path} lacks the required column {column!r}; the file was not written "
                                     f"by arrowengine.write_weights: re-convert the model")


def _index_from_footer(metadata: dict[str, str], num_rows: int) -> dict[str, list] | None:
    """The small columns from the footer copy written by arrowengine (None if absent or inconsistent)."""
    text = metadata.get(META_INDEX)
    if not text:
        return None
    try:
        index = json.loads(text)
        if all(len(index[name]) == num_rows for name in SMALL_COLUMNS):
            return index
    except (ValueError, KeyError, TypeError):
        pass
    logger.warning("the footer index of this weight file is unreadable; reading the index columns instead")
    return None


def _read_small_columns(path: Path, parquet: pq.ParquetFile) -> dict[str, list]:
    try:
        table = parquet.read(columns=list(SMALL_COLUMNS), use_threads=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptFileError(f"{path}: the tensor index columns cannot be decoded ({exc}); the file is "
                               f"damaged: re-convert the model") from None
    return {name: table.column(name).to_pylist() for name in SMALL_COLUMNS}


def _tensor_infos(path: Path, parquet: pq.ParquetFile, small: dict[str, list],
                  layouts: list[RowGroupLayout | None]) -> dict[str, TensorInfo]:
    group_of_row: list[int] = []
    offset_of_row: list[int | None] = []
    for index, layout in enumerate(layouts):
        n = parquet.metadata.row_group(index).num_rows
        group_of_row.extend([index] * n)
        offset_of_row.extend(layout.value_offsets if layout is not None else [None] * n)
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
        numel = math.prod(shape)
        expected = numel * dtype.itemsize
        if nbytes != expected:
            raise TensorSizeError(
                f"{path}: tensor {name!r} (row group {group_of_row[first]}) stores {nbytes} bytes but shape "
                f"{list(shape)} x {dtype} needs {expected}; the file is damaged or was written by another tool: "
                f"re-convert the model"
            )
        offsets = []
        for r in rows:
            base = offset_of_row[r]
            offsets.append(None if base is None else base + int(small["data_offset"][r]))
        infos[name] = TensorInfo(name, dtype, shape, nbytes, group_of_row[first], tuple(rows), tuple(offsets),
                                 tuple(int(small["checksum"][r]) for r in rows))
    return infos


def _unaligned(infos: dict[str, TensorInfo]) -> list[str]:
    """Names of mapped tensors whose payload is not 64-byte aligned (a writer bug; mapping still works)."""
    return [i.name for i in infos.values() if any(o is not None and o % ALIGNMENT for o in i.file_offsets)]
