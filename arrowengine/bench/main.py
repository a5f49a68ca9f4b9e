"""arrowengine against the tools users would otherwise pick, in one run: operators, end to end, memory, load.

Every figure is a median over repeated runs after warm-up, with its spread, its ratio to a named baseline
measured in the same run, and its fidelity to fp32 (cosine, relative error or token agreement). Targets set by
the issues are printed as met / NOT MET. Outputs: report.json (schema: docs/benchmarks/SCHEMA.md), report.md
and PNG plots in --out.

Usage:
  python scripts/bench_baseline_advanced.py --quick                 # < 10 minutes on a 2-core CPU
  python scripts/bench_baseline_advanced.py --out docs/benchmarks/baseline_advanced
  python scripts/bench_baseline_advanced.py --models all-MiniLM-L6-v2 --suites ops text --strategies '*bf16*'
  python scripts/bench_baseline_advanced.py --guard [--guard-strict]  # regression guard, a few minutes
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from arrowengine.bench.context import BenchOptions
from arrowengine.bench.regression import GUARD_BASELINE, guard_options, run_guard, write_guard_baseline
from arrowengine.bench.report import console_summary, write_outputs
from arrowengine.bench.runner import SUITES, run_benchmark

MODELS = BenchOptions().models


def parse_args(argv: list[str] | None = None, *, prog: str | None = None) -> argparse.Namespace:
    """Command-line options (see the module docstring); ``prog`` names the command in the usage line."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS),
                        help="models from models/ to benchmark (default: all)")
    parser.add_argument("--strategies", nargs="+", default=["*"],
                        help="glob patterns over strategy names; baselines always run (default: all)")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), choices=list(SUITES))
    parser.add_argument("--dataset", default="chitchat",
                        help="sentences for the text suite: 'chitchat' or a text file, one sentence per line")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (GPU strategies only where present)")
    parser.add_argument("--quick", action="store_true", help="fewer inputs, cases and repeats (< 10 min)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5, quick 3)")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--out", default="bench_out/baseline_advanced")
    parser.add_argument("--guard", nargs="?", const=str(GUARD_BASELINE), default=None, metavar="JSON",
                        help="run only the regression guard's reduced benchmark and report each ratio that stays "
                             f"more than the tolerance below the stored one (default JSON: {GUARD_BASELINE.name} in "
                             "docs/benchmarks); exit 0 unless --guard-strict")
    parser.add_argument("--guard-strict", action="store_true", help="with --guard: exit 1 on a regression")
    parser.add_argument("--write-guard-baseline", metavar="JSON", default=None,
                        help="run only the regression guard's reduced benchmark and store its ratios in JSON "
                             "(docs/benchmarks/guard_baseline.json)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the benchmark, write the outputs, print every ratio and target; exit 0 even when a target is missed."""
    args = parse_args(argv, prog=prog)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not Path(args.models_dir, MODELS[0], "weights.parquet").is_file():
        print(f"{args.models_dir}/ has no converted models; run python scripts/fetch_models.py first", file=sys.stderr)
        return 2
    if args.guard_strict and not args.guard:
        args.guard = str(GUARD_BASELINE)
    if args.guard:
        return _guard(args)
    if args.write_guard_baseline:
        report = run_benchmark(guard_options(args.models_dir))
        baseline = write_guard_baseline(report, args.write_guard_baseline)
        print(json.dumps(baseline["ratios"], indent=1))
        return 0
    options = BenchOptions(models_dir=Path(args.models_dir), models=tuple(args.models),
                           strategies=tuple(args.strategies), suites=tuple(args.suites), dataset=args.dataset,
                           device=args.device, quick=args.quick,
                           repeats=args.repeats or (3 if args.quick else 5))
    report = run_benchmark(options)
    files = write_outputs(report, args.out)
    print(console_summary(report))
    print(f"\n{report['seconds']:.0f} s; wrote {', '.join(str(f) for f in files)}")
    return 0


def _guard(args: argparse.Namespace) -> int:
    """``--guard``: print every guarded ratio and each regression; 1 only for a regression with --guard-strict."""
    if not Path(args.guard).is_file():
        print(f"guard baseline {args.guard} does not exist; create it with --write-guard-baseline {args.guard}",
              file=sys.stderr)
        return 2
    result = run_guard(args.models_dir, args.guard)
    for key, ratio in sorted(result.measured.items()):
        print(f"guard {key}: {ratio:.2f}x")
    for note in result.notes:
        print(f"guard note: {note}")
    for failure in result.failures:
        print(f"guard REGRESSION: {failure}")
    if not result.failures:
        print("guard: every guarded ratio holds")
    return 1 if result.failures and args.guard_strict else 0
