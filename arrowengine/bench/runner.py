"""Run the selected suites in order and produce the report (the body of ``bench_baseline_advanced.py``)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from arrowengine.bench.context import BenchContext, BenchOptions
from arrowengine.bench.datasets import BenchInputError
from arrowengine.bench.targets import evaluate_targets
from arrowengine.converters.packages import PackageNotFetchedError
from arrowengine.errors import UsageError

__all__ = ["SUITES", "run_benchmark"]

logger = logging.getLogger(__name__)


def _suites(ctx: BenchContext) -> list[tuple[str, str, Callable[[], None]]]:
    """(suite, model, callable) in run order, for the selected suites and models."""
    from arrowengine.bench import llm, loading, media, ops, text

    models = ctx.options.models
    plan: list[tuple[str, str, Callable[[], None]]] = [("ops", "", lambda: ops.run_ops(ctx))]
    if "all-MiniLM-L6-v2" in models:
        plan.append(("text", "all-MiniLM-L6-v2", lambda: text.run_text(ctx)))
    for model in ("whisper-tiny.en", "whisper-base"):
        if model in models:
            plan.append(("audio", model, lambda model=model: media.run_audio(ctx, model)))
    if "dinov2-small" in models:
        plan.append(("vision", "dinov2-small", lambda: media.run_vision(ctx)))
    if "smollm2-135m-instruct" in models:
        plan.append(("llm", "smollm2-135m-instruct", lambda: llm.run_llm(ctx)))
    plan.append(("load", "", lambda: loading.run_loading(ctx)))
    return [step for step in plan if step[0] in ctx.options.suites]


SUITES = ("ops", "text", "audio", "vision", "llm", "load")


def run_benchmark(options: BenchOptions) -> dict:
    """Run every selected suite; a suite whose inputs are missing is recorded as skipped, never silently dropped."""
    from arrowengine.bench.report import build_report

    unknown = set(options.suites) - set(SUITES)
    if unknown:
        raise UsageError(f"unknown suite(s) {sorted(unknown)}; choose from {', '.join(SUITES)}")
    ctx = BenchContext(options)
    for suite, model, step in _suites(ctx):
        logger.info("suite %s %s", suite, model)
        try:
            step()
        except (BenchInputError, PackageNotFetchedError, ImportError) as exc:
            logger.warning("suite %s %s skipped: %s", suite, model, exc)
            ctx.results.skipped(suite, model or suite, "(whole suite)", "baseline", "latency", "ms", str(exc))
    ctx.results.fill_ratios()
    return build_report(ctx, evaluate_targets(ctx))
