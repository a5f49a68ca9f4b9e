"""``Consolidator``: hot short-term memories -> clusters -> principles in the long tier -> sources archived.

Order of every cluster, each step journaled first (:mod:`memory.consolidation.journal`): ask the LLM (at most
one answered call per cluster; transport errors retried with backoff), check the answer
(:mod:`memory.consolidation.validation`), write each principle as a ``long`` memory with ``source_ids`` and
``consolidated`` links to its sources, and only once it is committed move the sources to ``archived`` (or delete
them, ``source_policy="delete"``). A principle's id is derived from the run id, the cluster's sorted source ids
and its position, and checked in the store before it is written, so a run resumed after a crash (the next
``run()`` finishes interrupted runs first) never writes a principle twice and never archives a source whose
principle is not durable. A rejected answer writes nothing and archives nothing; the reason is logged, journaled
and kept in the run log.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from memory.consolidation.clustering import cluster_by_similarity
from memory.consolidation.config import ConsolidationConfig
from memory.consolidation.errors import JournalError, LLMRequestError, LLMUnavailableError
from memory.consolidation.journal import Journal, RunState, pending_runs, reset_journal
from memory.consolidation.llm import LLMClient, call_with_retry
from memory.consolidation.prompt import build_messages
from memory.consolidation.runlog import RunReport, append_run, open_if_exists, read_runs
from memory.consolidation.selection import CONSOLIDATED, SCAN_COLUMNS, select_hot
from memory.consolidation.validation import Verdict, check_answer
from memory.lance_io import connect
from memory.retrieval import quote
from memory.store import MemoryStore

__all__ = ["Consolidator", "principle_id"]

logger = logging.getLogger(__name__)


def principle_id(run_id: str, source_ids: list[str], position: int) -> str:
    """The id of a cluster's ``position``-th principle: a hash of the run and the sorted source ids."""
    key = "\0".join([run_id, *sorted(source_ids), str(position)])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _cluster_key(source_ids: list[str]) -> str:
    return hashlib.sha256("\0".join(sorted(source_ids)).encode()).hexdigest()[:16]


class Consolidator:
    """Consolidates ``store``'s hot short-term memories with ``llm`` (None: extractive principles only).

    Meant for its own process (``arrowengine memory consolidate``): the agent keeps adding and searching, the
    store's commits retry on conflicts, and a ``flock`` keeps two consolidations of one store apart.
    """

    def __init__(self, store: MemoryStore, llm: LLMClient | None = None,
                 config: ConsolidationConfig | None = None) -> None:
        self.store = store
        self.llm = llm
        self.config = config or ConsolidationConfig()
        directory = self.config.journal_dir
        if directory is None:
            if not isinstance(store.path, Path):
                raise JournalError(f"store {store.path!r} is an object-store URI; set "
                                   "memory.consolidation.journal_dir to a local directory for the journal")
            directory = store.path / "consolidation"
        self.journal = Journal(directory, self.config.kill_at_step)
        self._db = connect(store.path, 0.0)  # read consistency 0: sees the agent's commits at once
        self._llm_down = False

    # ------------------------------------------------------------------ reads
    def _table(self) -> Any | None:
        return open_if_exists(self._db, self.store.config.table)

    def _scan(self) -> pa.Table | None:
        """The short tier's rows (only they can be consolidated)."""
        table = self._table()
        if table is None:
            return None
        return table.search().where("tier = 'short'").select(SCAN_COLUMNS).limit(None).to_arrow()

    def _fetch(self, ids: list[str], columns: list[str]) -> dict[str, dict[str, Any]]:
        table = self._table()
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 1000):
            where = f"id IN ({', '.join(quote(i) for i in ids[start:start + 1000])})"
            rows = table.search().where(where).select(columns).limit(None).to_arrow().to_pylist()
            out.update({r["id"]: r for r in rows})
        return out

    def _measure(self) -> tuple[int, int]:
        """(short-tier rows, active bytes): UTF-8 content + float32 embedding of the short and long tiers."""
        table = self._table()
        if table is None:
            return 0, 0
        rows = table.search().select(["tier", "content"]).limit(None).to_arrow().to_pylist()
        active = [r for r in rows if r["tier"] != "archived"]
        dim = self.store.dim or 0
        return (sum(r["tier"] == "short" for r in rows),
                sum(len(r["content"].encode()) + 4 * dim for r in active))

    # ------------------------------------------------------------------ the run
    def run(self, now: float | None = None) -> RunReport | None:
        """Finish interrupted runs, then consolidate once; returns the new run's report (None when another
        consolidation of this store holds the lock)."""
        with self.journal.locked() as mine:
            if not mine:
                logger.warning("consolidation of %s skipped: another consolidation is running", self.store.path)
                return None
            for state in pending_runs(self.journal.records()):
                self._resume(state)
            reset_journal(self.journal)
            return self._run_new(time.time() if now is None else now)

    def _new_report(self, run_id: str, status: str) -> RunReport:
        short, nbytes = self._measure()
        return RunReport(run_id, status=status, started_at=time.time(), short_before=short, bytes_before=nbytes,
                         llm=getattr(self.llm, "name", "extractive") if self.llm is not None else "extractive")

    def _run_new(self, now: float) -> RunReport:
        cfg = self.config
        run_id = uuid.uuid4().hex[:16]
        report = self._new_report(run_id, "ok")
        self.journal.append(run_id, "run_start")
        rows = self._scan()
        plan: list[dict[str, Any]] = []
        if rows is not None:
            report.scanned = rows.num_rows
            hot = select_hot(rows, now, hot_window_s=cfg.hot_window_s, salience_quantile=cfg.salience_quantile,
                             min_access_count=cfg.min_access_count, max_memories=cfg.max_memories)
            report.selected = len(hot.ids)
            groups = cluster_by_similarity(hot.vectors, cfg.similarity_threshold, cfg.min_cluster_size,
                                           cfg.max_cluster_size, cfg.max_clusters)
            plan = [{"key": _cluster_key(ids), "ids": sorted(ids)} for ids in
                    ([hot.ids[i] for i in group] for group in groups)]
        logger.info("consolidation %s: %d memories scanned, %d hot, %d clusters", run_id, report.scanned,
                    report.selected, len(plan))
        self.journal.append(run_id, "plan", clusters=plan)
        return self._execute(RunState(run_id, plan=plan), report)

    def _resume(self, state: RunState) -> None:
        if state.plan is None:  # killed before the plan: nothing was written
            report = self._new_report(state.run, "abandoned")
            self._finish(report)
            logger.warning("consolidation %s was interrupted before its plan; nothing to finish", state.run)
            return
        logger.warning("consolidation %s was interrupted; finishing it (%d of %d clusters done)", state.run,
                       len(state.archived), len(state.plan))
        self._execute(state, self._new_report(state.run, "recovered"))

    def _execute(self, state: RunState, report: RunReport) -> RunReport:
        cfg = self.config
        plan = state.plan or []
        report.clusters = len(plan)
        report.clustered = sum(len(c["ids"]) for c in plan)
        todo = [c for c in plan if c["key"] not in state.archived]
        rows = self._fetch(sorted({i for c in todo for i in c["ids"]}), ["id", "content", "embedding"])
        for cluster in todo:
            key = cluster["key"]
            present = [i for i in cluster["ids"] if i in rows]  # the agent may have deleted some meanwhile
            answer = state.answers.get(key)
            if answer is None:
                if len(present) < cfg.min_cluster_size:
                    verdict, method = Verdict(reason="sources deleted meanwhile"), "none"
                else:
                    self.journal.append(state.run, "ask", cluster=key)
                    verdict, method = self._ask([rows[i]["content"] for i in present],
                                                np.asarray([rows[i]["embedding"] for i in present], np.float32),
                                                report)
                answer = {"principles": list(verdict.principles), "reason": verdict.reason, "method": method}
                self.journal.append(state.run, "answer", cluster=key, **answer)
            if answer["reason"] is not None:
                report.rejected += 1
                report.reasons.append({"cluster": key, "reason": answer["reason"]})
                logger.warning("consolidation %s: cluster %s (%d memories) rejected: %s; nothing written or "
                               "archived", state.run, key, len(cluster["ids"]), answer["reason"])
                continue
            for position, text in enumerate(answer["principles"]):
                pid = principle_id(state.run, cluster["ids"], position)
                if pid not in state.written:
                    self.journal.append(state.run, "principle_pending", id=pid, cluster=key)
                    self._write_principle(pid, text, present, rows, answer["method"], state.run, key)
                    self.journal.append(state.run, "principle_written", id=pid, cluster=key)
                report.principles += 1
                report.principle_ids.append(pid)
            self.journal.append(state.run, "archive_pending", cluster=key)
            moved = self._retire(present)
            self.journal.append(state.run, "archived", cluster=key, count=moved)
            report.archived += moved
        self._finish(report)
        return report

    # ------------------------------------------------------------------ steps
    def _ask(self, texts: list[str], vectors: np.ndarray, report: RunReport) -> tuple[Verdict, str]:
        cfg = self.config
        centroid = vectors.mean(axis=0)
        if self.llm is not None and not self._llm_down:
            messages = build_messages(texts)

            def failed(_exc: Exception) -> None:
                report.llm_failures += 1

            try:
                answer = call_with_retry(lambda: self.llm.chat(messages), cfg.llm.retries, cfg.llm.backoff_s,
                                         on_failure=failed)
            except LLMUnavailableError as exc:
                if not cfg.llm.fallback_extractive:
                    return Verdict(reason=f"LLM unavailable ({exc})"), "llm"
                self._llm_down = True
                logger.warning("LLM unavailable (%s); extractive principles for the rest of this run", exc)
            except LLMRequestError as exc:
                report.llm_failures += 1
                return Verdict(reason=f"LLM refused the request ({exc})"), "llm"
            else:
                report.llm_calls += 1
                verdict = check_answer(answer, texts, centroid, self.store.embed, max_principles=cfg.max_principles,
                                       min_relevance=cfg.min_relevance)
                report.repaired += verdict.repaired
                return verdict, "llm"
        report.extractive += 1
        medoid = int(np.argmax(vectors @ centroid))  # the source closest to the cluster's centre
        return Verdict(principles=(texts[medoid],)), "extractive"

    def _write_principle(self, pid: str, text: str, sources: list[str], rows: dict[str, dict[str, Any]],
                         method: str, run_id: str, key: str) -> None:
        weight = self.config.link_weight
        if self._fetch([pid], ["id"]):  # written before a crash; its back-links may be missing: add them again
            for source in self._fetch(sources, ["id"]):  # the agent may have deleted some meanwhile
                self.store.link(pid, source, weight, CONSOLIDATED)
            return
        if method == "extractive":  # the principle is a source's text: reuse its embedding
            vector = next(np.asarray(rows[s]["embedding"], np.float32) for s in sources if rows[s]["content"] == text)
        else:
            vector = self.store.embed([text])[0]
        self.store.add_many([{
            "id": pid, "content": text, "tier": "long", "source_ids": sorted(sources), "importance": 0.8,
            "embedding": vector, "links": [(s, weight, CONSOLIDATED) for s in sources],
            "metadata": {"kind": "principle", "run": run_id, "cluster": key, "method": method,
                         "llm": getattr(self.llm, "name", None) if method == "llm" else None},
        }])

    def _retire(self, sources: list[str]) -> int:
        if self.config.source_policy == "delete":
            existing = list(self._fetch(sources, ["id"]))
            for mid in existing:
                self.store.delete(mid)
            return len(existing)
        return self.store.set_tier(sources, "archived")

    def _finish(self, report: RunReport) -> None:
        report.short_after, report.bytes_after = self._measure()
        report.duration_s = time.time() - report.started_at
        if not any(r["run_id"] == report.run_id for r in read_runs(self._db)):
            append_run(self._db, report, self.store.config.commit_retries)
        self.journal.append(report.run_id, "run_end", status=report.status)
        logger.info("consolidation %s %s: %d clusters, %d principles, %d archived, %d rejected, %d LLM calls "
                    "(%d failures), short tier %d -> %d, %.1f s", report.run_id, report.status, report.clusters,
                    report.principles, report.archived, report.rejected, report.llm_calls, report.llm_failures,
                    report.short_before, report.short_after, report.duration_s)
