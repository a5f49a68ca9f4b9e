"""What every suite needs: options of the run, the strategy filter, the result set, and progress reporting."""

from __future__ import annotations

import fnmatch
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from arrowengine.bench.measure import Spread, time_call, time_interleaved
from arrowengine.bench.results import Fidelity, Result, ResultSet

__all__ = ["BenchContext", "BenchOptions"]

logger = logging.getLogger(__name__)


@dataclass
class BenchOptions:
    """Options of one benchmark run (the script's command-line flags)."""

    models_dir: Path = Path("models")
    models: tuple[str, ...] = ("all-MiniLM-L6-v2", "whisper-tiny.en", "whisper-base", "dinov2-small",
                               "smollm2-135m-instruct")
    strategies: tuple[str, ...] = ("*",)  # glob patterns over strategy names; baselines always run
    suites: tuple[str, ...] = ("ops", "text", "audio", "vision", "llm", "load")
    dataset: str = "chitchat"
    device: str = "cpu"
    quick: bool = False
    repeats: int = 5
    warmup: int = 1

    @property
    def sentences(self) -> int:
        """How many real sentences the text suite embeds per strategy."""
        return 256 if self.quick else 2000

    @property
    def max_seconds(self) -> float:
        """Stop repeating one measurement once its timed runs took this long (after 2 runs)."""
        return 4.0 if self.quick else 30.0


@dataclass
class BenchContext:
    """Shared state of a run: options, results, and the timing helper suites call."""

    options: BenchOptions
    results: ResultSet = field(default_factory=ResultSet)
    memory: list[dict[str, Any]] = field(default_factory=list)  # one row per loader probe (see loading.py)
    int8_bytes: dict[str, int] | None = None  # MiniLM INT8 quantized bytes vs their float32 bytes
    started: float = field(default_factory=time.perf_counter)

    def wanted(self, strategy: str, role: str) -> bool:
        """True when ``strategy`` matches the ``--strategies`` filter (baselines always run: ratios need them)."""
        if role == "baseline":
            return True
        return any(fnmatch.fnmatch(strategy, pattern) for pattern in self.options.strategies)

    def time(self, fn: Callable[[], Any], *, repeats: int | None = None) -> tuple[Spread, Any]:
        """Time ``fn`` with the run's warm-up, repeats and per-measurement time cap."""
        return time_call(fn, warmup=self.options.warmup, repeats=repeats or self.options.repeats,
                         max_seconds=self.options.max_seconds)

    def time_interleaved(self, fns: Mapping[str, Callable[[], Any]]) -> dict[str, tuple[Spread, Any]]:
        """Time strategies round-robin with the run's warm-up and repeats (cap: per-measurement time x count)."""
        cap = self.options.max_seconds * max(1, len(fns))
        return time_interleaved(fns, warmup=self.options.warmup, repeats=self.options.repeats, max_seconds=cap)

    def record(self, suite: str, group: str, strategy: str, role: str, metric: str, unit: str, value: float,
               *, higher_is_better: bool, spread: dict[str, float] | None = None,
               fidelity: Fidelity | None = None, params: dict[str, Any] | None = None, note: str = "") -> Result:
        """Add a measured result and log it."""
        result = self.results.add(Result(suite, group, strategy, role, metric, unit, value, higher_is_better,
                                         spread=spread, fidelity=fidelity, params=params or {}, note=note))
        fid = f" {fidelity.metric}={fidelity.value:.5f}" if fidelity and fidelity.value is not None else ""
        logger.info("%s | %s | %s: %.4g %s%s", suite, group, strategy, value, unit, fid)
        return result

    def attempt(self, suite: str, group: str, strategy: str, role: str, metric: str, unit: str,
                fn: Callable[[], None], *, higher_is_better: bool = True) -> None:
        """Run ``fn`` (which records its own results); an exception is recorded as a failed row, not raised.

        A strategy that cannot run here (missing package, unsupported op) must not cost the rest of the run.
        """
        if not self.wanted(strategy, role):
            return
        try:
            fn()
        except Exception as exc:
            status = "skipped" if isinstance(exc, (ImportError, FileNotFoundError, NotImplementedError)) else "failed"
            logger.warning("%s | %s | %s %s: %s: %s", suite, group, strategy, status, type(exc).__name__, exc)
            self.results.skipped(suite, group, strategy, role, metric, unit, f"{type(exc).__name__}: {exc}",
                                 status=status, higher_is_better=higher_is_better)
