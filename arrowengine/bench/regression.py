"""Regression guard: a reduced benchmark whose ratios (never absolute times) are compared with a stored baseline.

Ratios compare two strategies measured back to back in one process, so they survive a change of machine far
better than times do; a ratio that falls below ``stored * (1 - tolerance)`` is re-measured (a busy neighbour can
slow one run) and is reported only if it stays low. Entries whose speed depends on an ISA extension the stored
baseline had (BF16, AMX, VNNI) are skipped, with a note, on a machine without it.

It runs in the benchmark, never in the unit tests (timing there is noise on a shared CI box):
``python scripts/bench_baseline_advanced.py --guard`` reports, ``--guard-strict`` also exits 1 on a regression.
The stored ratios live in ``docs/benchmarks/guard_baseline.json`` (``--write-guard-baseline`` renews them).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arrowengine.bench.context import BenchOptions

__all__ = ["GUARD_BASELINE", "GUARD_ENTRIES", "GuardEntry", "GuardResult", "check_guard", "guard_options",
           "guard_ratios", "run_guard", "write_guard_baseline"]

logger = logging.getLogger(__name__)

GUARD_BASELINE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks" / "guard_baseline.json"


@dataclass(frozen=True)
class GuardEntry:
    """One guarded ratio: the result row it reads and the ISA extension its speed depends on, if any."""

    key: str
    suite: str
    group: str
    strategy: str
    needs_isa: str | None = None


GUARD_ENTRIES = (
    GuardEntry("text eager fp32 vs sentence-transformers", "text", "all-MiniLM-L6-v2 batch=32",
               "arrowengine eager fp32"),
    GuardEntry("text bf16 vs sentence-transformers", "text", "all-MiniLM-L6-v2 batch=32", "arrowengine bf16", "BF16"),
    GuardEntry("text fast int8-mixed vs sentence-transformers", "text", "all-MiniLM-L6-v2 batch=32",
               "arrowengine fast int8-mixed", "VNNI"),
    GuardEntry("text INT8 dequant-on-load vs sentence-transformers", "text", "all-MiniLM-L6-v2 batch=32",
               "arrowengine INT8 dequant-on-load"),
    GuardEntry("SDPA vs eager attention (MiniLM)", "ops", "attention: MiniLM", "SDPA fp32"),
    GuardEntry("bf16 vs fp32 linear (MiniLM FFN up)", "ops", "linear: MiniLM FFN up", "bf16 F.linear", "BF16"),
    GuardEntry("INT8 dequant-on-load vs fp32 linear (MiniLM FFN up)", "ops", "linear: MiniLM FFN up",
               "INT8 dequant-on-load"),
)


def guard_options(models_dir: str | Path = "models") -> BenchOptions:
    """The reduced benchmark the guard runs: MiniLM only, operators + text, quick inputs, guarded strategies."""
    return BenchOptions(models_dir=Path(models_dir), models=("all-MiniLM-L6-v2",), suites=("ops", "text"),
                        strategies=tuple(e.strategy for e in GUARD_ENTRIES), quick=True, repeats=3)


def guard_ratios(report: dict[str, Any]) -> dict[str, float]:
    """The guarded ratios found in ``report`` (entries that did not run are absent)."""
    out = {}
    for entry in GUARD_ENTRIES:
        for r in report["results"]:
            if (r["suite"] == entry.suite and entry.group in r["group"] and r["strategy"] == entry.strategy
                    and r["ratio"] is not None and r["status"] == "ok"):
                out[entry.key] = r["ratio"]
                break
    return out


def write_guard_baseline(report: dict[str, Any], path: str | Path, tolerance: float = 0.4) -> dict[str, Any]:
    """Store ``report``'s guarded ratios, the machine's ISA summary and the tolerance as the new baseline."""
    baseline = {"tolerance": tolerance, "isa_summary": report["environment"]["isa_summary"],
                "cpu_model": report["environment"]["cpu_model"], "created_at": report["created_at"],
                "ratios": guard_ratios(report)}
    Path(path).write_text(json.dumps(baseline, indent=1) + "\n", encoding="utf-8")
    return baseline


def check_guard(measured: dict[str, float], baseline: dict[str, Any], isa_summary: dict[str, bool]
                ) -> tuple[list[str], list[str]]:
    """(failures, notes): each guarded ratio below ``stored * (1 - tolerance)`` is a failure naming both figures."""
    failures, notes = [], []
    tolerance = float(baseline["tolerance"])
    for entry in GUARD_ENTRIES:
        stored = baseline["ratios"].get(entry.key)
        if stored is None:
            notes.append(f"{entry.key}: no stored ratio")
            continue
        if entry.needs_isa and baseline["isa_summary"].get(entry.needs_isa) and not isa_summary.get(entry.needs_isa):
            notes.append(f"{entry.key}: skipped, this CPU lacks {entry.needs_isa} (the baseline's had it)")
            continue
        got = measured.get(entry.key)
        if got is None:
            failures.append(f"{entry.key}: not measured (the strategy failed or was skipped)")
        elif got < stored * (1.0 - tolerance):
            failures.append(f"{entry.key}: ratio {got:.2f}x, below the stored {stored:.2f}x minus "
                            f"{tolerance:.0%} ({stored * (1 - tolerance):.2f}x)")
    return failures, notes


@dataclass(frozen=True)
class GuardResult:
    """What one guard run found: regressions that held over every re-measurement, notes, the ratios used."""

    failures: list[str]
    notes: list[str]
    measured: dict[str, float]


def run_guard(models_dir: str | Path, baseline_path: str | Path = GUARD_BASELINE, retries: int = 2) -> GuardResult:
    """Run the reduced benchmark and compare its ratios with the stored ones, re-measuring up to ``retries``
    times what fell short (each ratio keeps its best run: a busy neighbour slows one run, a regression stays)."""
    from arrowengine.bench.runner import run_benchmark

    baseline = json.loads(Path(baseline_path).read_text(encoding="utf-8"))
    report = run_benchmark(guard_options(models_dir))
    isa = report["environment"]["isa_summary"]
    measured = guard_ratios(report)
    failures, notes = check_guard(measured, baseline, isa)
    for attempt in range(retries):
        if not failures:
            break
        logger.warning("guard: %d ratio(s) low, re-measuring (%d/%d)", len(failures), attempt + 1, retries)
        again = guard_ratios(run_benchmark(guard_options(models_dir)))
        measured = {k: max(v, again.get(k, v)) for k, v in (again | measured).items()}
        failures, notes = check_guard(measured, baseline, isa)
    return GuardResult(failures, notes, measured)
