"""Hot/cold classification and batched access statistics.

A memory is *hot* when it was created or read within ``hot_window_s`` (recency, the LRU signal) or when its
TF-IDF salience is in the top quantile (a rare, specific memory stays hot even if nobody read it lately).
Reads are recorded in an :class:`AccessBuffer` and written in one merge per flush, never one write per read.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["AccessBuffer", "TierChange", "hot_mask", "tfidf_salience"]

_TOKEN = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class TierChange:
    """One logged tier change: which memory, from and to which tier, why, and when."""

    id: str
    from_tier: str
    to_tier: str
    reason: str
    at: float


class AccessBuffer:
    """Access counts and last-access times gathered in memory until a flush is due.

    ``record`` is thread-safe and cheap; ``drain`` hands the pending records over (the caller writes them and
    puts them back with ``restore`` if the write fails, so a failed flush loses nothing).
    """

    def __init__(self, flush_every: int, flush_seconds: float) -> None:
        self._flush_every = flush_every
        self._flush_seconds = flush_seconds
        self._pending: dict[str, tuple[int, float]] = {}
        self._inflight: dict[str, tuple[int, float]] = {}  # drained, not yet committed: still seen by reads
        self._lock = threading.Lock()
        self._since = time.monotonic()

    def __len__(self) -> int:
        return len(self._pending)

    def record(self, ids: Iterable[str], at: float | None = None) -> None:
        """Count one access for each id at time ``at`` (now by default)."""
        at = time.time() if at is None else at
        with self._lock:
            for mid in ids:
                count, last = self._pending.get(mid, (0, 0.0))
                self._pending[mid] = (count + 1, max(last, at))

    def due(self) -> bool:
        """True when enough records are pending or the flush interval has passed."""
        if not self._pending:
            return False
        return len(self._pending) >= self._flush_every or time.monotonic() - self._since >= self._flush_seconds

    def drain(self) -> dict[str, tuple[int, float]]:
        """Take every pending record (id -> (count delta, last access))."""
        with self._lock:
            pending, self._pending = self._pending, {}
            self._inflight = pending
            self._since = time.monotonic()
        return pending

    def settle(self) -> None:
        """The drained records are committed: reads now find them in the table."""
        with self._lock:
            self._inflight = {}

    def restore(self, pending: dict[str, tuple[int, float]]) -> None:
        """Put records back after a failed write."""
        with self._lock:
            self._inflight = {}
            for mid, (count, last) in pending.items():
                c0, l0 = self._pending.get(mid, (0, 0.0))
                self._pending[mid] = (c0 + count, max(l0, last))

    def pending_for(self, mid: str) -> tuple[int, float]:
        """Not-yet-committed (count, last access) for one id, so reads see their own accesses."""
        with self._lock:
            c0, l0 = self._pending.get(mid, (0, 0.0))
            c1, l1 = self._inflight.get(mid, (0, 0.0))
        return c0 + c1, max(l0, l1)


def tfidf_salience(texts: Sequence[str]) -> np.ndarray:
    """Per-document salience: the mean of its three highest TF-IDF term weights (0 for empty text).

    idf = log(N / df); tf is the term's share of the document. Rare, specific terms make a memory salient.
    """
    docs = [Counter(_TOKEN.findall(t.lower())) for t in texts]
    df: Counter[str] = Counter()
    for doc in docs:
        df.update(doc.keys())
    n = max(len(docs), 1)
    out = np.zeros(len(docs), dtype=np.float32)
    for i, doc in enumerate(docs):
        total = sum(doc.values())
        if not total:
            continue
        weights = sorted((c / total * math.log(n / df[w]) for w, c in doc.items()), reverse=True)
        out[i] = float(np.mean(weights[:3]))
    return out


def hot_mask(
    created_at: np.ndarray,
    last_access: np.ndarray,
    salience: np.ndarray,
    now: float,
    hot_window_s: float,
    salience_quantile: float,
) -> np.ndarray:
    """Boolean mask of hot memories: recent (created or accessed within the window) or salient."""
    recency = np.maximum(created_at, last_access)
    recent = now - recency <= hot_window_s
    if len(salience) == 0:
        return recent
    threshold = float(np.quantile(salience, salience_quantile))
    return recent | (salience >= threshold) & (salience > 0)
