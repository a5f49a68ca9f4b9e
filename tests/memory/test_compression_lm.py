"""The LM arithmetic coder: exact round trips on arbitrary Unicode, the byte path, and refusals."""

from __future__ import annotations

import dataclasses
import re
import zlib

import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.compression import (
    Compressor,
    CorruptPayloadError,
    MissingCoderError,
    ModelMismatchError,
    Reconstructor,
)
from tests.memory.compression_models import smollm2_lm, tiny_lm


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(0)


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(min_size=1, max_size=24), context=st.lists(st.text(max_size=12), max_size=2))
def test_lm_round_trip_is_exact_on_arbitrary_unicode(lm, text, context):
    record = Compressor(lm=lm).compress(text, context=context)
    assert record.method == "lm"
    assert Reconstructor(lm=lm).reconstruct(record, context=context) == text


def test_lm_codes_a_conversation_with_chained_context(lm):
    messages = ["Hello", "How are you doing today?", "im doing good, just took a nap 😴", "naïve café"]
    records = Compressor(lm=lm).compress(messages, context=["hi there"])
    assert [r.token_path for r in records] == ["bpe"] * 4
    assert len({r.context_checksum for r in records}) == 4  # each message sees a longer context
    assert Reconstructor(lm=lm).reconstruct(records, context=["hi there"]) == messages


def test_text_holding_the_stop_token_takes_the_byte_path(lm):
    text = "say <|im_end|> now"
    record = Compressor(lm=lm).compress(text)
    assert record.token_path == "bytes"
    assert Reconstructor(lm=lm).reconstruct(record) == text


def test_coding_pins_and_restores_the_thread_count(lm):
    before = torch.get_num_threads()
    Compressor(lm=lm).compress("threads stay as they were")
    assert torch.get_num_threads() == before


def test_a_different_model_refuses_to_decode(lm):
    record = Compressor(lm=lm).compress("Alice meets Bob on Monday")
    other = tiny_lm(1)
    assert other.checksum != lm.checksum
    message = (
        f"record was compressed with model {lm.checksum}, but this reconstructor's model is {other.checksum}; "
        "load the same weights and tokenizer to decode it"
    )
    with pytest.raises(ModelMismatchError, match=f"^{re.escape(message)}$"):
        Reconstructor(lm=other).reconstruct(record)


def test_a_different_context_refuses_to_decode(lm):
    record = Compressor(lm=lm).compress("see you at 7pm", context=["when?"])
    expected = Reconstructor(lm=lm)._coder.lm.prefix_ids(["why?"])
    got = zlib.crc32(torch.tensor(expected, dtype=torch.int64).numpy().astype("<i8").tobytes())
    message = (
        f"record was compressed with context checksum {record.context_checksum:08x}, but the given context "
        f"hashes to {got:08x}; pass the same previous messages (context=) used to compress it"
    )
    with pytest.raises(ModelMismatchError, match=f"^{re.escape(message)}$"):
        Reconstructor(lm=lm).reconstruct(record, context=["why?"])


def test_another_coder_version_refuses_to_decode(lm):
    record = dataclasses.replace(Compressor(lm=lm).compress("hello"), coder_version=99)
    message = (
        "record was written by lm coder version 99, this build decodes version 1; decode it with the matching "
        "build or compress the text again"
    )
    with pytest.raises(ModelMismatchError, match=f"^{re.escape(message)}$"):
        Reconstructor(lm=lm).reconstruct(record)


def test_a_reconstructor_without_the_lm_says_what_to_pass(lm):
    record = Compressor(lm=lm).compress("hello")
    message = (
        f"record was compressed with the LM coder (model {lm.checksum}); pass lm= the same model to the "
        "Reconstructor"
    )
    with pytest.raises(MissingCoderError, match=f"^{re.escape(message)}$"):
        Reconstructor().reconstruct(record)


def test_a_corrupted_payload_is_an_error_not_garbage(lm):
    text = "we should meet at the cafe on Friday around noon"
    record = Compressor(lm=lm).compress(text)
    payload = bytearray(record.payload)
    payload[len(payload) // 2] ^= 0x5A
    broken = dataclasses.replace(record, payload=bytes(payload))
    pattern = (
        r"^(lm payload decodes to \d+ bytes with CRC32 [0-9a-f]{8}, but the original had "
        rf"{len(text)} bytes with CRC32 {record.content_crc32:08x}: the payload is corrupted"
        r"|LM payload of \d+ bytes did not reach the end-of-message token within \d+ tokens: the payload is "
        r"corrupted or the context differs)$"
    )
    with pytest.raises(CorruptPayloadError, match=pattern):
        Reconstructor(lm=lm).reconstruct(broken)


@pytest.mark.slow
def test_real_smollm2_codes_real_chat_exactly_and_beats_zstd(conversations):
    lm = smollm2_lm()
    messages = [turn["text"] for turn in conversations[0][:2]]
    records = Compressor(lm=lm).compress(messages)
    assert Reconstructor(lm=lm).reconstruct(records) == messages
    raw = sum(len(m.encode()) for m in messages)
    lm_bytes = sum(len(r.payload) for r in records)
    zstd_bytes = sum(len(zstandard.ZstdCompressor(level=19).compress(m.encode())) for m in messages)
    assert raw / lm_bytes > 2 * raw / zstd_bytes


def test_a_single_string_context_is_one_message(lm):
    as_str = Compressor(lm=lm).compress("and you?", context="fine thanks")
    as_list = Compressor(lm=lm).compress("and you?", context=["fine thanks"])
    assert as_str == as_list.with_metrics(latency_ms=as_str.latency_ms)
    assert Reconstructor(lm=lm).reconstruct(as_str, context="fine thanks") == "and you?"
