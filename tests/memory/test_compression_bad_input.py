"""Bad input at the SDK's edge: empty, non-str, non-UTF-8 content, unknown tiers and methods, bad config."""

from __future__ import annotations

import dataclasses
import re

import pytest

from memory.compression import (
    CompressionConfig,
    CompressionError,
    Compressor,
    EmptyContentError,
    InvalidContentError,
    Reconstructor,
    RecordFormatError,
)


def _raises(cls, message):
    return pytest.raises(cls, match=f"^{re.escape(message)}$")


def test_empty_string_is_refused():
    with _raises(EmptyContentError, "memory 0 is empty; there is nothing to compress"):
        Compressor().compress("")


def test_empty_list_is_refused():
    with _raises(EmptyContentError, "no memories to compress: got an empty list"):
        Compressor().compress([])


def test_an_empty_item_in_a_list_is_named():
    with _raises(EmptyContentError, "memory 1 is empty; there is nothing to compress"):
        Compressor().compress(["hello", ""])


@pytest.mark.parametrize(("content", "name"), [(42, "int"), (None, "NoneType"), ({"text": "x"}, "dict")])
def test_non_str_content_is_refused(content, name):
    message = (f"memory content is {name}, expected str or a list of str; decode bytes or serialise objects to "
               "text first")
    with _raises(InvalidContentError, message):
        Compressor().compress(content)


def test_bytes_are_refused_not_guessed():
    message = ("memory content is bytes, expected str or a list of str; decode bytes or serialise objects to text "
               "first")
    with _raises(InvalidContentError, message):
        Compressor().compress(b"hello")


def test_non_str_item_in_a_list_is_named():
    message = "memory 2 is int, expected str; decode bytes or serialise objects to text first"
    with _raises(InvalidContentError, message):
        Compressor().compress(["a", "b", 3])


def test_lone_surrogate_is_refused():
    message = "memory 0 holds a character that is not valid UTF-8 (index 2: a lone surrogate); it cannot be stored"
    with _raises(InvalidContentError, message):
        Compressor().compress("ab\ud800c")


def test_non_str_context_is_refused():
    message = "context message 0 is bytes, expected str; decode bytes or serialise objects to text first"
    with _raises(InvalidContentError, message):
        Compressor().compress("hello", context=[b"earlier"])


def test_invalid_content_is_also_a_type_error():
    with pytest.raises(TypeError):
        Compressor().compress(42)


def test_unknown_tier_is_refused():
    with _raises(InvalidContentError, "unknown tier 'lossy'; expected 'lossless' or 'semantic'"):
        Compressor().compress("hello", tier="lossy")


def test_unknown_method_in_a_record_is_refused():
    record = dataclasses.replace(Compressor().compress("hello"), method="brotli")
    message = "unknown compression method 'brotli' in record; expected one of ['zstd', 'zstd_dict', 'lm', 'semantic']"
    with _raises(RecordFormatError, message):
        Reconstructor().reconstruct(record)


def test_reconstruct_takes_records_not_bytes():
    message = ("reconstruct() takes a CompressedMemory or a list of them, got bytes; read Arrow records with "
               "CompressedMemory.from_arrow first")
    with _raises(InvalidContentError, message):
        Reconstructor().reconstruct(b"\x00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lossless_method": "gzip"}, "lossless_method='gzip' is not one of ['auto', 'lm', 'zstd_dict', 'zstd']"),
        ({"zstd_level": 40}, "zstd_level=40 is outside 1..22"),
        ({"lm_total_bits": 12}, "lm_total_bits=12 is outside 17..30"),
        ({"quality_threshold": 1.5}, "quality_threshold=1.5 is outside -1..1 (a cosine)"),
        ({"semantic_target_ratio": 0.5}, "semantic_target_ratio=0.5 must be above 1"),
    ],
)
def test_invalid_config_is_refused(kwargs, message):
    with _raises(CompressionError, message):
        CompressionConfig(**kwargs)


def test_plain_zstd_round_trip_without_any_model():
    texts = ["Hello", "naïve café 😀", "x" * 300]
    records = Compressor().compress(texts)
    assert [r.method for r in records] == ["zstd"] * 3
    assert Reconstructor().reconstruct(records) == texts
    assert records[2].ratio > 1.0 > records[0].ratio  # short messages do not pay for a record
