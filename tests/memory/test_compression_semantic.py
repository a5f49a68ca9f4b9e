"""The semantic tier on real conversations with real MiniLM embeddings; entity extraction; int8 embeddings."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.compression import (
    CompressedMemory,
    CompressionConfig,
    Compressor,
    InvalidContentError,
    MissingCoderError,
    ModelMismatchError,
    Reconstructor,
    entity_retention,
    extract_entities,
)
from memory.compression.semantic import (
    dequantize_embedding,
    embed_documents,
    quantize_embedding,
    render_reconstruction,
    split_sentences,
)
from memory.compression.semantic_codec import dequantize, pack_parts, quantize, unpack_parts


@pytest.fixture(scope="module")
def long_conversation(conversations) -> str:
    texts = ("\n".join(turn["text"] for turn in conv) for conv in conversations)
    return next(t for t in texts if 4096 <= len(t.encode()) <= 6000)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I met Alice and Bob in New York on Monday at 7pm.", ["Alice", "Bob", "New York", "Monday", "7pm"]),
        ("We moved on May 3rd, 2019 to Paris. It cost $2,500 and 30% tax",
         ["May 3rd, 2019", "Paris", "$2,500", "30%"]),
        ("yeah i went to the University of Texas last year lol, around 3:30 PM", ["University of Texas", "3:30 PM"]),
        ("Im going to see Star Wars with my friend Jake. Jake said 2 tickets", ["Star Wars", "Jake", "2"]),
        ("Hello\nHow are you doing today?", []),
        ("Alice and Bob met on Monday.\nThey fly to Paris", ["Alice", "Bob", "Monday", "Paris"]),
        ("the deadline is 2018-05-02, or 5/14 at the latest", ["2018-05-02", "5/14"]),
    ],
)
def test_extract_entities(text, expected):
    assert extract_entities(text) == expected


def test_entity_retention_is_a_verbatim_fraction():
    assert entity_retention(["Paris", "7pm"], "see you in Paris") == 0.5
    assert entity_retention([], "anything") == 1.0


def test_split_sentences_by_line_and_punctuation():
    assert split_sentences("Hi! How are you?\n\nfine. thanks") == ["Hi!", "How are you?", "fine.", "thanks"]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=64))
def test_int8_embedding_error_is_within_half_a_step(values):
    v = np.array(values, dtype=np.float32)
    data, scale = quantize_embedding(v)
    assert len(data) == v.size
    assert np.abs(dequantize_embedding(data, scale) - v).max() <= scale / 2 + 1e-6


def test_render_reconstruction_appends_only_missing_entities():
    assert render_reconstruction("we meet in Paris", ["Paris", "7pm"]) == "we meet in Paris\nKey facts: 7pm."
    assert render_reconstruction("we meet in Paris", ["Paris"]) == "we meet in Paris"


@pytest.fixture(scope="module")
def dictionary(conversations):
    from memory.compression import ZstdDictionary

    return ZstdDictionary.train([turn["text"] for conv in conversations[-1500:] for turn in conv])


@pytest.mark.slow
def test_semantic_record_on_a_real_conversation(long_conversation, embedder, dictionary):
    config = CompressionConfig(quality_threshold=-1.0, semantic_target_ratio=10.0, summary_shortlist=2)
    record = Compressor(config, embedder=embedder, dictionary=dictionary).compress(long_conversation,
                                                                                  tier="semantic")
    assert record.method == "semantic" and not record.flagged and record.payload
    assert record.token_path == "zstd_dict/binary" and record.model_checksum == dictionary.checksum
    assert record.summary == "" and record.entities == ()  # both live, coded, in the payload
    reconstructor = Reconstructor(config, dictionary=dictionary)
    summary, entities = reconstructor.semantic_parts(record)
    assert list(entities) == extract_entities(long_conversation)
    reconstruction = reconstructor.reconstruct(record)
    assert reconstruction == render_reconstruction(summary, entities)
    assert record.entity_retention == 1.0 == entity_retention(entities, reconstruction)
    original, rebuilt = embed_documents(embedder, [long_conversation, reconstruction])
    assert record.cosine == pytest.approx(float(original @ rebuilt), abs=1e-5)
    assert len(record.embedding) == 48 and float(record.embedding_vector() @ original) > 0.7
    assert record.ratio == pytest.approx(record.original_length / record.stored_bytes)
    assert record.ratio >= 10.0  # the row (payload, embedding, checksums, metrics) meets the target
    assert set(summary.splitlines()) <= set(split_sentences(long_conversation))
    assert CompressedMemory.from_bytes(record.to_bytes()) == record


@pytest.mark.slow
def test_int8_embedding_and_plain_zstd(long_conversation, embedder):
    config = CompressionConfig(quality_threshold=-1.0, semantic_embedding="int8", summary_shortlist=0)
    record = Compressor(config, embedder=embedder).compress(long_conversation, tier="semantic")
    assert record.token_path == "zstd/int8" and len(record.embedding) == 384
    assert float(record.embedding_vector() @ embed_documents(embedder, [long_conversation])[0]) > 0.99
    summary, entities = Reconstructor(config).semantic_parts(record)
    assert summary and list(entities) == extract_entities(long_conversation)


@pytest.mark.slow
def test_entity_retention_is_total_on_real_conversations(conversations, embedder, dictionary):
    texts = [t for t in ("\n".join(turn["text"] for turn in conv) for conv in conversations[:400])
             if 1500 <= len(t.encode()) <= 3000][:6]
    config = CompressionConfig(quality_threshold=-1.0, semantic_target_ratio=5.0, summary_shortlist=0)
    records = Compressor(config, embedder=embedder, dictionary=dictionary).compress(texts, tier="semantic")
    reconstructor = Reconstructor(config, dictionary=dictionary)
    for text, record in zip(texts, records, strict=True):
        entities = extract_entities(text)
        assert entities and record.entity_retention == 1.0
        assert entity_retention(entities, reconstructor.reconstruct(record)) == 1.0


@pytest.mark.slow
def test_below_threshold_is_flagged_and_keeps_the_raw_text(long_conversation, embedder):
    config = CompressionConfig(quality_threshold=0.999, summary_shortlist=0)
    record = Compressor(config, embedder=embedder).compress(long_conversation, tier="semantic")
    assert record.flagged and record.cosine < 0.999 and record.payload
    assert record.lossless and record.token_path == "raw/binary"
    assert Reconstructor(config).reconstruct(record) == long_conversation
    with pytest.raises(InvalidContentError, match="flagged"):
        Reconstructor(config).semantic_parts(record)


@pytest.mark.slow
def test_dictionary_record_refuses_another_dictionary(long_conversation, embedder, dictionary, conversations):
    from memory.compression import ZstdDictionary

    config = CompressionConfig(quality_threshold=-1.0, summary_shortlist=0)
    record = Compressor(config, embedder=embedder, dictionary=dictionary).compress(long_conversation,
                                                                                  tier="semantic")
    with pytest.raises(MissingCoderError, match="pass dictionary="):
        Reconstructor(config).reconstruct(record)
    other = ZstdDictionary.train([turn["text"] for conv in conversations[-3000:-1500] for turn in conv])
    with pytest.raises(ModelMismatchError, match="load the dictionary the compressor trained"):
        Reconstructor(config, dictionary=other).reconstruct(record)


@pytest.mark.parametrize("parts", [("a summary\nline two", ("Paris", "7pm")), ("", ()), ("only", ())])
def test_semantic_payload_packing_round_trips(parts):
    assert unpack_parts(pack_parts(*parts)) == parts


def test_packing_refuses_separator_characters():
    assert pack_parts("a\x1eb", ()) is None and pack_parts("ok", ("x\x1fy",)) is None


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=8, max_size=64))
def test_binary_embedding_keeps_signs(values):
    v = np.array(values, dtype=np.float32)
    data, scale = quantize(v, "binary")
    assert len(data) == (v.size + 7) // 8 and scale == 0.0
    back = dequantize(data, scale, "binary")[: v.size]
    assert np.all((back > 0) == (v > 0))


def test_semantic_tier_needs_an_embedder():
    message = ("the semantic tier needs an embedder (anything with encode(list[str]) -> ndarray); pass "
               "embedder=")
    with pytest.raises(MissingCoderError, match=f"^{re.escape(message)}$"):
        Compressor().compress("Alice flies to Paris on Monday.", tier="semantic")


@pytest.mark.slow
def test_llm_summary_path_keeps_every_entity(embedder):
    from arrowengine.runtime.llm import LLM
    from tests.memory.compression_models import tiny_lm

    tiny = tiny_lm(0)
    llm = LLM.from_model(tiny.model, tiny.tokenizer)
    text = "Alice and Bob met at a cafe on Monday.\nThey plan a trip to Paris in June, about 3 days."
    config = CompressionConfig(summary_max_new_tokens=8, reconstruction_max_new_tokens=8, quality_threshold=-1.0,
                               semantic_target_ratio=1.01)
    record = Compressor(config, embedder=embedder, llm=llm).compress(text, tier="semantic")
    reconstructor = Reconstructor(config, llm=llm)
    entities = ("Alice", "Bob", "Monday", "Paris", "June", "3")
    assert not record.flagged and reconstructor.semantic_parts(record)[1] == entities
    assert record.entity_retention == 1.0
    assert all(e in reconstructor.reconstruct(record) for e in entities)
