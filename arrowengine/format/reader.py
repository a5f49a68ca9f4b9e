"""Open a Parquet weight file and hand out tensors that live inside the file mapping (zero-copy).

At open only the footer (with its copy of the tensor index) and one page header per blob column and row group
are read; tensor pages fault in when a tensor is first touched. The file is mapped copy-on-write, so in-place
edits of a tensor never reach the file. Row groups that cannot be mapped (compressed, dictionary-encoded,
several pages: any Parquet writer other than ours) are decoded by pyarrow on first access, with one warning.
Schema V1 holds plain tensors; V2 adds quantized ones, handed out as ``quant.QuantizedTensor`` whose packed
codes, scales and zero points are all views of the mapping.
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from arrowengine.errors import (
    CorruptFileError,
    EngineError,
    NotParquetError,
    SchemaError,
    TensorNotFoundError,
    WeightFileNotFoundError,
)
from arrowengine.format.index import (
    TensorInfo,
    build_infos,
    check_schema,
    index_from_footer,
    read_small_columns,
)
from arrowengine.format.layout import plan_row_group
from arrowengine.format.schema import (
    ALIGNMENT,
    BLOB_COLUMNS,
    GGUF_QUANT_TYPES,
    META_CONFIG,
    META_MODEL_TYPE,
    META_QUANT_RECIPE,
    PAD_COLUMN,
)
from arrowengine.format.thrift import RowGroupInfo, ThriftDecodeError, parse_row_groups
from arrowengine.format.writer import META_ALIASES

__all__ = ["TensorInfo", "WeightFile", "ZeroCopyFallbackWarning", "resolve_weights_path"]

logger = logging.getLogger(__name__)

_MAGIC = b"PAR1"
# What the parsers underneath (pyarrow's Thrift footer, JSON, int conversions, slicing) raise on damaged bytes;
# at the edge of this module each becomes a CorruptFileError naming the file, so callers see one error family.
_MALFORMED: tuple[type[BaseException], ...] = (ValueError, TypeError, KeyError, IndexError, OverflowError,
                                               MemoryError, struct.error, pa.ArrowException)
_NBYTES_COLUMN = {"data": "nbytes", "scales": "scales_nbytes", "zero_points": "zero_points_nbytes"}


class ZeroCopyFallbackWarning(UserWarning):
    """Some row groups of a weight file cannot be mapped and are decoded (copied) by pyarrow instead."""


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


def _row_groups(path: Path, parquet: pq.ParquetFile, mapping: mmap.mmap) -> tuple[RowGroupInfo, ...]:
    """The row groups decoded from the footer by our own Thrift reader (see :mod:`arrowengine.format.thrift`)."""
    size = len(mapping)
    footer_length = struct.unpack_from("<I", mapping, size - 8)[0]
    if footer_length > size - 12:
        raise CorruptFileError(f"{path}: the footer length {footer_length} exceeds the file ({size} bytes); the "
                               f"file is damaged: restore it or re-convert the model")
    window = memoryview(mapping)[size - 8 - footer_length : size - 8]
    try:
        groups = parse_row_groups(window)
    except ThriftDecodeError as exc:
        raise CorruptFileError(f"{path}: the Parquet footer does not parse ({exc}); the file is damaged: restore it "
                               f"or re-convert the model") from None
    finally:
        window.release()
    leaves = len(parquet.metadata.schema)
    if len(groups) != parquet.metadata.num_row_groups or any(len(g.columns) != leaves for g in groups):
        raise CorruptFileError(f"{path}: the footer's row groups disagree with its schema ({len(groups)} row groups, "
                               f"{leaves} columns each expected); the file is damaged: restore it or re-convert the "
                               f"model")
    return groups


def _plan_offsets(path: Path, parquet: pq.ParquetFile, mapping: mmap.mmap, small: dict[str, list], version: int
                  ) -> tuple[dict[str, list[int | None]], list[int], dict[int, str]]:
    """Payload offset of every blob of every row (None when unmapped), row -> row group, fallback reasons."""
    size = len(mapping)
    offsets: dict[str, list[int | None]] = {column: [] for column in BLOB_COLUMNS[version]}
    group_of_row: list[int] = []
    reasons: dict[int, str] = {}
    base = 0
    for group, info in enumerate(_row_groups(path, parquet, mapping)):
        count = info.num_rows
        if count < 0 or base + count > len(small["name"]):
            raise CorruptFileError(f"{path}: row group {group} claims {count} rows, but the file holds "
                                   f"{len(small['name'])} in all; the file is damaged: re-convert the model")
        rows = range(base, base + count)
        group_of_row.extend([group] * count)
        for column in BLOB_COLUMNS[version]:
            pads = [int(small[PAD_COLUMN[column]][r]) for r in rows]
            lengths = [pad + int(small[_NBYTES_COLUMN[column]][r]) for pad, r in zip(pads, rows, strict=True)]
            layout = plan_row_group(path, parquet.metadata, group, info, mapping, lengths, size, column)
            if isinstance(layout, str):
                reasons.setdefault(group, f"column {column!r} {layout}" if column != "data" else layout)
                offsets[column].extend([None] * count)
            else:
                offsets[column].extend(start + pad for start, pad in zip(layout.value_offsets, pads, strict=True))
        base += count
    if reasons:  # a row group is mapped only if all its blob columns are
        for column, values in offsets.items():
            offsets[column] = [None if g in reasons else v for v, g in zip(values, group_of_row, strict=True)]
    return offsets, group_of_row, reasons


def _damaged(path: Path, what: str, exc: BaseException) -> CorruptFileError:
    """The error for bytes that a parser underneath rejected (kept as ``__cause__`` for debugging)."""
    return CorruptFileError(f"{path}: {what} is damaged ({type(exc).__name__}: {exc}); restore the file or "
                            f"re-convert the model (arrowengine verify {path} checks every tensor)")


def _decode_metadata(path: Path, raw: dict[bytes, bytes] | None) -> dict[str, str]:
    """The footer's key-value metadata as text (pyarrow's own ``ARROW:schema`` entry left out)."""
    metadata = {}
    for key, value in (raw or {}).items():
        if key == b"ARROW:schema":
            continue
        try:
            metadata[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptFileError(f"{path}: the footer metadata entry {key[:40]!r} is not UTF-8 text ({exc}); the "
                                   f"file is damaged: restore it or re-convert the model") from None
    return metadata


def _json_metadata(path: Path, metadata: Mapping[str, str], key: str) -> dict[str, Any]:
    """The JSON object stored under ``key`` in the footer metadata (``{}`` when absent)."""
    text = metadata.get(key) or "{}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CorruptFileError(f"{path}: the footer metadata {key} is not valid JSON ({exc}); the file is "
                               f"damaged: restore it or re-convert the model") from None
    if not isinstance(value, dict):
        raise CorruptFileError(f"{path}: the footer metadata {key} holds a {type(value).__name__}, not a JSON "
                               f"object; the file is damaged: restore it or re-convert the model")
    return value


class WeightFile(Mapping[str, torch.Tensor]):
    """A lazily mapped weight file: a read-only mapping of tensor name -> stored tensor.

    Use :meth:`open`. Tensors from a mapped row group share memory with the file mapping (their ``data_ptr``
    lies inside it); the mapping stays alive as long as any tensor does, even after the ``WeightFile`` is gone.
    For a quantized (V2) tensor, ``weights[name]`` is its packed uint8 codes and :meth:`quantized` gives the
    whole ``quant.QuantizedTensor``.
    """

    def __init__(self, path: Path, parquet: pq.ParquetFile, version: int, metadata: dict[str, str],
                 infos: dict[str, TensorInfo], aliases: dict[str, str], mapping: mmap.mmap,
                 small: dict[str, list], group_of_row: list[int], reasons: dict[int, str]) -> None:
        self.path = path
        self.schema_version = version
        self.metadata = metadata
        self._parquet = parquet
        self._infos = infos
        self._aliases = aliases
        self._mm = mapping
        self._small = small
        self._group_of_row = group_of_row
        self._first_row = {g: group_of_row.index(g) for g in set(group_of_row)}
        self._fallback_reasons = reasons
        self._fallback_cache: dict[int, pa.Table] = {}

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = False) -> WeightFile:
        """Open ``path`` (a weight file or a model directory holding ``weights.parquet``).

        With ``verify=True`` every tensor is hashed against its stored checksum first (this reads every page,
        so opening is no longer lazy) and a mismatch raises :class:`ChecksumMismatchError` naming the tensor.
        Any damage found while parsing raises an :class:`EngineError` subclass, never a bare parser error.
        """
        path = resolve_weights_path(path)
        _check_magic(path)
        try:
            weights = cls._parse(path)
        except EngineError:
            raise
        except _MALFORMED as exc:
            raise _damaged(path, "the footer or the tensor index", exc) from exc
        if weights._fallback_reasons:
            reasons = weights._fallback_reasons
            detail = "; ".join(f"row group {i}: {r}" for i, r in sorted(reasons.items())[:3])
            message = (f"{path}: {len(reasons)} of {weights.num_row_groups} row groups cannot be mapped "
                       f"zero-copy and are decoded by pyarrow on access (a copy) [{detail}]. Rewrite the file with "
                       f"arrowengine.write_weights to map it.")
            warnings.warn(message, ZeroCopyFallbackWarning, stacklevel=2)
            logger.warning(message)
        if verify:
            from arrowengine.format.integrity import check_checksums  # integrity imports this module

            check_checksums(weights, strict=True)
        logger.info("opened %s: schema V%d, %d tensors (%d quantized), %d row groups, zero_copy=%s, verified=%s",
                    path, weights.schema_version, len(weights._infos),
                    sum(i.is_quantized for i in weights._infos.values()), weights.num_row_groups, weights.zero_copy,
                    verify)
        return weights

    @classmethod
    def _parse(cls, path: Path) -> WeightFile:
        try:
            parquet = pq.ParquetFile(str(path), memory_map=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptFileError(f"{path}: the Parquet footer cannot be read ({exc}); the file is damaged: "
                                   f"re-convert the model or restore it from its source") from None
        metadata = _decode_metadata(path, parquet.metadata.metadata)
        version = check_schema(path, parquet, metadata)
        num_rows = parquet.metadata.num_rows
        small = index_from_footer(metadata, num_rows, version) or read_small_columns(path, parquet, version)
        with open(path, "rb") as fh:
            mapping = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writes never reach the file
        offsets, group_of_row, reasons = _plan_offsets(path, parquet, mapping, small, version)
        infos = build_infos(path, small, version, group_of_row, offsets)
        aliases = _json_metadata(path, metadata, META_ALIASES)
        for alias, target in aliases.items():
            if not isinstance(target, str) or target not in infos:
                raise SchemaError(f"{path}: alias {alias!r} points at missing tensor {target!r}; re-convert")
        unaligned = [i.name for i in infos.values() if any(o is not None and o % ALIGNMENT for o in i.file_offsets)]
        if unaligned:
            logger.warning("%s: %d tensors are not %d-byte aligned (first: %s)", path, len(unaligned), ALIGNMENT,
                           unaligned[0])
        # the footer's own metadata is parsed once here, so damage there fails at open and not at first use
        _json_metadata(path, metadata, META_CONFIG)
        if version >= 2:
            _json_metadata(path, metadata, META_QUANT_RECIPE)
        return cls(path, parquet, version, metadata, infos, aliases, mapping, small, group_of_row, reasons)

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
        return _json_metadata(self.path, self.metadata, META_CONFIG)

    @property
    def quant_recipe(self) -> dict[str, Any]:
        """The quantization recipe of a V2 file (``{}`` for V1)."""
        return _json_metadata(self.path, self.metadata, META_QUANT_RECIPE)

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
        return self._parquet.metadata.num_row_groups

    def info(self, name: str) -> TensorInfo:
        """Where tensor ``name`` is stored; :class:`TensorNotFoundError` (a ``KeyError``) naming the file if absent."""
        name = self._aliases.get(name, name)
        try:
            return self._infos[name]
        except KeyError:
            raise TensorNotFoundError(f"{self.path} has no tensor {name!r}; list the names with "
                                      f"WeightFile.open(path).keys()") from None

    def is_quantized(self, name: str) -> bool:
        """True when ``name`` is stored quantized (V2, ``quant_type != none``)."""
        return self.info(name).is_quantized

    def mapping_range(self) -> tuple[int, int]:
        """(start, end) virtual addresses of the file mapping, for proving tensors live inside it."""
        import ctypes

        start = ctypes.addressof(ctypes.c_char.from_buffer(self._mm))
        return start, start + len(self._mm)

    # -- tensors ----------------------------------------------------------------------------------------
    def _view(self, offset: int | None, nbytes: int, dtype: torch.dtype, shape: tuple[int, ...], info: TensorInfo,
              column: str) -> torch.Tensor:
        count = nbytes // dtype.itemsize
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        if offset is not None:
            return torch.frombuffer(self._mm, dtype=dtype, count=count, offset=offset).view(shape)
        raw = np.frombuffer(self._blob_bytes(info, 0, column), dtype=np.uint8).copy()
        return torch.from_numpy(raw).view(dtype).view(shape)

    def __getitem__(self, name: str) -> torch.Tensor:
        info = self.info(name)
        if info.is_quantized:
            assert info.quant is not None  # invariant: build_infos sets quant for every quantized row
            return self._view(info.file_offsets[0], info.nbytes, torch.uint8, info.quant.packed_shape, info, "data")
        if len(info.rows) == 1:
            return self._view(info.file_offsets[0], info.nbytes, info.dtype, info.shape, info, "data")
        return self._assemble(info)

    def quantized(self, name: str) -> Any:
        """The ``quant.QuantizedTensor`` of a V2 tensor: packed codes, scales and zero points all mapped.

        A V3 GGUF block row gives a ``quant.gguf.GGUFBlocks`` over the mapped blocks instead.
        """
        from quant import QuantizedTensor

        info = self.info(name)
        if not info.is_quantized:
            raise SchemaError(f"{self.path}: tensor {name!r} is not quantized (schema V{self.schema_version})")
        q = info.quant
        assert q is not None and info.blob_offsets is not None  # invariant: build_infos sets both for V2 rows
        if q.quant_type in GGUF_QUANT_TYPES:
            return _gguf_blocks(q.quant_type, info.shape, self[name])
        scales = self._view(info.blob_offsets["scales"], q.scales_nbytes, q.scales_dtype,
                            (q.scales_nbytes // q.scales_dtype.itemsize,), info, "scales")
        zeros = self._view(info.blob_offsets["zero_points"], q.zero_points_nbytes, torch.uint8,
                           (q.zero_points_nbytes,), info, "zero_points")
        return QuantizedTensor(self[name], scales, zeros, q.bits, q.group_size, info.shape, axis=q.axis,
                               symmetric=q.symmetric, name=name)

    def __iter__(self) -> Iterator[str]:
        yield from self._infos
        yield from self._aliases

    def __len__(self) -> int:
        return len(self._infos) + len(self._aliases)

    def __contains__(self, name: object) -> bool:
        return name in self._infos or name in self._aliases

    def state_dict(self) -> dict[str, Any]:
        """Every tensor by name: plain tensors, and ``QuantizedTensor`` for quantized ones (aliases shared)."""
        tensors: dict[str, Any] = {name: self.quantized(name) if info.is_quantized else self[name]
                                   for name, info in self._infos.items()}
        tensors.update({alias: tensors[target] for alias, target in self._aliases.items()})
        return tensors

    def raw_bytes(self, name: str, chunk: int = 0, column: str = "data") -> memoryview:
        """The stored bytes of one blob of tensor ``name`` (without its pad): mapped, or decoded if not mapped."""
        return self._blob_bytes(self.info(name), chunk, column)

    def _blob_bytes(self, info: TensorInfo, chunk: int, column: str) -> memoryview:
        row = info.rows[chunk]
        nbytes = int(self._small[_NBYTES_COLUMN[column]][row])
        offset = info.file_offsets[chunk] if column == "data" else (info.blob_offsets or {}).get(column)
        if offset is not None:
            return memoryview(self._mm)[offset : offset + nbytes]
        group = self._group_of_row[row]
        try:
            table = self._fallback_cache.get(group)
            if table is None:
                columns = [c for b in BLOB_COLUMNS[self.schema_version] for c in (PAD_COLUMN[b], b)]
                table = self._parquet.read_row_group(group, columns=columns)
                self._fallback_cache[group] = table
            local = row - self._first_row[group]
            pad = table.column(PAD_COLUMN[column])[local].as_py()
            value = memoryview(table.column(column)[local].as_buffer())[pad : pad + nbytes]
        except (*_MALFORMED, OSError) as exc:
            raise _damaged(self.path, f"row group {group} (tensor {info.name!r})", exc) from exc
        if pad < 0 or len(value) != nbytes:
            raise CorruptFileError(f"{self.path}: tensor {info.name!r} (row group {group}) holds {len(value)} of its "
                                   f"{nbytes} bytes after a pad of {pad}; the file is damaged: restore it or "
                                   f"re-convert the model")
        return value

    def _assemble(self, info: TensorInfo) -> torch.Tensor:
        # Chunked tensors (> 512 MiB) cost one copy.
        out = torch.empty(info.numel, dtype=info.dtype)
        raw = out.view(torch.uint8) if info.numel else out
        cursor = 0
        for chunk in range(len(info.rows)):
            piece = np.frombuffer(self._blob_bytes(info, chunk, "data"), dtype=np.uint8)
            raw[cursor : cursor + piece.size] = torch.from_numpy(piece.copy())
            cursor += piece.size
        return out.view(info.shape)

    def close(self) -> None:
        """Drop this object's references; the mapping closes when the last tensor using it is freed."""
        self._fallback_cache.clear()

    def __repr__(self) -> str:
        return (f"WeightFile({str(self.path)!r}, schema_version={self.schema_version}, tensors={len(self._infos)}, "
                f"zero_copy={self.zero_copy})")


def _gguf_blocks(quant_type: str, shape: tuple[int, ...], data: torch.Tensor) -> Any:
    """The ``GGUFBlocks`` of a V3 row (its blocks stay in the mapping)."""
    from quant.gguf import GGUFBlocks

    return GGUFBlocks(quant_type, (int(shape[0]), int(shape[1])), data)
