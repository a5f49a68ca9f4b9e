"""The index snapshot beside the table (issue 18): a new store object on an existing table answers its first
search from the saved index (no scan), catches up on rows committed after the snapshot, and ignores a snapshot
that belongs to another history of the table."""

from __future__ import annotations

import json
import mmap
import shutil

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from memory import MemoryConfig, MemoryStore, RetrievalConfig


def _texts(conversations, n):
    return list(dict.fromkeys(t["text"] for conv in conversations for t in conv))[:n]


def test_reopen_loads_the_snapshot_and_catches_up(tmp_path, embedder, conversations):
    texts = _texts(conversations, 120)
    path = tmp_path / "m"
    with MemoryStore(path, embedder=embedder) as s:
        ids = s.add_many([{"content": t, "session": f"c{i // 10}"} for i, t in enumerate(texts[:100])])
        expected = [h.id for h in s.search(texts[5], k=5)]
    saved = sorted(p.name for p in (path / "memories.index").iterdir())
    assert len(saved) == 1 and saved[0].startswith("v")

    with MemoryStore(path, embedder=embedder) as s:
        assert [h.id for h in s.search(texts[5], k=5)] == expected
        assert s._index.stats["builds"] == 0 and s._index.stats["snapshot_loaded"] is not None
        shutil.copytree(path / "memories.index", tmp_path / "old_snapshot")
        late = s.add_many(texts[100:120])
    # put the older snapshot back: the next process must catch up on the 20 rows committed after it
    shutil.rmtree(path / "memories.index")
    shutil.copytree(tmp_path / "old_snapshot", path / "memories.index")
    with MemoryStore(path, embedder=embedder) as s:
        assert s.search(texts[110], k=1)[0].id == late[10]
        assert s._index.stats["builds"] == 0 and s._index.stats["catch_ups"] == 1
        assert s.search(texts[5], k=1)[0].id == ids[5]


def test_snapshot_of_another_table_history_is_ignored(tmp_path, embedder, conversations):
    texts = _texts(conversations, 40)
    with MemoryStore(tmp_path / "a", embedder=embedder) as s:
        s.add_many(texts[:20])
        s.search(texts[0])  # builds the index, which close() saves
    with MemoryStore(tmp_path / "b", embedder=embedder) as s:
        b_ids = s.add_many(texts[20:40])
        s.search(texts[20])
    # b's table with a's snapshot: same version numbers, another history
    shutil.rmtree(tmp_path / "b" / "memories.index")
    shutil.copytree(tmp_path / "a" / "memories.index", tmp_path / "b" / "memories.index")
    with MemoryStore(tmp_path / "b", embedder=embedder) as s:
        assert s.search(texts[25], k=1)[0].id == b_ids[5]
        assert s._index.stats["builds"] == 1 and s._index.stats["snapshot_loaded"] is None


def _hits(store, queries):
    return [[(h.id, round(float(h.score), 5)) for h in store.search(q, k=5)] for q in queries]


# no shrinking phase: each example writes a Lance table, and a failure's own example is readable as it is
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "delete", "link"]), st.integers(0, 10**6)), max_size=6),
       ivf=st.booleans())
def test_reopened_index_answers_like_the_index_that_saved_it(tmp_path_factory, embedder, conversations, ops, ivf):
    """Round trip: after adds, deletes and link rewrites (rows Lance rewrites), a new store object on the
    snapshot gives every query the same hits and scores as the store that wrote it; flat and IVF layouts."""
    texts = _texts(conversations, 140)
    retrieval = RetrievalConfig(exact_max_rows=30, ivf_lists=4) if ivf else RetrievalConfig()
    config = MemoryConfig(retrieval=retrieval)
    path = tmp_path_factory.mktemp("roundtrip") / "m"
    queries = [texts[3], texts[77], "what do you like to do on weekends"]
    with MemoryStore(path, embedder=embedder, config=config) as s:
        ids = s.add_many([{"content": t, "session": f"c{i // 8}"} for i, t in enumerate(texts[:60])])
        s.search(texts[0])  # the index exists before the operations: they reach it by catch-up
        for n, (op, seed) in enumerate(ops):
            if op == "add":
                ids += s.add_many(texts[60 + 10 * n: 70 + 10 * n])
            elif op == "delete" and len(ids) > 1:
                s.delete(ids.pop(seed % len(ids)))
            elif op == "link" and len(ids) > 1:
                a = seed % len(ids)
                s.link(ids[a], ids[(a + 1 + seed // 7 % (len(ids) - 1)) % len(ids)], weight=0.5)
        before = _hits(s, queries)
    with MemoryStore(path, embedder=embedder, config=config) as s:
        assert _hits(s, queries) == before
        assert s._index.stats["builds"] == 0 and s._index.stats["snapshot_loaded"] is not None


def _is_mapped(array: np.ndarray) -> bool:
    """Whether ``array`` is a view of a memory map (the index wraps mapped files as plain ndarrays)."""
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


def test_snapshot_is_mapped_files_without_pickle(tmp_path, embedder, conversations):
    """The copy is JSON + .npy + Arrow IPC (nothing executable); a reopened index maps them (no copy); a
    format-1 pickle of an earlier release is ignored, and removed by the next save."""
    texts = _texts(conversations, 50)
    path = tmp_path / "m"
    with MemoryStore(path, embedder=embedder) as s:
        s.add_many(texts[:40])
        s.search(texts[0])
    (saved,) = (path / "memories.index").iterdir()
    names = sorted(p.name for p in saved.iterdir())
    assert "meta.json" in names and {"payload.arrow", "vocab.arrow", "vectors.matrix.npy"} <= set(names)
    assert all(n == "meta.json" or n.endswith((".npy", ".arrow")) for n in names), names
    meta = json.loads((saved / "meta.json").read_text())
    assert meta["format"] == 2 and meta["dim"] == 384
    (path / "memories.index" / "v1.pkl").write_bytes(b"\x80\x05 not a pickle a reader would ever open")
    with MemoryStore(path, embedder=embedder) as s:
        assert s.search(texts[7], k=1)[0].content == texts[7]
        assert _is_mapped(s._index.vectors.matrix())
        assert s._index.stats["builds"] == 0
        s.add_many(texts[40:50])  # a new version: close() saves it and removes the older copies
    assert [p.name for p in (path / "memories.index").iterdir()] == [f"v{s._index.version}"]
