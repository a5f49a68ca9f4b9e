"""Regression guard: a reduced real benchmark (MiniLM, operators + text) against stored ratios."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from arrowengine.bench.regression import check_guard, guard_options, guard_ratios
from arrowengine.bench.runner import run_benchmark

BASELINE = Path(__file__).with_name("guard_baseline.json")
MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.slow
def test_guarded_ratios_hold_against_the_stored_baseline():
    if not (MODELS / "all-MiniLM-L6-v2" / "weights.parquet").is_file():
        pytest.skip("models/all-MiniLM-L6-v2 is missing; run python scripts/fetch_models.py")
    pytest.importorskip("sentence_transformers", reason="sentence-transformers is the text baseline")
    baseline = json.loads(BASELINE.read_text())
    report = run_benchmark(guard_options(MODELS))
    measured = guard_ratios(report)
    failures, _ = check_guard(measured, baseline, report["environment"]["isa_summary"])
    for _ in range(2):  # re-measure what fell short: a busy neighbour slows one run, a regression stays
        if not failures:
            break
        again = guard_ratios(run_benchmark(guard_options(MODELS)))
        measured = {k: max(v, again.get(k, v)) for k, v in measured.items()}
        failures, _ = check_guard(measured, baseline, report["environment"]["isa_summary"])
    assert not failures, "performance regression:\n" + "\n".join(failures)
