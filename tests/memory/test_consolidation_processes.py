"""Two properties that need real processes: crash safety (a consolidator SIGKILLed after each journal step,
then run again, loses no memory and writes no principle twice) and concurrency (an agent process adds and
searches throughout a consolidation run: nothing lost, no error).

Children come from a ``forkserver`` that has imported lancedb and the store already (a fresh interpreter costs
~5-9 s of imports on the CI box), so each kill point is one real process killed with SIGKILL by the journal's
testing hook (``kill_at_step``: in place of record N) and one more that finishes the run; the agent is such a
process too. Principles are extractive (no LLM in the children: which LLM wrote a principle does not change the
journal's order of steps; the LLM path is tested against the real server in test_consolidation_e2e.py).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from memory import MemoryConfig, MemoryStore
from memory.consolidation import ConsolidationConfig, Consolidator
from memory.lance_io import connect

THEMES = {
    "coffee": ["I drink two cups of coffee every morning before work.",
               "Coffee after lunch keeps me awake in long meetings.",
               "Without my morning coffee I get a headache by noon.",
               "I always buy a large coffee on the way to the office."],
    "dogs": ["My dog needs a long walk every evening.",
             "We take the dog to the park on weekends to run around.",
             "The dog gets restless when we skip his walk.",
             "Walking my dog is the best part of my day."],
}
OTHER = ["The train was late again this morning.", "I finished reading a novel about pirates."]
CFG = {"similarity_threshold": 0.4, "min_cluster_size": 3, "max_clusters": 10}
STEPS = 2 + 6 * len(THEMES) + 1  # run_start, plan, 6 per cluster, run_end
# the process dies in place of record N, i.e. right after the work of record N-1: every step of the first cluster,
# the principle and archive steps of the second, and after the run log (before run_end): 12 distinct points
KILL_STEPS = [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 15]


def _consolidate(path: str, kill_at: int | None) -> None:
    store = MemoryStore(path, config=MemoryConfig(near_duplicate_threshold=None))
    Consolidator(store, None, ConsolidationConfig(kill_at_step=kill_at, **CFG)).run()
    store.close()


def _children(jobs: list[tuple[Path, int | None]], at_once: int = 3) -> list[int]:
    """Run one consolidator process per (store, kill step), a few at a time (each on its own store copy)."""
    ctx = mp.get_context("forkserver")
    codes: list[int] = []
    for start in range(0, len(jobs), at_once):
        procs = [ctx.Process(target=_consolidate, args=(str(path), kill)) for path, kill in jobs[start:start + at_once]]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(120)
            assert proc.exitcode is not None, "consolidator child hung"
            codes.append(proc.exitcode)
    return codes


def _child(path: Path, kill_at: int | None) -> int:
    return _children([(path, kill_at)])[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory, embedder) -> tuple[Path, list[str]]:
    mp.set_forkserver_preload(["memory.consolidation.consolidator", "memory.store"])
    path = tmp_path_factory.mktemp("crash") / "base"
    with MemoryStore(path, embedder=embedder, config=MemoryConfig(near_duplicate_threshold=None)) as store:
        ids = store.add_many([t for texts in THEMES.values() for t in texts] + OTHER)
    return path, ids


def _rows(path: Path) -> list[dict]:
    table = connect(path, 0.0).open_table("memories")
    return table.search().select(["id", "tier", "content", "source_ids"]).limit(None).to_arrow().to_pylist()


def _check(path: Path, original: list[str]) -> list[dict]:
    rows = _rows(path)
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "a row id appears twice"
    assert set(original) <= set(by_id), "an original memory was lost"
    principles = [r for r in rows if r["tier"] == "long"]
    sources = [tuple(sorted(p["source_ids"])) for p in principles]
    assert max(Counter(sources).values(), default=1) == 1, "a principle was written twice"
    covered = {s for p in principles for s in p["source_ids"]}
    archived = {i for i in original if by_id[i]["tier"] == "archived"}
    assert archived <= covered, "a memory was archived without a durable principle"
    assert {by_id[i]["tier"] for i in original} <= {"short", "archived"}
    return principles


@pytest.mark.slow
def test_sigkill_after_every_journal_step_then_rerun_loses_nothing(base, tmp_path):
    src, original = base
    reference = tmp_path / "reference"
    shutil.copytree(src, reference)
    assert _child(reference, None) == 0
    expected = {tuple(sorted(p["source_ids"])) for p in _check(reference, original)}
    assert len(expected) == len(THEMES)
    paths = {step: tmp_path / f"kill{step}" for step in KILL_STEPS}
    for path in paths.values():
        shutil.copytree(src, path)
    codes = _children([(path, step) for step, path in paths.items()])
    assert codes == [-signal.SIGKILL] * len(KILL_STEPS)
    points = []
    for path in paths.values():
        journal = path / "consolidation" / "journal.jsonl"
        records = journal.read_text().splitlines() if journal.exists() else []
        last = json.loads(records[-1]) if records else {"event": None}
        points.append((last["event"], last.get("cluster")))  # killed right after the work this record announced
        _check(path, original)  # the state a crash leaves is already safe
    assert len(set(points)) == len(KILL_STEPS) >= 10
    assert {event for event, _ in points} == {None, "run_start", "plan", "ask", "answer", "principle_pending",
                                              "principle_written", "archive_pending", "archived"}
    assert _children([(path, None) for path in paths.values()]) == [0] * len(KILL_STEPS)
    for step, path in paths.items():
        assert {tuple(sorted(p["source_ids"])) for p in _check(path, original)} == expected, f"killed at {step}"


@pytest.mark.slow
def test_repeated_kills_during_recovery_still_converge(base, tmp_path):
    src, original = base
    path = tmp_path / "chain"
    shutil.copytree(src, path)
    rounds = 0
    # every process, the recovering ones too, dies in place of its 4th record (a run with nothing to do writes
    # 3): twice between a principle's commit and its principle_written record (the re-link path)
    while _child(path, 4) == -signal.SIGKILL:
        _check(path, original)
        rounds += 1
        assert rounds < 20
    assert rounds == 7
    assert len(_check(path, original)) == len(THEMES)


AGENT_TEXTS = [f"{theme} note {i}: {text}" for i in range(6) for theme, texts in THEMES.items() for text in texts]


def _agent(path: str, vectors: np.ndarray, started: Any, stop: Any, out: str) -> None:
    """Add one memory and search after each add until told to stop; each id is logged once committed."""
    store = MemoryStore(path)  # the defaults an agent runs with (near-duplicate links, session links)
    with open(out, "w") as log:
        i = 0
        while not stop.is_set() or i < 5:
            vec = vectors[i % len(vectors)]
            (mid,) = store.add_many([{"content": AGENT_TEXTS[i % len(AGENT_TEXTS)], "embedding": vec,
                                      "session": "agent"}])
            hits = store.search(vec, k=5, mode="vector")
            assert hits and hits[0].similarity > 0.99, hits  # it finds what it just wrote
            log.write(f"{time.time()} {mid} {len(hits)}\n")
            log.flush()
            started.set()
            i += 1
    store.close()


class SlowEchoLLM:
    """A deterministic LLM client (the protocol's two members) that takes its time: the first note is the principle."""

    name = "slow-echo"

    def chat(self, messages: list[dict[str, str]]) -> str:
        time.sleep(0.6)  # an LLM call is slow; the agent must not wait for it
        first = messages[-1]["content"].split("\n- ", 1)[1].split("\n")[0]
        return json.dumps({"principles": [first]})


@pytest.mark.slow
def test_the_agent_adds_and_searches_throughout_a_run(base, tmp_path, embedder):
    src, original = base
    path = tmp_path / "shared"
    shutil.copytree(src, path)
    vectors = embedder.encode(AGENT_TEXTS)
    ctx = mp.get_context("forkserver")
    started, stop = ctx.Event(), ctx.Event()
    log = tmp_path / "agent.log"
    agent = ctx.Process(target=_agent, args=(str(path), vectors, started, stop, str(log)))
    agent.start()
    assert started.wait(120)
    store = MemoryStore(path, embedder=embedder, config=MemoryConfig(near_duplicate_threshold=None))
    t0 = time.time()
    report = Consolidator(store, SlowEchoLLM(), ConsolidationConfig(**CFG)).run()
    t1 = time.time()
    time.sleep(0.3)
    stop.set()
    agent.join(120)
    assert agent.exitcode == 0
    entries = [line.split() for line in log.read_text().splitlines()]
    during = [e for e in entries if t0 <= float(e[0]) <= t1]
    assert len(during) >= 3, f"only {len(during)} agent writes overlapped the {t1 - t0:.2f} s run"
    agent_ids = [e[1] for e in entries]
    assert len(set(agent_ids)) == len(agent_ids)
    principles = _check(path, original + agent_ids)  # every original and every agent memory is there
    assert report.principles == len(principles) >= len(THEMES) and report.archived >= 8
    assert report.llm_calls == report.clusters and t1 - t0 >= 0.6 * report.clusters
    rows = {r["id"]: r for r in _rows(path)}
    assert set(rows) == set(original) | set(agent_ids) | set(report.principle_ids)
    store.close()
