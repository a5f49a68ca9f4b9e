"""CompressedMemory as an Arrow record: round trips, the golden layout, and malformed records."""

from __future__ import annotations

import math
import re

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.compression import RECORD_SCHEMA, CompressedMemory, RecordFormatError


def _record(**overrides) -> CompressedMemory:
    values = dict(
        method="lm", coder_version=1, original_length=11, content_crc32=0x0D4A1185, payload=b"\x9d\x5c\xd0",
        model_checksum="af23f79188855507", context_checksum=0x01020304, token_path="bpe", ratio=0.125,
        cosine=1.0, entity_retention=1.0, latency_ms=2.5,
    )
    values.update(overrides)
    return CompressedMemory(**values)


def test_record_layout_is_golden():
    layout = [(f.name, str(f.type), f.nullable) for f in RECORD_SCHEMA]
    assert layout == [
        ("record_version", "uint8", False), ("method", "string", False), ("coder_version", "uint16", False),
        ("model_checksum", "string", False), ("context_checksum", "uint32", False),
        ("content_crc32", "uint32", False), ("original_length", "int64", False), ("token_path", "string", False),
        ("payload", "binary", False), ("summary", "string", False), ("entities", "list<item: string not null>", False),
        ("embedding", "binary", False), ("embedding_scale", "float", False), ("flagged", "bool", False),
        ("ratio", "float", False), ("cosine", "float", False), ("entity_retention", "float", False),
        ("latency_ms", "float", False),
    ]


def test_record_column_bytes_are_golden():
    # the Arrow columnar format fixes these buffers (offsets, little-endian values), whatever the library version
    batch = _record(entities=("Paris", "7pm")).to_arrow()

    def data(name: str) -> str:
        return b"".join(b.to_pybytes() for b in batch.column(name).buffers() if b is not None).hex()

    assert data("record_version") == "01"
    assert data("method") == "00000000020000006c6d"
    assert data("coder_version") == "0100"
    assert data("context_checksum") == "04030201"
    assert data("content_crc32") == "85114a0d"
    assert data("original_length") == "0b00000000000000"
    assert data("payload") == "00000000030000009d5cd0"
    assert data("entities") == "000000000200000000000000050000000800000050617269733770 6d".replace(" ", "")
    assert data("ratio") == "0000003e"
    assert batch.nbytes == _record(entities=("Paris", "7pm")).stored_bytes == 108


def test_stored_bytes_do_not_depend_on_metric_values():
    assert _record().stored_bytes == _record(ratio=9.5, cosine=0.3, latency_ms=1e6).stored_bytes


@settings(max_examples=60, deadline=None)
@given(
    payload=st.binary(max_size=64),
    summary=st.text(max_size=40),
    entities=st.lists(st.text(max_size=10), max_size=5),
    embedding=st.binary(max_size=32),
    flagged=st.booleans(),
)
def test_arrow_and_ipc_round_trips(payload, summary, entities, embedding, flagged):
    record = _record(payload=payload, summary=summary, entities=tuple(entities), embedding=embedding,
                     embedding_scale=0.5, flagged=flagged, method="semantic")
    assert CompressedMemory.from_arrow(record.to_arrow()) == record
    assert CompressedMemory.from_bytes(record.to_bytes()) == record


def test_unset_metrics_survive_as_nan():
    back = CompressedMemory.from_arrow(_record(cosine=math.nan).to_arrow())
    assert math.isnan(back.cosine)


def test_a_record_from_a_table_of_many_rows():
    rows = [_record(original_length=n) for n in (3, 5, 8)]
    table = pa.Table.from_batches([r.to_arrow() for r in rows])
    assert CompressedMemory.from_arrow(table, row=2) == rows[2]


def test_missing_field_is_refused():
    batch = _record().to_arrow().drop_columns(["payload", "flagged"])
    message = ("Arrow record lacks field(s) ['payload', 'flagged']; it is not a compressed-memory record "
               "(expected the schema memory.compression.RECORD_SCHEMA)")
    with pytest.raises(RecordFormatError, match=f"^{re.escape(message)}$"):
        CompressedMemory.from_arrow(batch)


def test_wrong_field_type_is_refused():
    batch = _record().to_arrow()
    batch = batch.set_column(batch.schema.get_field_index("original_length"), "original_length",
                             pa.array(["11"]))
    message = "field 'original_length' of the Arrow record has type string, expected int64"
    with pytest.raises(RecordFormatError, match=f"^{re.escape(message)}$"):
        CompressedMemory.from_arrow(batch)


def test_unknown_layout_version_is_refused():
    message = ("compressed-memory record has layout version 7, this build reads version 1; upgrade arrowengine "
               "to read it")
    with pytest.raises(RecordFormatError, match=f"^{re.escape(message)}$"):
        CompressedMemory.from_arrow(_record(record_version=7).to_arrow())


def test_row_out_of_range_is_refused():
    with pytest.raises(RecordFormatError, match=r"^row 1 is out of range for an Arrow record of 1 rows$"):
        CompressedMemory.from_arrow(_record().to_arrow(), row=1)


def test_bytes_that_are_not_a_record_are_refused():
    with pytest.raises(RecordFormatError, match=r"^12 bytes are not an Arrow IPC stream of a compressed memory: "):
        CompressedMemory.from_bytes(b"not a record")
