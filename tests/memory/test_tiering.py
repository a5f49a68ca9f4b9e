"""Tiering: batched access statistics, every eviction policy, compression to the archived tier and back."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from memory import MemoryConfig, MemoryStore, TieringConfig, UnknownPolicyError
from memory.policies import decode_embedding, encode_embedding
from memory.tiering import tfidf_salience

DAY = 86400.0


def _store(tmp_path, embedder, **tiering):
    cfg = MemoryConfig(near_duplicate_threshold=None, tiering=TieringConfig(**tiering))
    return MemoryStore(tmp_path / "m", embedder=embedder, config=cfg)


def test_access_stats_are_batched(store):
    ids = store.add_many(["alpha memory", "beta memory", "gamma memory"])
    version = store.version
    for _ in range(10):
        store.get(ids[0])
        store.search("beta", k=3)
    assert store.version == version  # twenty reads, no table write
    assert store.stats()["pending_access"] == 3
    assert store.flush() == 3
    assert store.version == version + 1  # one merge for all of them
    assert store.get(ids[0]).access_count == 21  # 10 gets + 10 search hits flushed, + this read (pending)


def test_flush_triggers_on_size(tmp_path, embedder):
    with _store(tmp_path, embedder, access_flush_every=2) as s:
        a, b = s.add_many(["one", "two"])
        version = s.version
        s.get(a)
        assert s.version == version
        s.get(b)  # second distinct id reaches the threshold: one merge, written off the read path
        s._join_flusher()
        assert s.version == version + 1
        assert s.get(a).access_count == 2  # the flushed read plus this one, counted before its own flush


def test_a_due_flush_waits_for_a_quiet_moment_and_close_runs_it(tmp_path, embedder):
    """A flush that falls due during searches waits until none has run for access_flush_quiet_s; close() runs a
    waiting flush at once, and the statistics are in the table when the store is opened again."""
    with _store(tmp_path, embedder, access_flush_every=1, access_flush_quiet_s=3600.0) as s:
        ids = s.add_many(["alpha memory", "beta memory", "gamma memory"])
        version = s.version
        hits = s.search("alpha", k=1)
        time.sleep(0.3)
        assert s.version == version and s._flusher is not None and s._flusher.is_alive()  # due, but waiting
    assert hits[0].id == ids[0]
    with _store(tmp_path, embedder) as again:
        assert again.version == version + 1  # close() ran the waiting flush: one merge
        assert again.get(ids[0]).access_count == 2  # the search hit, plus this read


def test_a_waiting_flush_runs_once_searches_stop(tmp_path, embedder):
    with _store(tmp_path, embedder, access_flush_every=1, access_flush_quiet_s=0.05) as s:
        s.add_many(["alpha memory", "beta memory"])
        version = s.version
        s.search("alpha", k=1)
        deadline = time.monotonic() + 60.0
        while s.version == version and time.monotonic() < deadline:
            time.sleep(0.05)
        assert s.version == version + 1 and s.stats()["pending_access"] == 0


def test_inline_flush_when_background_is_off(tmp_path, embedder):
    with _store(tmp_path, embedder, access_flush_every=2, background_flush=False) as s:
        a, b = s.add_many(["one", "two"])
        version = s.version
        s.get(a)
        s.get(b)
        assert s._flusher is None and s.version == version + 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("lru", {"m1", "m2"}), ("lfu", {"m0", "m2"}), ("age", {"m0", "m1"}), ("importance", {"m3", "m4"})],
)
def test_eviction_policies(tmp_path, embedder, policy, expected):
    with _store(tmp_path, embedder, eviction_policy=policy, capacity_rows=3, compression_policy=None) as s:
        names = {}
        for i, imp in enumerate([0.9, 0.8, 0.7, 0.1, 0.2]):
            names[s.add(f"memory number {i} about topic {i}", importance=imp)] = f"m{i}"
        by_name = {v: k for k, v in names.items()}
        for _ in range(3):
            s.get(by_name["m1"])  # m1 read most often, but longest ago; m2 never read
        s.get(by_name["m3"])
        s.get(by_name["m4"])
        s.get(by_name["m0"])  # m0 read last (LFU ties on count 1 break towards the oldest: m0)
        report = s.maintain()
        assert {names[i] for i in report["evicted"]} == expected
        assert len(s) == 3
        log = s._db.open_table("tier_log").to_arrow().to_pylist()
        assert {(r["to_tier"], r["reason"]) for r in log} == {("evicted", f"eviction:{policy}")}


def test_eviction_by_bytes(tmp_path, embedder):
    with _store(tmp_path, embedder, eviction_policy="age", capacity_bytes=6000, compression_policy=None) as s:
        ids = [s.add("x" * 1000 + str(i)) for i in range(5)]  # ~1001 + 384 * 4 + 64 + 2 = 2603 bytes each
        report = s.maintain()
        assert report["evicted"] == ids[:3] and len(s) == 2


def test_cold_memories_archived_and_restored(tmp_path, embedder, conversations):
    texts = list(dict.fromkeys(t["text"] for conv in conversations[:20] for t in conv))[:60]
    with _store(tmp_path, embedder, embedding_codec="int8") as s:
        ids = s.add_many(texts)
        raw = {i: s._rows_by_id([i])[i] for i in ids}
        report = s.maintain(now=time.time() + 30 * DAY)
        archived = report["archived"]
        assert 0 < len(archived) < len(ids)  # the salient top decile stays hot
        row = s._rows_by_id([archived[0]])[archived[0]]
        assert row["tier"] == "archived" and row["content_zstd"] is not None
        assert row["embedding_codec"] == "int8" and len(row["embedding_q"]) == 4 + 384
        q = decode_embedding(row["embedding_q"], "int8", 384)
        assert float(q @ np.asarray(raw[archived[0]]["embedding"])) > 0.999
        for mid in archived:  # exact content comes back through get()
            assert s.get(mid).content == raw[mid]["content"]
        report = s.maintain(now=time.time() + 1)  # those reads make them hot again
        assert sorted(report["restored"]) == sorted(archived)
        assert s._rows_by_id([archived[0]])[archived[0]]["content_zstd"] is None
        log = s._db.open_table("tier_log").to_arrow().to_pylist()
        assert len(log) == 2 * len(archived)
        assert {(r["from_tier"], r["to_tier"]) for r in log} == {("short", "archived"), ("archived", "short")}


def test_unknown_policy(tmp_path, embedder):
    with _store(tmp_path, embedder, eviction_policy="fifo", capacity_rows=1) as s:
        s.add("hello")
        with pytest.raises(UnknownPolicyError) as err:
            s.maintain()
        assert str(err.value) == "eviction policy 'fifo' is not registered; known: ['age', 'importance', 'lfu', 'lru']"


def test_salience_prefers_rare_terms():
    sal = tfidf_salience(["the cat sat", "the cat ran", "the cat sat", "quokka xylophone zeppelin", ""])
    assert int(np.argmax(sal)) == 3 and sal[4] == 0.0


_UNIT = arrays(np.float32, 384, elements=st.floats(-1, 1, width=32)).filter(lambda v: np.linalg.norm(v) > 1e-3)


@settings(max_examples=50, deadline=None)
@given(vec=_UNIT)
def test_embedding_codecs_bounds(vec):
    vec = vec / np.linalg.norm(vec)
    f16 = decode_embedding(encode_embedding(vec, "float16"), "float16", 384)
    assert np.max(np.abs(f16 - vec)) <= 1e-3
    i8 = decode_embedding(encode_embedding(vec, "int8"), "int8", 384)
    assert np.max(np.abs(i8 - vec)) <= np.abs(vec).max() / 127 * 0.5 + 1e-6
    b = decode_embedding(encode_embedding(vec, "binary"), "binary", 384)
    assert len(encode_embedding(vec, "binary")) == 48 and np.all(np.sign(b[vec != 0]) == np.sign(vec[vec != 0]))
