"""Several processes on one store (no lost writes), commit-conflict retry, and crash recovery."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from memory import CommitConflictError, MemoryConfig, MemoryStore
from memory.lance_io import commit_with_retry

_CFG = {"near_duplicate_threshold": None}
# per writer: 20 appends of 25 (two writers' 40 commits race each other and the searcher; 40 each took ~50 s
# of a 2-core CI worker)
WRITES, BATCH = 500, 25


def _writer(path: str, vectors: np.ndarray, tag: str, out: str) -> None:
    rng = np.random.default_rng(abs(hash(tag)) % 2**32)
    store = MemoryStore(path, config=MemoryConfig(**_CFG))
    with open(out, "w") as f:
        for start in range(0, WRITES, BATCH):
            items = []
            for i in range(start, min(start + BATCH, WRITES)):
                vec = vectors[i % len(vectors)] + rng.normal(0, 0.01, vectors.shape[1]).astype(np.float32)
                items.append({"content": f"{tag} message {i}", "session": tag, "embedding": vec})
            for mid in store.add_many(items):
                f.write(mid + "\n")
            f.flush()  # an id reaches the file only after its append committed
    store.close()


def _searcher(path: str, vectors: np.ndarray, ready: mp.Event, stop: mp.Event, out: str) -> None:
    while not Path(path, "memories.lance").exists():
        time.sleep(0.05)
    store = MemoryStore(path, config=MemoryConfig(**_CFG))
    store.search(vectors[0], k=5, mode="vector")  # index built before the writers start
    ready.set()
    searches = 0
    while not stop.is_set():
        if len(store):
            store.search(vectors[searches % len(vectors)], k=5, mode="vector")
            searches += 1
    Path(out).write_text(str(searches))


@pytest.fixture(scope="module")
def vectors(embedder, conversations):
    texts = list(dict.fromkeys(t["text"] for conv in conversations[:40] for t in conv))[:200]
    return embedder.encode(texts)


@pytest.mark.slow
def test_two_writers_and_a_searcher_lose_nothing(tmp_path, vectors):
    path = str(tmp_path / "mem")
    MemoryStore(path, config=MemoryConfig(**_CFG)).add("seed", embedding=vectors[0])  # table exists up front
    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Event()
    outs = [str(tmp_path / f"{n}.ids") for n in ("a", "b")]
    writers = [ctx.Process(target=_writer, args=(path, vectors, tag, out)) for tag, out in zip("ab", outs,
                                                                                                    strict=True)]
    searcher = ctx.Process(target=_searcher, args=(path, vectors, ready, stop, str(tmp_path / "searches")))
    searcher.start()
    assert ready.wait(timeout=300)  # a spawned searcher can take longer to start than the writers to finish
    for p in writers:
        p.start()
    for p in writers:
        p.join(timeout=300)
        assert p.exitcode == 0
    stop.set()
    searcher.join(timeout=60)
    assert searcher.exitcode == 0 and int((tmp_path / "searches").read_text()) > 0
    ids = [line for out in outs for line in Path(out).read_text().split()]
    assert len(ids) == len(set(ids)) == 2 * WRITES
    store = MemoryStore(path, config=MemoryConfig(**_CFG))
    assert len(store) == 2 * WRITES + 1
    assert set(ids) <= set(store._rows_by_id(ids, ["id"]))


def test_commit_retry_then_give_up():
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("lance error: Retryable commit conflict for version 7")
        return "ok"

    assert commit_with_retry(flaky, "append", retries=5) == "ok" and len(calls) == 3

    def always() -> None:
        raise RuntimeError("Commit conflict for version 9")

    with pytest.raises(CommitConflictError) as err:
        commit_with_retry(always, "append 3 memories", retries=2)
    assert str(err.value) == (
        "append 3 memories still conflicted with concurrent writers after 2 retries (Commit conflict for "
        "version 9); raise MemoryConfig.commit_retries or reduce concurrent writers")
    with pytest.raises(ValueError, match="bad schema value"):  # other errors pass straight through
        commit_with_retry(lambda: (_ for _ in ()).throw(ValueError("bad schema value")), "x", retries=3)


def test_half_written_version_is_recovered(tmp_path, embedder, caplog):
    path = tmp_path / "mem"
    with MemoryStore(path, embedder=embedder) as s:
        ids = s.add_many(["first memory", "second memory", "third memory"])
    versions = tmp_path / "mem" / "memories.lance" / "_versions"
    newest = min(versions.glob("*.manifest"), key=lambda p: int(p.stem))  # V2 names count down
    # a crash mid-commit: the next version's manifest holds half of a valid manifest's bytes
    torn = versions / f"{int(newest.stem) - 1}.manifest"
    torn.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="memory.lance_io"):
        store = MemoryStore(path, embedder=embedder)
    assert len(store) == 3 and store.get(ids[1]).content == "second memory"
    assert (versions.parent / "_quarantine" / torn.name).is_file() and not torn.exists()
    assert any("latest version unreadable" in r.getMessage() for r in caplog.records)
    store.add("writes continue after recovery")
    assert len(store) == 4


def _endless_writer(path: str, vectors: np.ndarray, out: str) -> None:
    store = MemoryStore(path, config=MemoryConfig(**_CFG))
    with open(out, "w") as f:
        for i in range(10**6):
            for mid in store.add_many([{"content": f"m{i}-{j}", "embedding": vectors[(i + j) % len(vectors)]}
                                       for j in range(20)]):
                f.write(mid + "\n")
            f.flush()


@pytest.mark.slow
def test_writer_killed_mid_write_loses_no_committed_memory(tmp_path, vectors):
    path = str(tmp_path / "mem")
    out = str(tmp_path / "ids")
    proc = mp.get_context("spawn").Process(target=_endless_writer, args=(path, vectors, out))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and (not os.path.exists(out) or len(Path(out).read_text().split()) < 200):
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    committed = Path(out).read_text().split()
    assert len(committed) >= 200
    store = MemoryStore(path, config=MemoryConfig(**_CFG))
    present = set(store._rows_by_id(committed, ["id"]))
    assert set(committed) <= present and len(store) >= len(committed)
    store.add("alive", embedding=vectors[0])
