"""Whisper encoders (tiny.en, base) on 30 s of real speech against transformers, per precision.

One harness: this is
``python scripts/bench_baseline_advanced.py --models whisper-tiny.en whisper-base --suites audio [options]``
(every option of that script applies and overrides the preset; see its ``--help``).
Results: report.json / report.md / PNGs in
``--out`` (default ``bench_out/whisper``); figures kept in ``docs/benchmarks/``.
"""

from __future__ import annotations

import sys

from arrowengine.bench.main import main

PRESET = ["--models", "whisper-tiny.en", "whisper-base", "--suites", "audio", "--out", "bench_out/whisper"]

if __name__ == "__main__":
    sys.exit(main([*PRESET, *sys.argv[1:]]))
