"""MemoryStore: add/get round trips, links, delete, the AI-OS facade, and bad input (exact errors)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory import (
    EmbedderUnavailableError,
    EmbeddingDimensionError,
    EmptyContentError,
    InvalidLinkError,
    InvalidMetadataError,
    MemoryConfig,
    MemoryNotFoundError,
    MemoryStore,
    StorePathError,
    UnknownModalityError,
)
from memory.errors import InvalidEmbeddingError

_TEXT = st.text(min_size=1, max_size=200).filter(lambda s: s.strip())
_META = st.dictionaries(st.text(max_size=10), st.one_of(st.integers(-10**6, 10**6), st.text(max_size=20),
                                                       st.booleans(), st.none()), max_size=4)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_TEXT, metadata=_META, importance=st.floats(0, 1), session=st.one_of(st.none(), st.text(max_size=8)))
def test_add_get_round_trip(embedder, content, metadata, importance, session):
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "m", embedder=embedder) as store:
        mid = store.add(content, metadata=metadata, importance=importance, session=session)
        mem = store.get(mid)
        assert (mem.id, mem.content, mem.metadata, mem.session, mem.modality, mem.tier) == (
            mid, content, metadata, session, "text", "short")
        assert mem.importance == pytest.approx(importance, abs=1e-6)
        assert mem.access_count == 1


def test_add_many_preserves_order_and_session_links(store, conversations):
    turns = [t["text"] for t in conversations[0][:6]]
    ids = store.add_many([{"content": t, "session": "c0"} for t in turns])
    assert [store.get(i).content for i in ids] == turns
    for prev, cur in itertools.pairwise(ids):
        assert any(link.target == prev and link.kind == "session" for link in store.get(cur).links)
        assert any(link.target == cur and link.kind == "session" for link in store.get(prev).links)
    # a later add continues the chain from the last memory of the session
    nxt = store.add("see you tomorrow then", session="c0")
    assert {link.target for link in store.get(nxt).links} == {ids[-1]}
    # the back half joins the links the previous memory already had; none of them is lost
    assert {link.target for link in store.get(ids[-1]).links} == {ids[-2], nxt}


def test_near_duplicates_are_linked(store):
    a = store.add("I really love hiking in the mountains on weekends")
    b = store.add("I really love hiking in the mountains on the weekend")
    c = store.add("The invoice for March has not been paid yet")
    kinds_a = {(link.target, link.kind) for link in store.get(a).links}
    assert (b, "duplicate") in kinds_a
    assert all(link.target != c for link in store.get(a).links)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4), st.floats(0, 1), st.booleans()),
                    min_size=1, max_size=8))
def test_links_symmetric_where_declared(embedder, ops):
    vecs = embedder.encode(["alpha", "bravo", "charlie", "delta", "echo"])
    cfg = MemoryConfig(near_duplicate_threshold=None)
    with tempfile.TemporaryDirectory() as tmp, MemoryStore(Path(tmp) / "m", embedder=embedder, config=cfg) as s:
        ids = s.add_many([{"content": w, "embedding": v} for w, v in zip("abcde", vecs, strict=True)])
        expected: dict[tuple[int, int], float] = {}
        for a, b, w, symmetric in ops:
            if a == b:
                continue
            s.link(ids[a], ids[b], weight=w, kind="related", symmetric=symmetric)
            expected[(a, b)] = w
            if symmetric:
                expected[(b, a)] = w
        got = {(ids.index(i), ids.index(link.target)): link.weight
               for i in ids for link in s.get(i).links}
        assert got == pytest.approx(expected, abs=1e-6)


def test_related_and_delete_cleans_back_links(store):
    a, b, c = store.add_many(["first note about cats", "second note about dogs", "third note about birds"])
    store.link(a, b, weight=0.9, kind="topic")
    store.link(a, c, weight=0.4)
    rel = store.related(a)
    assert [(link.target, link.kind) for link, _ in rel] == [(b, "topic"), (c, "related")]
    assert rel[0][1].content == "second note about dogs"
    store.delete(b)
    with pytest.raises(MemoryNotFoundError) as err:
        store.get(b)
    assert str(err.value) == f"memory id(s) ['{b}'] not found in store '{store.path}'"
    assert isinstance(err.value, KeyError)
    assert [link.target for link in store.get(a).links] == [c]


def test_facade_round_trip(store):
    mid = store.store_memory({"text": "Alice met Bob at the cafe on Monday", "session": "s", "source": "chat"})
    got = store.retrieve_memory(mid)
    assert got["content"] == "Alice met Bob at the cafe on Monday"
    assert got["metadata"] == {"source": "chat"}
    other = store.store_memory({"content": "Bob ordered a flat white", "session": "s"})
    found = store.search_memories("where did Alice meet Bob?", top_k=2)
    assert found[0]["id"] == mid and {"similarity", "text_score", "link_score", "score"} <= found[0].keys()
    rel = store.get_related_memories(other)
    assert [(r["id"], r["link_kind"]) for r in rel] == [(mid, "session")]


def test_media_memory_is_a_pointer_with_caller_embedding(store, embedder):
    vec = embedder.encode(["a dog barking loudly"])[0]
    mid = store.add("file:///data/audio/bark.wav", modality="audio", embedding=vec)
    store.add("a recipe for lemon cake")
    hits = store.search(vec, k=5, modalities=["audio"])
    assert [h.id for h in hits] == [mid]
    assert store.get(mid).content == "file:///data/audio/bark.wav"


def test_bad_input_errors(store, tmp_path):
    with pytest.raises(EmptyContentError) as err:
        store.add("   ")
    assert str(err.value) == "memory content '   ' is empty or not a string; give non-empty text"
    with pytest.raises(UnknownModalityError) as err:
        store.add("x", modality="smell")
    assert str(err.value) == "modality 'smell' is not one of ['text', 'audio', 'image']"
    with pytest.raises(UnknownModalityError) as err:
        store.add("file:///a.png", modality="image")
    assert str(err.value) == (
        "an image memory ('file:///a.png') needs its input or a vector: use store.add_image(...) (data=... in "
        "add_many), or pass embedding=... in the joint space")
    store.add("a first memory fixes the table dimension")
    with pytest.raises(EmbeddingDimensionError) as err:
        store.add("wrong size", embedding=np.ones(512, dtype=np.float32))
    assert str(err.value) == (
        "memory 'wrong size': embedding dimension 512 does not match the store's table dimension 384; "
        "use the same embedder the store was created with, or a new store path")
    with pytest.raises(InvalidEmbeddingError) as err:
        store.add("zero", embedding=np.zeros(384, dtype=np.float32))
    assert str(err.value) == "memory 'zero': embedding has a zero, NaN or infinite row; cannot be normalised"
    with pytest.raises(InvalidMetadataError) as err:
        store.add("meta", metadata={"when": object})
    assert str(err.value).startswith("metadata {'when': <class 'object'>} is not JSON-serialisable")
    with pytest.raises(InvalidLinkError) as err:
        store.add("bad link", links=[("someid", 2.0)])
    assert str(err.value) == "link to 'someid' has weight 2.0; weights must be in [0, 1]"
    with pytest.raises(MemoryNotFoundError) as err:
        store.add("dangling link", links=["nope"])
    assert str(err.value) == f"memory id(s) ['nope'] not found in store '{store.path}'"
    assert len(store) == 1  # nothing half-added by the failures


def test_unwritable_path(tmp_path, embedder):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a directory")
    with pytest.raises(StorePathError) as err:
        MemoryStore(blocker / "mem", embedder=embedder)
    assert str(err.value) == (
        f"memory store path '{blocker / 'mem'}' cannot be created (Not a directory); choose a writable directory")
    assert isinstance(err.value, PermissionError)


def test_default_embedder(tmp_path, models_dir):
    missing = MemoryStore(tmp_path / "a", config=MemoryConfig(models_dir=tmp_path / "none"))
    with pytest.raises(EmbedderUnavailableError) as err:
        missing.add("hello")
    assert str(err.value) == (
        f"text embedder model '{tmp_path / 'none' / 'all-MiniLM-L6-v2'}' is missing; run "
        "`python scripts/fetch_models.py` to convert it, or pass embedder= to MemoryStore")
    store = MemoryStore(tmp_path / "b", config=MemoryConfig(models_dir=models_dir))
    mid = store.add("the default embedder is arrowengine's TextEncoder")
    assert store.dim == 384 and store.search("which encoder is the default?", k=1)[0].id == mid


def test_reopen_keeps_everything(tmp_path, embedder):
    with MemoryStore(tmp_path / "m", embedder=embedder) as s:
        ids = s.add_many(["one fish", "two fish", "red fish", "blue fish"])
        s.get(ids[0])
    with MemoryStore(tmp_path / "m", embedder=embedder) as s:
        assert len(s) == 4 and s.get(ids[0]).access_count == 2  # the first read was flushed on close
        assert s.stats()["tiers"] == {"short": 4, "long": 0, "archived": 0}
