"""When consolidation runs: APScheduler's cron trigger (nightly) and a storage-pressure check on an interval.

:class:`ConsolidationDaemon` owns one APScheduler ``BackgroundScheduler`` with both jobs (one run at a time,
missed runs coalesced); ``arrowengine memory consolidate --daemon`` blocks on it. The pressure check reads
row counts and the table's bytes on disk (no full scan) and fires when any configured threshold is crossed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memory.consolidation.config import TriggerConfig
from memory.consolidation.runlog import open_if_exists
from memory.lance_io import connect

__all__ = ["ConsolidationDaemon", "nightly_trigger", "storage_pressure"]

logger = logging.getLogger(__name__)


def nightly_trigger(config: TriggerConfig) -> Any:
    """The cron trigger: every day at ``cron_hour:cron_minute`` in ``timezone`` (local time when None)."""
    from apscheduler.triggers.cron import CronTrigger

    return CronTrigger(hour=config.cron_hour, minute=config.cron_minute, timezone=config.timezone)


def storage_pressure(store_path: Path | str, config: TriggerConfig, table: str = "memories") -> str | None:
    """Why the store is under pressure (``"rows 120 > 100"``...), or None when no threshold is crossed."""
    t = open_if_exists(connect(store_path, 0.0), table)
    if t is None:
        return None
    rows = t.count_rows()
    if config.max_rows is not None and rows > config.max_rows:
        return f"rows {rows} > {config.max_rows}"
    if config.max_short_fraction is not None and rows:
        short = t.count_rows("tier = 'short'")
        if short / rows > config.max_short_fraction:
            return f"short tier {short / rows:.2f} > {config.max_short_fraction}"
    if config.max_bytes is not None and isinstance(store_path, Path):
        size = sum(p.stat().st_size for p in (store_path / f"{table}.lance").rglob("*") if p.is_file())
        if size > config.max_bytes:
            return f"bytes {size} > {config.max_bytes}"
    return None


class ConsolidationDaemon:
    """Runs ``consolidate()`` nightly and whenever the store at ``store_path`` is under pressure.

    ``start()`` / ``stop()``; ``wait()`` blocks until stopped (the CLI's ``--daemon``). ``consolidate`` is
    called on the scheduler's worker thread, one call at a time.
    """

    def __init__(self, store_path: Path | str, consolidate: Callable[[str], Any], config: TriggerConfig,
                 table: str = "memories") -> None:
        from apscheduler.schedulers.background import BackgroundScheduler
        from apscheduler.triggers.interval import IntervalTrigger

        self.store_path, self.config, self.table = store_path, config, table
        self._consolidate = consolidate
        self._run_lock = threading.Lock()
        self._stopped = threading.Event()
        self.scheduler = BackgroundScheduler(timezone=config.timezone) if config.timezone else BackgroundScheduler()
        self.scheduler.add_job(self._fire, nightly_trigger(config), args=["nightly"], id="nightly",
                               coalesce=True, max_instances=1, misfire_grace_time=3600)
        if any(v is not None for v in (config.max_rows, config.max_bytes, config.max_short_fraction)):
            self.scheduler.add_job(self._check_pressure, IntervalTrigger(seconds=config.pressure_interval_s),
                                   id="pressure", coalesce=True, max_instances=1)

    def _fire(self, reason: str) -> None:
        with self._run_lock:
            logger.info("consolidation triggered: %s", reason)
            try:
                self._consolidate(reason)
            except Exception:  # the daemon outlives one failed run; the journal lets the next one finish it
                logger.exception("consolidation (%s) failed; the next trigger resumes it", reason)

    def _check_pressure(self) -> None:
        reason = storage_pressure(self.store_path, self.config, self.table)
        if reason is not None:
            self._fire(f"storage pressure: {reason}")

    def next_fire_times(self) -> dict[str, Any]:
        """Each job's next fire time (timezone-aware datetimes)."""
        return {job.id: job.next_run_time for job in self.scheduler.get_jobs()}

    def start(self) -> ConsolidationDaemon:
        """Start the scheduler's thread."""
        self.scheduler.start()
        logger.info("consolidation daemon for %s: next runs %s", self.store_path, self.next_fire_times())
        return self

    def stop(self) -> None:
        """Stop scheduling and wait for a running consolidation to finish."""
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self._stopped.set()

    def wait(self) -> None:
        """Block until :meth:`stop` (or Ctrl-C, which stops)."""
        try:
            while not self._stopped.wait(1.0):
                pass
        except KeyboardInterrupt:
            self.stop()
