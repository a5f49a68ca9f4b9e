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
    MissingCoderError,
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


@pytest.mark.slow
def test_semantic_record_on_a_real_conversation(long_conversation, embedder):
    config = CompressionConfig(quality_threshold=-1.0, semantic_target_ratio=4.0)
    record = Compressor(config, embedder=embedder).compress(long_conversation, tier="semantic")
    assert record.method == "semantic" and not record.flagged and record.payload == b""
    assert list(record.entities) == extract_entities(long_conversation)
    reconstruction = Reconstructor(config).reconstruct(record)
    assert reconstruction == render_reconstruction(record.summary, record.entities)
    assert record.entity_retention == 1.0 == entity_retention(record.entities, reconstruction)
    original, rebuilt = embed_documents(embedder, [long_conversation, reconstruction])
    assert record.cosine == pytest.approx(float(original @ rebuilt), abs=1e-5)
    assert float(record.embedding_vector() @ original) > 0.99
    assert record.ratio == pytest.approx(record.original_length / record.stored_bytes)
    assert record.ratio > 3.0
    assert set(record.summary.splitlines()) <= set(split_sentences(long_conversation))
    assert CompressedMemory.from_arrow(record.to_arrow()) == record


@pytest.mark.slow
def test_below_threshold_is_flagged_and_keeps_the_raw_text(long_conversation, embedder):
    config = CompressionConfig(quality_threshold=0.999)
    record = Compressor(config, embedder=embedder).compress(long_conversation, tier="semantic")
    assert record.flagged and record.cosine < 0.999 and record.payload
    assert record.lossless
    assert Reconstructor(config).reconstruct(record) == long_conversation


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
    config = CompressionConfig(summary_max_new_tokens=8, reconstruction_max_new_tokens=8)
    record = Compressor(config, embedder=embedder, llm=llm).compress(text, tier="semantic")
    assert record.entities == ("Alice", "Bob", "Monday", "Paris", "June", "3")
    assert record.entity_retention == 1.0
    reconstruction = Reconstructor(config, llm=llm).reconstruct(record)
    assert record.flagged or all(e in reconstruction for e in record.entities)
