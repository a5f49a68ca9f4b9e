"""Validate one row group's ``data`` column chunk and locate its tensor payloads inside the file.

A row group maps zero-copy when its ``data`` chunk is a single uncompressed PLAIN data page (v1) with no
dictionary and no definition levels. Then the page payload is ``[u32 length][bytes]`` per row right after the
page header, and each tensor's offset follows from the small columns alone, without touching tensor pages.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from arrowengine.errors import CorruptFileError
from arrowengine.format.thrift import RowGroupInfo, ThriftDecodeError, parse_page_header

__all__ = ["RowGroupLayout", "plan_row_group"]

_DATA_PAGE = 0
_UNCOMPRESSED = 0
_PLAIN = 0
_MAX_HEADER_BYTES = 1 << 20  # page headers are a few dozen bytes; statistics could make them larger


@dataclass(frozen=True)
class RowGroupLayout:
    """Where the values of one row group's ``data`` column lie in the file."""

    payload_offset: int  # file offset of the first value's 4-byte length prefix
    value_offsets: tuple[int, ...]  # file offset of each value's first byte (its leading pad included)


def plan_row_group(path: Path, meta: pq.FileMetaData, index: int, group: RowGroupInfo, mapping: mmap.mmap,
                   lengths: list[int], file_size: int, column_name: str = "data") -> RowGroupLayout | str:
    """The layout of one blob column in row group ``index``, or why it cannot be mapped (then: pyarrow decodes).

    ``group`` is the row group as decoded from the footer by :func:`parse_row_groups`; ``lengths`` are the
    expected value lengths (pad + bytes of each row). Damage that a fallback could not survive either (a header
    that does not parse, sizes that disagree) raises ``CorruptFileError``.
    """
    column_index = meta.schema.names.index(column_name)
    column = group.columns[column_index]
    where = f"{path}: row group {index}, column {column_name!r}"
    if column.codec != _UNCOMPRESSED:
        return f"compressed with {column.codec_name}"
    if column.dictionary_page_offset:
        return "dictionary-encoded"
    if meta.schema.column(column_index).max_definition_level != 0:
        return "nullable column (definition levels in the page)"
    start = column.data_page_offset
    if start < 4 or start + column.total_compressed_size > file_size:
        raise CorruptFileError(f"{where}: the column chunk [{start}, {start + column.total_compressed_size}) "
                               f"lies outside the file ({file_size} bytes); the file is damaged: re-convert it")
    window = memoryview(mapping)[start : min(start + _MAX_HEADER_BYTES, file_size)]
    try:
        header = parse_page_header(window)
    except ThriftDecodeError as exc:
        raise CorruptFileError(f"{where}: the page header at offset {start} does not parse ({exc}); the file is "
                               f"damaged: re-convert the model or restore it from its source") from None
    finally:
        window.release()
    if header.page_type != _DATA_PAGE:
        return f"first page is {header.page_type_name}, not DATA_PAGE (v1)"
    if header.encoding != _PLAIN:
        return f"values encoded as {header.encoding_name}, not PLAIN"
    if header.header_length + header.compressed_page_size != column.total_compressed_size:
        return "the column chunk holds more than one page"
    if header.num_values != group.num_rows or header.compressed_page_size != header.uncompressed_page_size:
        raise CorruptFileError(
            f"{where}: the page header at offset {start} says {header.num_values} values / "
            f"{header.compressed_page_size} bytes, but the row group has {group.num_rows} rows; the file is "
            f"damaged: re-convert the model"
        )
    expected = sum(4 + n for n in lengths)
    if expected != header.compressed_page_size:
        raise CorruptFileError(
            f"{where}: the page holds {header.compressed_page_size} bytes but the rows' pads and sizes add up "
            f"to {expected}; the file is damaged: re-convert the model"
        )
    payload = start + header.header_length
    offsets = []
    cursor = payload
    for n in lengths:
        offsets.append(cursor + 4)
        cursor += 4 + n
    return RowGroupLayout(payload, tuple(offsets))
