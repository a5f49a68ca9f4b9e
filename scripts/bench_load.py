"""Load time and memory per loader (arrowengine zero-copy, safetensors, torch.load, ...) in fresh processes.

One harness: this is
``python scripts/bench_baseline_advanced.py --suites load [options]``
(every option of that script applies and overrides the preset; see its ``--help``).
Results: report.json / report.md / PNGs in
``--out`` (default ``bench_out/load``); figures kept in ``docs/benchmarks/``.
"""

from __future__ import annotations

import sys

from arrowengine.bench.main import main

PRESET = ["--suites", "load", "--out", "bench_out/load"]

if __name__ == "__main__":
    sys.exit(main([*PRESET, *sys.argv[1:]]))
