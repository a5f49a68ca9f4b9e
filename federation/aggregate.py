"""``RoundAggregator``: sample-weighted FedAvg of the contributions of one round, merged into a new version.

A round is every contribution made against the current version of an adapter. It closes when ``round_size``
nodes have contributed, or ``round_timeout_s`` after the first waiter arrived (with whoever is there). The
merged update is sent back as one delta encoded with ``broadcast`` (error feedback on the server: what it
leaves out goes into the next round's broadcast); the new version is ``current + that delta`` exactly, so
every node that applies the broadcast holds the server's card bit for bit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from federation.card import LoRACard
from federation.delta import Delta, DeltaConfig, ErrorFeedback, apply_delta, encode_delta
from federation.store import CardStore

__all__ = ["RoundAggregator", "RoundResult"]

logger = logging.getLogger(__name__)

_KEEP_RESULTS = 8  # finished rounds kept per adapter for late waiters


@dataclass(frozen=True)
class RoundResult:
    """A closed round: the broadcast delta (from ``base``), the new current card and who contributed."""

    base: LoRACard
    delta: Delta
    card: LoRACard
    contributors: int


class RoundAggregator:
    """Collects contributions per adapter and merges each round (thread-safe; handlers block in :meth:`submit`)."""

    def __init__(self, store: CardStore, *, round_size: int = 1, round_timeout_s: float = 30.0,
                 broadcast: DeltaConfig | None = None) -> None:
        self.store = store
        self.round_size = round_size
        self.round_timeout_s = round_timeout_s
        self.broadcast = broadcast or DeltaConfig(method="dense")
        self._cond = threading.Condition()
        self._pending: dict[str, dict[str, tuple[Mapping[str, torch.Tensor], int]]] = {}
        self._results: dict[tuple[str, int], RoundResult] = {}
        self._feedback: dict[str, ErrorFeedback] = {}

    def submit(self, base: LoRACard, node: str, tensors: Mapping[str, torch.Tensor], samples: int
               ) -> RoundResult | None:
        """Add ``node``'s card ``tensors`` (trained from ``base``) to the round; wait for it to close.

        Returns None when ``base`` is no longer current (the node must do a full sync).
        """
        adapter, version = base.meta.adapter, base.meta.version
        key = (adapter, version)
        with self._cond:
            if key in self._results:  # the round closed while this node's stream was still arriving
                return None
            if self.store.current(adapter).meta.version != version:
                return None
            pending = self._pending.setdefault(adapter, {})
            pending[node] = (tensors, samples)  # a node sending twice in a round replaces its contribution
            self._cond.notify_all()
            deadline = time.monotonic() + self.round_timeout_s
            while key not in self._results:
                remaining = deadline - time.monotonic()
                if len(pending) >= self.round_size or remaining <= 0:
                    self._close(base, pending)
                    break
                self._cond.wait(remaining)
            return self._results.get(key)

    def _close(self, base: LoRACard, pending: dict[str, tuple[Mapping[str, torch.Tensor], int]]) -> None:
        adapter = base.meta.adapter
        total = sum(samples for _, samples in pending.values())
        merged = {name: sum(t[name].float() * (samples / total) for t, samples in pending.values())
                  for name in base.tensors}
        feedback = self._feedback.setdefault(adapter, ErrorFeedback())
        delta = encode_delta(base, merged, config=self.broadcast, feedback=feedback)
        card = apply_delta(base, delta)
        self.store.commit(card)
        self._results[(adapter, base.meta.version)] = RoundResult(base, delta, card, len(pending))
        for old in [k for k in self._results if k[0] == adapter and k[1] < base.meta.version - _KEEP_RESULTS]:
            del self._results[old]
        logger.info("adapter %s: round on v%d closed with %d nodes (%d samples) -> v%d, broadcast %d bytes %s",
                    adapter, base.meta.version, len(pending), total, card.meta.version, delta.nbytes, delta.methods)
        pending.clear()
        self._cond.notify_all()

    def reset_feedback(self, adapter: str) -> None:
        """Forget the broadcast residual of ``adapter`` (its card was replaced by a push)."""
        with self._cond:
            self._feedback.pop(adapter, None)
