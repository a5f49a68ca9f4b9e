"""Just enough of Thrift's compact protocol to read a Parquet ``PageHeader`` and the footer's row groups.

The zero-copy reader parses the one page header of each ``data`` column chunk to prove the chunk is a single
uncompressed PLAIN data page, and to learn where its payload starts. pyarrow does not expose page headers, and
a full Thrift dependency for a few dozen lines of decoding is not worth it.

The row groups' column-chunk locations are decoded here too rather than through pyarrow's ``row_group(i)``
accessor: on some damaged footers (a level histogram of the wrong size) that accessor throws a C++ exception
that pyarrow does not translate, and the process aborts. Decoding them ourselves turns that into an error.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ColumnChunkInfo", "PageHeader", "RowGroupInfo", "ThriftDecodeError", "parse_page_header",
           "parse_row_groups"]

# Compact-protocol type ids.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)
_MAX_DEPTH = 16  # Parquet page headers nest three deep; anything deeper is garbage

# parquet.thrift PageType
PAGE_TYPE_NAMES = {0: "DATA_PAGE", 1: "INDEX_PAGE", 2: "DICTIONARY_PAGE", 3: "DATA_PAGE_V2"}
# parquet.thrift Encoding
ENCODING_NAMES = {0: "PLAIN", 2: "PLAIN_DICTIONARY", 3: "RLE", 4: "BIT_PACKED", 5: "DELTA_BINARY_PACKED",
                  6: "DELTA_LENGTH_BYTE_ARRAY", 7: "DELTA_BYTE_ARRAY", 8: "RLE_DICTIONARY", 9: "BYTE_STREAM_SPLIT"}


class ThriftDecodeError(ValueError):
    """The bytes are not a valid compact-protocol struct (the caller turns this into a CorruptFileError)."""


@dataclass(frozen=True)
class PageHeader:
    """The fields of a Parquet page header the reader needs, plus the header's own length in bytes."""

    page_type: int
    uncompressed_page_size: int
    compressed_page_size: int
    num_values: int | None
    encoding: int | None
    header_length: int

    @property
    def page_type_name(self) -> str:
        """``DATA_PAGE``, ``DICTIONARY_PAGE`` ... (``UNKNOWN(n)`` for anything else)."""
        return PAGE_TYPE_NAMES.get(self.page_type, f"UNKNOWN({self.page_type})")

    @property
    def encoding_name(self) -> str:
        """The data page's value encoding, ``PLAIN`` for what arrowengine writes."""
        if self.encoding is None:
            return "NONE"
        return ENCODING_NAMES.get(self.encoding, f"UNKNOWN({self.encoding})")


# parquet.thrift CompressionCodec
CODEC_NAMES = {0: "UNCOMPRESSED", 1: "SNAPPY", 2: "GZIP", 3: "LZO", 4: "BROTLI", 5: "LZ4", 6: "ZSTD", 7: "LZ4_RAW"}


@dataclass(frozen=True)
class ColumnChunkInfo:
    """Where one column chunk lies (``ColumnMetaData`` fields the zero-copy reader needs)."""

    codec: int
    total_compressed_size: int
    data_page_offset: int
    dictionary_page_offset: int | None

    @property
    def codec_name(self) -> str:
        """``UNCOMPRESSED``, ``ZSTD`` ... (``UNKNOWN(n)`` for anything else)."""
        return CODEC_NAMES.get(self.codec, f"UNKNOWN({self.codec})")


@dataclass(frozen=True)
class RowGroupInfo:
    """A row group's row count and column chunks, in schema leaf order."""

    num_rows: int
    columns: tuple[ColumnChunkInfo, ...]


class _Decoder:
    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.buf):
            raise ThriftDecodeError("page header runs past the end of the file")
        value = self.buf[self.pos]
        self.pos += 1
        return value

    def varint(self) -> int:
        buf, pos, end = self.buf, self.pos, len(self.buf)  # locals: this loop is the decoder's hot spot
        result = shift = 0
        while True:
            if pos >= end:
                raise ThriftDecodeError("page header runs past the end of the file")
            b = buf[pos]
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                self.pos = pos
                return result
            shift += 7
            if shift > 63:
                raise ThriftDecodeError("varint longer than 10 bytes")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip_bytes(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise ThriftDecodeError("length field points past the end of the file")
        self.pos += n

    def value(self, ftype: int, depth: int) -> object:
        if ftype in (_TRUE, _FALSE):
            return ftype == _TRUE
        if ftype == _BYTE:
            return self.byte()
        if ftype in (_I16, _I32, _I64):
            return self.zigzag()
        if ftype == _DOUBLE:
            self.skip_bytes(8)
            return None
        if ftype == _BINARY:
            self.skip_bytes(self.varint())
            return None
        if ftype in (_LIST, _SET):
            head = self.byte()
            size = head >> 4 if head >> 4 != 15 else self.varint()
            elem = head & 0x0F
            # every element takes at least one byte, so a damaged size runs into the end of the buffer, not memory
            return [self.value(elem if elem not in (_TRUE, _FALSE) else _BYTE, depth + 1) for _ in range(size)]
        if ftype == _MAP:
            size = self.varint()
            if size:
                kv = self.byte()
                for _ in range(size):
                    self.value(kv >> 4, depth + 1)
                    self.value(kv & 0x0F, depth + 1)
            return None
        if ftype == _STRUCT:
            return self.struct(depth + 1)
        raise ThriftDecodeError(f"unknown compact type id {ftype}")

    def struct(self, depth: int = 0) -> dict[int, object]:
        if depth > _MAX_DEPTH:
            raise ThriftDecodeError("structs nested too deep")
        fields: dict[int, object] = {}
        last_id = 0
        while True:
            head = self.byte()
            ftype = head & 0x0F
            if ftype == _STOP:
                return fields
            delta = head >> 4
            field_id = last_id + delta if delta else self.zigzag()
            fields[field_id] = self.value(ftype, depth)
            last_id = field_id


def parse_page_header(buf: memoryview) -> PageHeader:
    """Decode the Parquet ``PageHeader`` at the start of ``buf``.

    Raises:
        ThriftDecodeError: the bytes are not a page header (truncated, unknown types, missing fields).
    """
    decoder = _Decoder(buf)
    fields = decoder.struct()
    try:
        page_type = int(fields[1])  # type: ignore[arg-type]
        uncompressed = int(fields[2])  # type: ignore[arg-type]
        compressed = int(fields[3])  # type: ignore[arg-type]
    except KeyError as exc:
        raise ThriftDecodeError(f"page header lacks required field {exc.args[0]}") from None
    data_header = fields.get(5)
    num_values = encoding = None
    if isinstance(data_header, dict):
        num_values = data_header.get(1)
        encoding = data_header.get(2)
    return PageHeader(page_type, uncompressed, compressed, num_values, encoding, decoder.pos)  # type: ignore[arg-type]


def _int_field(fields: dict[int, object], field_id: int, what: str) -> int:
    value = fields.get(field_id)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ThriftDecodeError(f"{what} lacks required integer field {field_id}")
    return value


def parse_row_groups(footer: memoryview) -> tuple[RowGroupInfo, ...]:
    """The row groups of a Parquet ``FileMetaData`` (the footer bytes between the data and the footer length).

    Raises:
        ThriftDecodeError: the bytes are not a footer (truncated, unknown types, missing or mistyped fields).
    """
    fields = _Decoder(memoryview(bytes(footer))).struct()  # one copy of the footer: bytes index faster than a mapping
    row_groups = fields.get(4)
    if not isinstance(row_groups, list):
        raise ThriftDecodeError("file metadata lacks its row group list (field 4)")
    result = []
    for index, group in enumerate(row_groups):
        if not isinstance(group, dict) or not isinstance(group.get(1), list):
            raise ThriftDecodeError(f"row group {index} lacks its column chunk list")
        columns = []
        for chunk in group[1]:
            meta = chunk.get(3) if isinstance(chunk, dict) else None
            if not isinstance(meta, dict):
                raise ThriftDecodeError(f"a column chunk of row group {index} lacks its metadata")
            dictionary = meta.get(11)
            columns.append(ColumnChunkInfo(
                codec=_int_field(meta, 4, "column metadata"),
                total_compressed_size=_int_field(meta, 7, "column metadata"),
                data_page_offset=_int_field(meta, 9, "column metadata"),
                dictionary_page_offset=dictionary if isinstance(dictionary, int) else None,
            ))
        result.append(RowGroupInfo(_int_field(group, 3, f"row group {index}"), tuple(columns)))
    return tuple(result)
