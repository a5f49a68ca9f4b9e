"""The consolidation journal: an append-only JSON-lines file, each record fsynced before the step it names.

Location: ``<store>/consolidation/journal.jsonl`` (or ``ConsolidationConfig.journal_dir``). A record is one line
``{"n", "run", "event", "at", ...}``; a line torn by a crash is the last one and is skipped when read. Records
of one run, in order: ``run_start``, ``plan`` (the clusters: fixed from here on), then per cluster ``ask``,
``answer`` (the principles, or the reason they were rejected), per principle ``principle_pending`` and
``principle_written``, then ``archive_pending`` and ``archived``; finally ``run_end``. The next run reads it
back (:func:`pending_runs`) and finishes whatever a crash interrupted. A ``flock`` on ``lock`` keeps two
consolidations of one store from running at once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.consolidation.errors import JournalError

__all__ = ["Journal", "RunState", "pending_runs", "reset_journal"]

logger = logging.getLogger(__name__)


@dataclass
class RunState:
    """What the journal says about one run: its plan and how far each cluster got."""

    run: str
    plan: list[dict[str, Any]] | None = None
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # cluster key -> answer record
    written: set[str] = field(default_factory=set)  # principle ids
    archived: set[str] = field(default_factory=set)  # cluster keys
    ended: bool = False
    started_at: float = 0.0


class Journal:
    """Appends fsynced records; ``kill_at`` (a testing hook) SIGKILLs the process in place of writing record
    number ``kill_at`` of this process, i.e. right after the step the record before it announced."""

    def __init__(self, directory: Path, kill_at: int | None = None) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"consolidation journal directory {str(self.directory)!r} cannot be created "
                               f"({exc.strerror}); set memory.consolidation.journal_dir to a writable directory"
                               ) from exc
        self.path = self.directory / "journal.jsonl"
        self._kill_at = kill_at
        self._written = 0

    def append(self, run: str, event: str, **data: Any) -> None:
        """Write one record and fsync it; returns once it is durable."""
        self._written += 1
        if self._kill_at is not None and self._written >= self._kill_at:
            # in place of this record: right after the work the previous record announced, the riskiest moment
            logger.warning("journal: kill_at_step=%d reached (before %s); SIGKILL (testing hook)", self._kill_at,
                           event)
            os.kill(os.getpid(), signal.SIGKILL)
        record = {"n": self._written, "run": run, "event": event, "at": time.time(), **data}
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        logger.debug("journal %s: %s", run, event)

    def records(self) -> list[dict[str, Any]]:
        """Every readable record in order (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                logger.warning("journal %s: skipping a torn record (a crash while writing it)", self.path)
        return out

    @contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the journal's lock while the block runs; yields False (not waiting) when another process holds it."""
        with open(self.directory / "lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def pending_runs(records: list[dict[str, Any]]) -> list[RunState]:
    """The runs that started and never ended, in order, with how far they got."""
    runs: dict[str, RunState] = {}
    for rec in records:
        state = runs.setdefault(rec["run"], RunState(rec["run"]))
        event = rec["event"]
        if event == "run_start":
            state.started_at = rec["at"]
        elif event == "plan":
            state.plan = rec["clusters"]
        elif event == "answer":
            state.answers[rec["cluster"]] = rec
        elif event == "principle_written":
            state.written.add(rec["id"])
        elif event == "archived":
            state.archived.add(rec["cluster"])
        elif event == "run_end":
            state.ended = True
    return [s for s in runs.values() if not s.ended]


def reset_journal(journal: Journal) -> None:
    """Empty the journal when every run in it has ended (their figures are in the run log), atomically."""
    if journal.path.exists() and not pending_runs(journal.records()):
        tmp = journal.path.with_suffix(".tmp")
        tmp.write_text("", encoding="utf-8")
        os.replace(tmp, journal.path)
