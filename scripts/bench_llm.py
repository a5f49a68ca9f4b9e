"""SmolLM2 time to first token and decode tokens/s against transformers.generate, with perplexity.

One harness: this is
``python scripts/bench_baseline_advanced.py --models smollm2-135m-instruct --suites llm [options]``
(every option of that script applies and overrides the preset; see its ``--help``).
Results: report.json / report.md / PNGs in
``--out`` (default ``bench_out/llm``); figures kept in ``docs/benchmarks/``.
"""

from __future__ import annotations

import sys

from arrowengine.bench.main import main

PRESET = ["--models", "smollm2-135m-instruct", "--suites", "llm", "--out", "bench_out/llm"]

if __name__ == "__main__":
    sys.exit(main([*PRESET, *sys.argv[1:]]))
