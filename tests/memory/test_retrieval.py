"""Hybrid retrieval on real chitchat messages: paraphrase, exact rare term, link re-ranking, filters, ANN."""

from __future__ import annotations

import numpy as np
import pytest

from memory import MemoryConfig, MemoryStore, RetrievalConfig, UnknownModalityError


@pytest.fixture
def chat_store(store, conversations):
    """A store holding 300 real chat turns from 30 conversations (one session each)."""
    items = [{"content": t["text"], "session": f"c{ci}"} for ci, conv in enumerate(conversations[:30])
             for t in conv[:10]]
    store.add_many(items)
    return store


def test_search_finds_paraphrase(chat_store):
    target = chat_store.add("I adopted a puppy last weekend and she chews on every shoe in the house")
    for mode in ("vector", "hybrid"):
        hits = chat_store.search("Last weekend I got a new dog who keeps chewing my shoes", k=5, mode=mode)
        assert hits[0].id == target, mode
        assert hits[0].similarity > 0.6


def test_full_text_finds_exact_rare_term(chat_store):
    target = chat_store.add("the wifi password at the cabin is zanzibar42, do not lose it")
    hybrid = chat_store.search("zanzibar42", k=5)
    assert hybrid[0].id == target and hybrid[0].text_score > 0
    vector = chat_store.search("zanzibar42", k=5, mode="vector")
    assert all(h.text_score == 0.0 for h in vector)  # vector mode never consults full-text


def test_link_reranking_changes_order(tmp_path, embedder):
    """Controlled embeddings: y is a bit less similar than x, but y links to z, which is very similar."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((384, 4)))[0].T.astype(np.float32)  # orthonormal rows
    q = basis[0]

    def vec(sim: float, axis: int) -> np.ndarray:
        return sim * q + np.sqrt(1 - sim**2) * basis[axis]

    cfg = MemoryConfig(near_duplicate_threshold=None, retrieval=RetrievalConfig(beta=0.3, hops=1))
    with MemoryStore(tmp_path / "m", embedder=embedder, config=cfg) as s:
        x = s.add("x", embedding=vec(0.60, 1))
        z = s.add("z", embedding=vec(0.90, 3))
        y = s.add("y", embedding=vec(0.55, 2), links=[(z, 0.5)])
        plain = s.search(q, k=3, links=False, mode="vector")
        assert [h.id for h in plain] == [z, x, y]
        ranked = s.search(q, k=3, mode="vector")
        # y: 0.55 + 0.3 * 0.5 * 0.90 = 0.685 overtakes x (0.6, no links); z keeps first via the symmetric link
        assert [h.id for h in ranked] == [z, y, x]
        hit_y = ranked[1]
        assert hit_y.via == z
        assert hit_y.link_score == pytest.approx(0.5 * 0.90, abs=1e-4)
        assert hit_y.score == pytest.approx(hit_y.fused_score + 0.3 * hit_y.link_score, abs=1e-6)


def test_walk_respects_hop_limit(tmp_path, embedder):
    rng = np.random.default_rng(1)
    basis = np.linalg.qr(rng.standard_normal((384, 5)))[0].T.astype(np.float32)
    q = basis[0]
    far = basis[4]  # w is only reachable through the walk: orthogonal to the query
    for hops, expect_link in ((1, 0.0), (2, 1.0 * 1.0 * 0.8)):
        cfg = MemoryConfig(near_duplicate_threshold=None,
                           retrieval=RetrievalConfig(hops=hops, candidates=1, walk_from=1))
        with MemoryStore(tmp_path / f"h{hops}", embedder=embedder, config=cfg) as s:
            w = s.add("w", embedding=0.8 * q + 0.6 * basis[3])
            mid = s.add("mid", embedding=far)
            top = s.add("top", embedding=0.7 * q + np.sqrt(0.51) * basis[1], links=[(mid, 1.0)])
            s.link(mid, w, 1.0)
            hits = {h.id: h for h in s.search(q, k=3, mode="vector")}
            assert hits[top].link_score == pytest.approx(expect_link, abs=1e-4)


def test_filters(store, embedder):
    a = store.add("meeting notes about the budget", session="work")
    b = store.add("notes about the budget for groceries", session="home")
    img = store.add("file:///img/budget.png", modality="image", embedding=embedder.encode(["a budget chart"])[0])
    assert {h.id for h in store.search("budget", session="work")} == {a}
    assert {h.id for h in store.search("budget", modalities=["text"])} == {a, b}
    assert {h.id for h in store.search("budget", modalities=["image"])} == {img}
    assert store.search("budget", tiers=["archived"]) == []
    with pytest.raises(UnknownModalityError) as err:
        store.search("budget", tiers=["warm"])
    assert str(err.value) == "search tier filter ['warm'] is not in ['short', 'long', 'archived']"


def test_maintain_builds_no_lance_search_index(store, conversations):
    """Search reads memory.index only: the table carries just its id btree, before and after maintain()."""
    store.add_many([t["text"] for conv in conversations[:5] for t in conv[:6]])
    assert store.stats()["indexes"] == ["id_idx:BTree"]
    assert store.maintain()["index"] == "optimized"
    assert store.stats()["indexes"] == ["id_idx:BTree"]
