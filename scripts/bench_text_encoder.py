"""MiniLM text encoder (every precision and backend) against sentence-transformers and onnxruntime.

One harness: this is
``python scripts/bench_baseline_advanced.py --models all-MiniLM-L6-v2 --suites text [options]``
(every option of that script applies and overrides the preset; see its ``--help``).
Results: report.json / report.md / PNGs in
``--out`` (default ``bench_out/text_encoder``); figures kept in ``docs/benchmarks/``.
"""

from __future__ import annotations

import sys

from arrowengine.bench.main import main

PRESET = ["--models", "all-MiniLM-L6-v2", "--suites", "text", "--out", "bench_out/text_encoder"]

if __name__ == "__main__":
    sys.exit(main([*PRESET, *sys.argv[1:]]))
