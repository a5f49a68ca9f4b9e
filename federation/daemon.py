"""``SyncDaemon``: one named background thread that syncs a node's working card with the server periodically.

The node's trainer writes its card to ``<dir>/<adapter>.local.parquet``; the daemon keeps the last version it
got from the server in ``<dir>/<adapter>.base.parquet``. Each tick syncs local against base and writes the
merged card to both (the trainer continues from it). A failed tick is retried with exponential backoff and
full jitter; every attempt lands in the sync log (``<dir>/synclog``).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from pathlib import Path

from federation.card import LoRACard
from federation.client import ClientConfig, SyncClient, SyncResult
from federation.delta import ErrorFeedback
from federation.errors import FederationError
from federation.synclog import SyncLog

__all__ = ["DaemonConfig", "SyncDaemon"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonConfig:
    """Schedule of a :class:`SyncDaemon`: a sync every ``interval_s``; a failure retried after
    ``uniform(0, min(backoff_max_s, backoff_s * 2**attempt))`` seconds, at most ``max_retries`` times per tick."""

    adapter: str
    directory: str | os.PathLike[str]
    interval_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    mode: str = "delta"
    samples: int = 1


class SyncDaemon:
    """Periodic sync of one adapter; ``start()`` / ``stop()``, or ``run_once()`` for a single sync."""

    def __init__(self, config: DaemonConfig, client: ClientConfig) -> None:
        self.config = config
        self.directory = Path(config.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.client_config = client
        self.log = SyncLog(self.directory / "synclog")
        self.feedback = ErrorFeedback()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    @property
    def base_path(self) -> Path:
        """The last card received from the server."""
        return self.directory / f"{self.config.adapter}.base.parquet"

    @property
    def local_path(self) -> Path:
        """The card the node's trainer writes."""
        return self.directory / f"{self.config.adapter}.local.parquet"

    def run_once(self) -> SyncResult | LoRACard:
        """One sync: pull when there is no base yet, else sync local against base. Returns the result (or the
        pulled card) and writes the merged card to both files."""
        with SyncClient(self.client_config, self.log) as client:
            if not self.base_path.is_file():
                card = client.pull(self.config.adapter)
                card.save(self.base_path)
                card.save(self.local_path)
                return card
            base = LoRACard.load(self.base_path)
            local = LoRACard.load(self.local_path) if self.local_path.is_file() else base
            result = client.sync(local, base, samples=self.config.samples, mode=self.config.mode,
                                 feedback=self.feedback)
            result.card.save(self.base_path)
            result.card.save(self.local_path)
            logger.info("sync daemon: %s -> v%d (%s, %d B sent, %d B received)", self.config.adapter,
                        result.card.meta.version, result.status, result.bytes_sent, result.bytes_received)
            return result

    def run_with_retries(self) -> SyncResult | LoRACard | None:
        """:meth:`run_once`, retried with backoff and jitter; None when every attempt failed (or stopped)."""
        for attempt in range(self.config.max_retries + 1):
            try:
                return self.run_once()
            except FederationError as exc:
                delay = self._rng.uniform(0, min(self.config.backoff_max_s, self.config.backoff_s * 2 ** attempt))
                logger.warning("sync daemon: attempt %d of %d failed (%s); retrying in %.1f s", attempt + 1,
                               self.config.max_retries + 1, exc, delay)
                if attempt == self.config.max_retries or self._stop.wait(delay):
                    break
        return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_with_retries()
            self._stop.wait(self.config.interval_s)

    def start(self) -> None:
        """Start the background thread (a daemon thread: it never keeps the process alive)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=f"sync-daemon-{self.config.adapter}", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Block until the thread ends (after :meth:`stop`, or never for a healthy daemon: Ctrl-C ends it)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(1.0)

    def stop(self, timeout: float | None = 10.0) -> None:
        """Ask the thread to stop and wait for it (a sync in flight finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
