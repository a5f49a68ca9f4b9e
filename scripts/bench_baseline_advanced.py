"""arrowengine against the tools users would otherwise pick, in one run (see arrowengine/bench/main.py).

Usage:
  python scripts/bench_baseline_advanced.py --quick                 # < 10 minutes on a 2-core CPU
  python scripts/bench_baseline_advanced.py --out docs/benchmarks/baseline_advanced
  python scripts/bench_baseline_advanced.py --models all-MiniLM-L6-v2 --suites ops text --strategies '*bf16*'
Also available as ``arrowengine bench [options]``.
"""

from __future__ import annotations

import sys

from arrowengine.bench.main import main

if __name__ == "__main__":
    sys.exit(main())
