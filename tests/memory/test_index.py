"""The in-process search index: exact and IVF vector search, BM25 text index, filter masks, sync with the table."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory import MemoryConfig, MemoryStore, RetrievalConfig
from memory.index import TextIndex, VectorIndex, tokenize, train_centroids
from memory.index.vector import IVFLayout, assign, ivf_layout

_CFG = {"near_duplicate_threshold": None}


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, n: int, d: int, clusters: int | np.ndarray, noise: float) -> np.ndarray:
    centres = _unit(rng, clusters, d) if isinstance(clusters, int) else clusters
    x = centres[rng.integers(0, len(centres), n)] + rng.normal(0, noise, (n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), k=st.integers(1, 20), seed=st.integers(0, 2**16), dead=st.floats(0.0, 0.9))
def test_exact_path_matches_brute_force(n, k, seed, dead):
    rng = np.random.default_rng(seed)
    vecs = _unit(rng, n, 16)
    index = VectorIndex(16)
    index.append(vecs)
    allowed = rng.random(n) >= dead
    q = _unit(rng, 1, 16)[0]
    slots, scores = index.search(q, k, allowed, nprobe=4, exact_below=10)
    full = vecs @ q  # the same product the index computes, so ties break identically
    ref = np.flatnonzero(allowed)
    ref = ref[np.lexsort((ref, -full[ref]))][:k]
    assert slots.tolist() == ref.tolist()
    np.testing.assert_allclose(scores, full[ref], atol=1e-6)


def _ivf_index(vecs: np.ndarray, lists: int, overflow: float = 0.01) -> VectorIndex:
    """Lay ``vecs`` out in list order, as MemoryIndex does (slots in that order)."""
    layout = ivf_layout(vecs, lists, overflow, seed=0)
    index = VectorIndex(vecs.shape[1])
    index.append(vecs[np.argsort(layout.labels, kind="stable")])
    index.set_lists(layout)
    return index


def _recall(index: VectorIndex, queries: np.ndarray, nprobe: int) -> float:
    mat = index.matrix()
    allowed = np.ones(len(mat), bool)
    got = [set(index.search(q, 10, allowed, nprobe=nprobe, exact_below=100)[0].tolist()) for q in queries]
    return float(np.mean([len(g & set(np.argsort(-(mat @ q))[:10].tolist())) / 10
                          for g, q in zip(got, queries, strict=True)]))


def test_overflow_list_finds_rows_unlike_their_list():
    # tight clusters of near-copies plus rows unlike any cluster (a store's unique memories among duplicates):
    # a query near a unique row must find it, though the list it was put in faces elsewhere
    rng = np.random.default_rng(5)
    vecs = np.concatenate([_clustered(rng, 20_000, 128, clusters=100, noise=0.03), _unit(rng, 100, 128)])
    queries = vecs[-100:] + 0.8 * _unit(rng, 100, 128)  # cosine ~0.78 to its unique row, ~0.25 to any cluster
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    plain, spill = _ivf_index(vecs, 128, overflow=0.0), _ivf_index(vecs, 128, overflow=0.01)
    assert plain.overflow_rows == 0 and 100 <= spill.overflow_rows <= 201  # the unique rows, within the 1% cap
    allowed = np.ones(len(vecs), bool)

    def found(index: VectorIndex) -> float:  # share of queries whose own unique row comes back first
        return float(np.mean([index.search(q, 1, allowed, nprobe=4, exact_below=100)[0][0]
                              == np.argmax(index.matrix() @ q) for q in queries]))

    assert found(spill) == 1.0 and found(plain) < 0.8


def test_tail_rows_under_the_overflow_cut_join_the_overflow_list():
    rng = np.random.default_rng(6)
    vecs = _clustered(rng, 5000, 32, clusters=20, noise=0.03)  # fewer clusters than lists: each is one list's
    index = _ivf_index(vecs, 32, overflow=0.01)
    lone = _unit(rng, 3, 32)
    index.append(np.concatenate([vecs[:2], lone]))
    assert index._tail_lists.view.tolist()[2:] == [32, 32, 32]  # the overflow list's number
    assert index._tail_lists.view.tolist()[:2] != [32, 32]
    allowed = np.ones(len(index), bool)
    for i, q in enumerate(lone):  # found with a single probe: the overflow list is always scanned
        assert index.search(q, 1, allowed, nprobe=1, exact_below=10)[0].tolist() == [5002 + i]


def test_a_layout_without_overflow_list_still_searches():
    # snapshots written before the overflow list: offsets end at the last list and no overflow_cosine array
    rng = np.random.default_rng(7)
    vecs = _clustered(rng, 3000, 16, clusters=20, noise=0.05)
    centroids = train_centroids(vecs, 16, seed=0)
    labels = assign(vecs, centroids)
    old = VectorIndex(16)
    old.append(vecs[np.argsort(labels, kind="stable")])
    old.set_lists(IVFLayout(centroids, labels, np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=16))]),
                            -np.inf))
    arrays = {k: v for k, v in old.snapshot().items() if k != "overflow_cosine"}
    again = VectorIndex.from_snapshot(16, arrays)
    assert again.overflow_rows == 0 and _recall(again, vecs[:20], 16) == 1.0


def test_ivf_recall_on_clustered_data():
    rng = np.random.default_rng(0)
    centres = _unit(rng, 200, 64)
    vecs = _clustered(rng, 20_000, 64, centres, noise=0.05)
    index = _ivf_index(vecs, 128)
    index.append(_clustered(rng, 500, 64, centres, noise=0.05))  # a tail added after the layout
    assert index.is_ivf and index.tail_rows == 500
    assert _recall(index, _clustered(rng, 50, 64, centres, noise=0.08), 8) >= 0.95


def test_ivf_selective_filter_is_exact():
    rng = np.random.default_rng(2)
    vecs = _clustered(rng, 5000, 32, clusters=50, noise=0.1)
    index = _ivf_index(vecs, 64)
    allowed = np.zeros(len(vecs), bool)
    allowed[rng.choice(len(vecs), 40, replace=False)] = True
    q = vecs[0]
    slots, _ = index.search(q, 10, allowed, nprobe=1, exact_below=100)
    ref = np.flatnonzero(allowed)
    assert slots.tolist() == ref[np.argsort(-(index.matrix()[ref] @ q), kind="stable")][:10].tolist()


def test_tokenize_drops_stop_words_and_lowercases():
    parent, tokens = tokenize(["The WiFi password is zanzibar42!", "", "naïve café-au-lait"])
    assert tokens.to_pylist() == ["wifi", "password", "zanzibar42", "naïve", "café", "au", "lait"]
    assert parent.tolist() == [0, 0, 0, 2, 2, 2, 2]


def test_text_index_bm25_and_maxscore_match_full_scoring():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(300)]
    probs = 1.0 / np.arange(1, 301)
    docs = [" ".join(rng.choice(words, size=rng.integers(3, 15), p=probs / probs.sum())) for _ in range(2000)]
    index = TextIndex()
    index.add(0, pa.array(docs[:1500]))
    index.add(1500, pa.array(docs[1500:]))  # lands in the delta
    allowed = np.ones(2000, bool)
    tok = [d.split() for d in docs]
    avgdl = np.mean([len(t) for t in tok])
    for query in ("w0 w1 w250", "w3 w120", "w299"):
        terms = set(query.split())
        df = {t: sum(t in d for d in tok) for t in terms}
        full = np.zeros(2000)
        for i, d in enumerate(tok):
            for t in terms:
                tf = d.count(t)
                if tf:
                    idf = np.log1p((2000 - df[t] + 0.5) / (df[t] + 0.5))
                    full[i] += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(d) / avgdl))
        slots, scores = index.search(query, 10, allowed)
        top = np.lexsort((np.arange(2000), -full))[: len(slots)]
        np.testing.assert_allclose(scores, full[top], rtol=1e-5)
        assert set(slots.tolist()) == set(top.tolist()) or np.allclose(np.sort(full[slots]), np.sort(full[top]))


def test_text_index_exact_term_hit(store, conversations):
    store.add_many([t["text"] for conv in conversations[:20] for t in conv[:8]])
    target = store.add("my locker code is qx7719 remember it")
    hits = store.search("qx7719", k=3)
    assert hits[0].id == target and hits[0].text_score > 0
    assert all(h.text_score == 0.0 for h in hits[1:])  # no other memory holds the term


def test_filters_are_masks(store, embedder):
    a = store.add("budget meeting", session="work")
    b = store.add("budget groceries", session="home")
    store.add("file:///budget.png", modality="image", embedding=embedder.encode(["a budget chart"])[0])
    index = store._search_index()
    mask = index.allowed(["text"], None, "home")
    assert mask.sum() == 1 and index.rows.column(np.flatnonzero(mask), "id") == [b]
    assert not index.allowed(None, None, "nowhere").any()
    assert {h.id for h in store.search("budget", modalities=["text"], session="work")} == {a}


def test_sync_after_add_link_delete(tmp_path, embedder):
    with MemoryStore(tmp_path / "m", embedder=embedder, config=MemoryConfig(**_CFG)) as s:
        a, b = s.add_many(["apples are red", "bananas are yellow"])
        assert {h.id for h in s.search("apples", k=5)} == {a, b}
        c = s.add("cherries are dark red")
        index = s._search_index()
        assert index.rows.n_live == 3 and c in index.rows.slot_of
        s.link(a, c, 0.9)
        hits = {h.id: h for h in s.search("apples are red", k=3)}
        assert hits[a].via == c or hits[c].via == a  # the new link is walked
        s.delete(b)
        assert b not in {h.id for h in s.search("bananas yellow", k=5)}
        assert index.rows.n_live == 2 and s._search_index().version == s.version


def test_second_store_object_sees_writes(tmp_path, embedder):
    cfg = MemoryConfig(**_CFG, retrieval=RetrievalConfig(index_refresh_s=0.0))  # check on every search
    first = MemoryStore(tmp_path / "m", embedder=embedder, config=cfg)
    first.add("the first memory about sailing")
    second = MemoryStore(tmp_path / "m", embedder=embedder, config=cfg)
    assert len(second.search("sailing", k=5)) == 1
    new = first.add("a second memory about sailing boats")
    gone = first.search("the first memory about sailing", k=1)[0].id
    first.delete(gone)
    ids = [h.id for h in second.search("sailing boats", k=5)]
    assert ids == [new]


def test_refresh_interval_delays_other_writers(tmp_path, embedder):
    cfg = MemoryConfig(**_CFG, retrieval=RetrievalConfig(index_refresh_s=3600.0))
    first = MemoryStore(tmp_path / "m", embedder=embedder, config=cfg)
    first.add("one memory about tea")
    second = MemoryStore(tmp_path / "m", embedder=embedder, config=cfg)
    assert len(second.search("tea", k=5)) == 1
    first.add("another memory about tea")
    assert len(second.search("tea", k=5)) == 1  # not checked again within the interval
    second._search_index().mark_stale()
    assert len(second.search("tea", k=5)) == 2


def test_index_switches_to_ivf_and_keeps_exact_hits(tmp_path, embedder):
    rng = np.random.default_rng(4)
    vecs = _clustered(rng, 1200, 384, clusters=30, noise=0.03)
    cfg = MemoryConfig(**_CFG, retrieval=RetrievalConfig(exact_max_rows=1000, ivf_nprobe=8, candidates=10))
    with MemoryStore(tmp_path / "m", embedder=embedder, config=cfg) as s:
        ids = s.add_many([{"content": f"memory {i}", "embedding": v} for i, v in enumerate(vecs)])
        index = s._search_index()
        assert index.vectors.is_ivf
        found = sum(s.search(v, k=1, mode="vector", links=False)[0].id == i
                    for v, i in zip(vecs[:50], ids[:50], strict=True))
        assert found == 50
        hit = s.search(vecs[7], k=1, mode="vector", links=False)[0]
        assert hit.similarity == pytest.approx(1.0, abs=1e-5)


def test_memory_config_from_yaml_and_env(tmp_path, caplog, monkeypatch, embedder):
    from memory.config import load_memory_config

    conf = tmp_path / "arrowengine.yaml"
    conf.write_text("memory:\n  table: notes\n  near_duplicate_threshold: 3.0\n"
                    "  retrieval:\n    ivf_nprobe: 48\n  tiering:\n    zstd_level: 5\n")
    cfg = load_memory_config(conf, environ={"ARROWENGINE_MEMORY_RETRIEVAL_CANDIDATES": "70",
                                            "ARROWENGINE_MEMORY_PATH": str(tmp_path / "store")})
    assert (cfg.table, cfg.retrieval.ivf_nprobe, cfg.retrieval.candidates, cfg.tiering.zstd_level) == (
        "notes", 48, 70, 5)
    assert cfg.path == tmp_path / "store"
    assert cfg.near_duplicate_threshold == 0.92  # invalid: logged, default kept
    assert any("memory.near_duplicate_threshold" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("ARROWENGINE_CONFIG", str(conf))
    monkeypatch.setenv("ARROWENGINE_MEMORY_PATH", str(tmp_path / "default"))
    store = MemoryStore(embedder=embedder)  # no config: the same loader runs
    assert (store.config.table, store.path, store.config.retrieval.ivf_nprobe) == ("notes", tmp_path / "default", 48)


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return min(pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas")


def test_index_products_run_on_one_blas_thread_and_restore_the_callers_setting(monkeypatch):
    """Spinning OpenBLAS workers left by a search took the cores from the next query's embedding (memory/index/blas.py):
    the index's products run on one BLAS thread, and the caller's own limit is back afterwards."""
    from threadpoolctl import threadpool_limits

    import memory.index.vector as vector_module

    seen: list[int] = []
    real_top = vector_module._top

    def spying_top(*args, **kwargs):
        seen.append(_blas_threads())
        return real_top(*args, **kwargs)

    monkeypatch.setattr(vector_module, "_top", spying_top)
    rng = np.random.default_rng(0)
    index = VectorIndex(16)
    index.append(_unit(rng, 50, 16))
    with threadpool_limits(limits=2, user_api="blas"):
        index.search(_unit(rng, 1, 16)[0], 5, np.ones(50, dtype=bool), nprobe=4, exact_below=10)
        assert seen == [1]
        assert _blas_threads() == 2
