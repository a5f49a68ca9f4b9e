"""The index snapshot beside the table (issue 18): a new store object on an existing table answers its first
search from the saved index (no scan), catches up on rows committed after the snapshot, and ignores a snapshot
that belongs to another history of the table."""

from __future__ import annotations

import shutil

from memory import MemoryStore


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
