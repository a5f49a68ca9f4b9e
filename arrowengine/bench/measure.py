"""Timing with warm-up and repeats (median and spread), and process memory split by kind.

Figures are medians over repeated runs after warm-up; the spread (quartiles, min, max) travels with every
median so a reader can tell a real difference from noise on a shared 2-core machine.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["MemorySnapshot", "Spread", "mapping_resident_bytes", "memory_snapshot", "time_call", "time_interleaved"]


@dataclass(frozen=True)
class Spread:
    """Seconds per call: median, quartiles, min and max over ``runs`` timed calls."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    runs: int

    @classmethod
    def of(cls, samples: list[float]) -> Spread:
        """The spread of ``samples`` (seconds); needs at least one sample."""
        if not samples:  # internal invariant: every caller measures at least once
            raise ValueError("Spread.of needs at least one sample")
        ordered = sorted(samples)
        if len(ordered) >= 2:
            q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
        else:
            q1 = q3 = ordered[0]
        return cls(statistics.median(ordered), q1, q3, ordered[0], ordered[-1], len(ordered))

    def as_rate(self, count: float) -> dict[str, float | int]:
        """The spread as rates ``count / seconds`` (items/s): the quartiles swap, as a faster run rates higher."""
        def rate(seconds: float) -> float:
            return count / seconds if seconds > 0 else float("inf")
        return {"median": rate(self.median), "p25": rate(self.p75), "p75": rate(self.p25), "min": rate(self.max),
                "max": rate(self.min), "runs": self.runs}

    def scaled(self, factor: float) -> dict[str, float | int]:
        """The spread with every time multiplied by ``factor`` (e.g. 1000 for milliseconds), as a dict."""
        return {k: (v * factor if k != "runs" else v) for k, v in asdict(self).items()}


def time_call(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, max_seconds: float | None = None
              ) -> tuple[Spread, Any]:
    """Run ``fn`` ``warmup`` times untimed, then ``repeats`` times timed; returns (spread, last result).

    ``max_seconds`` stops repeating early (after at least 2 timed runs) once the timed runs have taken that long,
    so slow strategies cannot blow a ``--quick`` budget. The garbage collector is paused while timing.
    """
    result = None
    for _ in range(warmup):
        result = fn()
    samples: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            result = fn()
            samples.append(time.perf_counter() - start)
            if max_seconds is not None and len(samples) >= 2 and sum(samples) > max_seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return Spread.of(samples), result


def time_interleaved(fns: Mapping[str, Callable[[], Any]], *, warmup: int = 1, repeats: int = 5,
                     max_seconds: float | None = None) -> dict[str, tuple[Spread, Any]]:
    """Time several functions round-robin (one call of each per round); returns name -> (spread, last result).

    For ratios between strategies on a shared, noisy machine: a slow spell hits every strategy in the rounds it
    spans, instead of whichever one was being timed. ``max_seconds`` caps the whole run of rounds (after 2).
    """
    results: dict[str, Any] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            results[name] = fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for round_index in range(max(1, repeats)):
            for name, fn in fns.items():
                start = time.perf_counter()
                results[name] = fn()
                samples[name].append(time.perf_counter() - start)
            spent = sum(sum(times) for times in samples.values())
            if max_seconds is not None and round_index >= 1 and spent > max_seconds:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    return {name: (Spread.of(samples[name]), results.get(name)) for name in fns}


@dataclass(frozen=True)
class MemorySnapshot:
    """This process's memory from ``/proc/self/status``: resident anonymous / file-backed, and the peak."""

    rss_bytes: int
    anon_bytes: int
    file_bytes: int
    peak_rss_bytes: int

    def to_dict(self) -> dict[str, int]:
        """Plain-dict form for JSON reports."""
        return asdict(self)


def _status_kib(text: str, key: str) -> int:
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def memory_snapshot() -> MemorySnapshot:
    """Current RSS split into anonymous and file-backed pages, plus the peak RSS (VmHWM); zeros off Linux."""
    path = Path("/proc/self/status")
    if not path.is_file():
        return MemorySnapshot(0, 0, 0, 0)
    text = path.read_text()
    kib = 1024
    return MemorySnapshot(_status_kib(text, "VmRSS") * kib, _status_kib(text, "RssAnon") * kib,
                          _status_kib(text, "RssFile") * kib, _status_kib(text, "VmHWM") * kib)


def mapping_resident_bytes(file: str | os.PathLike[str]) -> int:
    """Bytes of ``file`` resident in this process's mappings of it (``Rss`` summed over ``/proc/self/smaps``)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.is_file():
        return 0
    target = os.path.realpath(file)
    total, inside = 0, False
    for line in smaps.read_text().splitlines():
        head = line.split(maxsplit=5)
        if len(head) >= 5 and "-" in head[0] and ":" in head[3]:  # a mapping header line
            inside = len(head) == 6 and head[5] == target
        elif inside and line.startswith("Rss:"):
            total += int(line.split()[1]) * 1024
    return total
