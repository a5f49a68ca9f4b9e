"""The store-trained context text model: golden bytes, exact round trips, exact sizes, persistence, bad input;
and the semantic tier coded with it on a real conversation."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.compression import (
    CompressionConfig,
    CompressionError,
    Compressor,
    ContextTextModel,
    CorruptPayloadError,
    MissingCoderError,
    ModelMismatchError,
    Reconstructor,
    entity_retention,
    extract_entities,
)
from memory.compression.semantic import embed_documents, render_reconstruction, split_sentences
from memory.compression.semantic_codec import pack_units, units_complete, unpack_units
from memory.compression.summary_search import SearchSpace, refine_selection

_UNIT = st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",)), max_size=40)


@pytest.fixture(scope="module")
def chat_model(conversations) -> ContextTextModel:
    """An order-4 model trained on 300 real conversations (what a store trains on its own messages)."""
    return ContextTextModel.train([turn["text"] for conv in conversations[-300:] for turn in conv])


def test_golden_bytes_of_a_tiny_model():
    model = ContextTextModel.train(["hello world", "hello there", "help me"], order=2)
    assert model.checksum == "text-model:96b1e35d2d176ec7"
    assert model.encode_units(["hello", "hi"]).hex() == "4f1cc6f0"
    assert model.decode_units(bytes.fromhex("4f1cc6f0"), lambda units: len(units) == 2, max_bytes=64) == [
        "hello", "hi"]


@settings(max_examples=60, deadline=None)
@given(st.lists(_UNIT, max_size=6))
def test_units_round_trip_and_size_is_the_sum_of_unit_code_lengths(chat_model, units):
    payload = chat_model.encode_units(units)
    back = chat_model.decode_units(payload, lambda got: len(got) == len(units), max_bytes=10_000)
    assert back == units
    # the estimate bounds the real size from above, within the coder's flush
    assert len(payload) <= chat_model.estimate_bytes(units) <= len(payload) + 6


def test_real_sentences_code_to_about_a_quarter(chat_model, conversations):
    sentences = [s for conv in conversations[:20] for turn in conv for s in split_sentences(turn["text"])]
    raw = sum(len(s.encode()) + 1 for s in sentences)
    payload = chat_model.encode_units(sentences)
    assert raw / len(payload) > 3.0, raw / len(payload)  # measured 4.0x with 1,500 training conversations


def test_save_and_load_keep_the_model(chat_model, tmp_path):
    path = chat_model.save(tmp_path / "text_model.arrow")
    loaded = ContextTextModel.load(path)
    assert loaded.checksum == chat_model.checksum and loaded.order == chat_model.order
    units = ["see you on Monday at 7pm", "Paris"]
    assert loaded.decode_units(chat_model.encode_units(units), lambda got: len(got) == 2, max_bytes=200) == units


def test_bad_input_is_refused():
    model = ContextTextModel.train(["hello world"], order=2)
    with pytest.raises(CompressionError) as info:
        model.encode_units(["two\nlines"])
    assert str(info.value) == "a coded unit cannot hold a newline (it ends each unit): 'two\\nlines'"
    with pytest.raises(CompressionError) as info:
        ContextTextModel.train(["", "\n"])
    assert str(info.value) == "cannot train a text model on no text; give the store's messages"
    with pytest.raises(CompressionError, match="not a version-1 text model table"):
        ContextTextModel.from_arrow(pa.table({"order": [1]}))
    with pytest.raises(CorruptPayloadError) as info:
        model.decode_units(b"\x00" * 8, lambda units: False, max_bytes=16)
    assert str(info.value) == ("text-model payload of 8 bytes decodes past 16 bytes without its end marker: the "
                               "payload is corrupted")
    with pytest.raises(CorruptPayloadError) as info:
        model.decode_units(b"\x7f" * 8, lambda units: False, max_bytes=16)
    assert str(info.value) == ("text-model payload decodes to invalid UTF-8: the payload is corrupted or was coded "
                               "with another model")


@pytest.mark.parametrize("parts", [("a summary\nline two", ("Paris", "7pm")), ("", ()), ("only", ())])
def test_semantic_units_round_trip(parts):
    units = pack_units(*parts)
    assert units_complete(units) and unpack_units(units) == parts


def test_local_search_only_moves_to_better_selections_that_fit():
    sentences = ["alpha", "beta", "gamma", "delta", "epsilon"]
    wanted = {1, 3}
    # a score that peaks when exactly sentences 1 and 3 are chosen, and a budget of two sentences

    def score(texts: list[str]) -> list[float]:
        chosen = [{sentences.index(s) for s in t.split("\n") if s} for t in texts]
        return [len(c & wanted) - len(c - wanted) for c in chosen]

    def fits(text: str) -> bool:
        return len(text.split("\n")) <= 2

    import numpy as np

    vectors = np.eye(5, dtype=np.float32)
    space = SearchSpace(sentences, vectors, np.full(5, 0.2, dtype=np.float32), fits,
                        lambda texts: np.asarray(score(texts), dtype=np.float32))
    chosen, best = refine_selection(space, [0, 2], steps=5)
    assert chosen == frozenset(wanted) and best == 2.0
    assert refine_selection(space, [1, 3], steps=5) == (frozenset(wanted), 2.0)  # already optimal: unchanged


@pytest.mark.slow
def test_semantic_record_coded_by_the_text_model(conversations, embedder, chat_model):
    text = next(t for t in ("\n".join(turn["text"] for turn in conv) for conv in conversations)
                if 4096 <= len(t.encode()) <= 6000)
    config = CompressionConfig(quality_threshold=-1.0, semantic_target_ratio=10.0)
    record = Compressor(config, embedder=embedder, text_model=chat_model).compress(text, tier="semantic")
    assert record.token_path == "ctx/binary" and record.model_checksum == chat_model.checksum
    assert record.ratio >= 10.0 and not record.flagged
    reconstructor = Reconstructor(config, text_model=chat_model)
    summary, entities = reconstructor.semantic_parts(record)
    assert list(entities) == extract_entities(text)
    assert set(summary.splitlines()) <= set(split_sentences(text))
    lines = summary.splitlines()
    assert lines == sorted(lines, key=text.index)  # conversation order
    reconstruction = reconstructor.reconstruct(record)
    assert reconstruction == render_reconstruction(summary, entities)
    assert entity_retention(entities, reconstruction) == 1.0 == record.entity_retention
    original, rebuilt = embed_documents(embedder, [text, reconstruction])
    assert record.cosine == pytest.approx(float(original @ rebuilt), abs=1e-5)
    assert record.cosine >= 0.85
    with pytest.raises(MissingCoderError) as info:
        Reconstructor(config).reconstruct(record)
    assert str(info.value) == (f"semantic record was coded with text model {chat_model.checksum}; pass "
                               "text_model= the same one to the Reconstructor")
    other = ContextTextModel.train([turn["text"] for conv in conversations[-600:-300] for turn in conv])
    with pytest.raises(ModelMismatchError) as info:
        Reconstructor(config, text_model=other).reconstruct(record)
    assert str(info.value) == (f"semantic record was coded with text model {chat_model.checksum}, but this "
                               f"reconstructor's is {other.checksum}; load the text_model the compressor trained")
