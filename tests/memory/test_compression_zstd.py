"""zstd tiers on real chat messages: plain and with a dictionary trained on the store's own text."""

from __future__ import annotations

import dataclasses
import re

import pytest

from memory.compression import (
    CompressionConfig,
    CompressionError,
    Compressor,
    CorruptPayloadError,
    MissingCoderError,
    ModelMismatchError,
    Reconstructor,
    ZstdDictionary,
)


@pytest.fixture(scope="module")
def messages(conversations) -> list[str]:
    return [turn["text"] for conv in conversations[:400] for turn in conv if turn["text"]]


@pytest.fixture(scope="module")
def dictionary(messages) -> ZstdDictionary:
    return ZstdDictionary.train(messages[200:], size=8192)


def test_plain_zstd_round_trip_on_real_messages(messages):
    sample = messages[:200]
    records = Compressor(CompressionConfig(lossless_method="zstd")).compress(sample)
    assert {r.method for r in records} == {"zstd"}
    assert Reconstructor().reconstruct(records) == sample


def test_dictionary_beats_plain_zstd_per_message(messages, dictionary):
    sample = messages[:200]  # the dictionary never saw these
    compressor = Compressor(dictionary=dictionary)
    assert compressor.lossless_method() == "zstd_dict"
    with_dict = compressor.compress(sample)
    plain = Compressor(CompressionConfig(lossless_method="zstd")).compress(sample)
    assert Reconstructor(dictionary=dictionary).reconstruct(with_dict) == sample
    assert sum(len(r.payload) for r in with_dict) < 0.85 * sum(len(r.payload) for r in plain)
    assert all(r.model_checksum == dictionary.checksum for r in with_dict)


def test_train_dictionary_keeps_it_on_the_compressor(messages):
    compressor = Compressor(CompressionConfig(dictionary_size=4096))
    trained = compressor.train_dictionary(messages[200:])
    assert compressor.dictionary is trained and len(trained.data) <= 4096
    restored = ZstdDictionary(trained.data)  # the bytes are the state to save
    assert restored.checksum == trained.checksum


def test_another_dictionary_refuses_to_decode(messages, dictionary):
    record = Compressor(dictionary=dictionary).compress(messages[0])
    other = ZstdDictionary.train(messages[1000:3000], size=4096)
    message = (f"record was compressed with dictionary {dictionary.checksum}, but this reconstructor's "
               f"dictionary is {other.checksum}; load the dictionary the compressor trained")
    with pytest.raises(ModelMismatchError, match=f"^{re.escape(message)}$"):
        Reconstructor(dictionary=other).reconstruct(record)


def test_missing_dictionary_says_what_to_pass(messages, dictionary):
    record = Compressor(dictionary=dictionary).compress(messages[0])
    message = (f"record was compressed with zstd dictionary {dictionary.checksum}; pass dictionary= the same "
               "ZstdDictionary to the Reconstructor")
    with pytest.raises(MissingCoderError, match=f"^{re.escape(message)}$"):
        Reconstructor().reconstruct(record)


def test_corrupted_zstd_payload_is_an_error(messages):
    text = max(messages[:200], key=len)
    record = Compressor(CompressionConfig(lossless_method="zstd")).compress(text)
    payload = bytearray(record.payload)
    payload[-3] ^= 0xFF
    broken = dataclasses.replace(record, payload=bytes(payload))
    pattern = (rf"^(zstd payload of {len(payload)} bytes does not decompress: .+|zstd payload decodes to \d+ bytes "
               rf"with CRC32 [0-9a-f]{{8}}, but the original had {record.original_length} bytes with CRC32 "
               rf"{record.content_crc32:08x}: the payload is corrupted)$")
    with pytest.raises(CorruptPayloadError, match=pattern):
        Reconstructor().reconstruct(broken)


def test_training_on_too_little_text_is_a_clear_error():
    with pytest.raises(CompressionError, match=r"^cannot train a 16384-byte zstd dictionary on 2 texts \(6 bytes\): "):
        ZstdDictionary.train(["abc", "def"])


def test_lossless_method_zstd_dict_without_a_dictionary():
    message = ("lossless_method='zstd_dict' needs a dictionary: call train_dictionary(texts) or pass "
               "dictionary=")
    with pytest.raises(MissingCoderError, match=f"^{re.escape(message)}$"):
        Compressor(CompressionConfig(lossless_method="zstd_dict")).compress("hello")
