"""One consolidation of the memory store, for cron or a systemd timer (the daemon: ``arrowengine memory
consolidate --daemon``).

    python scripts/nightly_consolidation.py [--store PATH] [--config arrowengine.yaml] [-v]

The store defaults to the configured one (``memory.path``, ``$ARROWENGINE_MEMORY_PATH``, else
``~/.arrowengine/memory``); the LLM and thresholds come from ``memory.consolidation`` in the config file or
``ARROWENGINE_MEMORY_CONSOLIDATION_*`` variables. Prints the run report as JSON; exit code 2 with one line
naming the problem and the fix when the store or the configuration is unusable. A crontab line:

    0 3 * * * cd /path/to/repo && python scripts/nightly_consolidation.py >> consolidation.log 2>&1
"""

from __future__ import annotations

import argparse
import json
import sys

from arrowengine.errors import EngineError
from arrowengine.logging_setup import configure_logging, level_from_verbosity
from memory.cli import run_consolidation


def main(argv: list[str] | None = None) -> int:
    """Run one consolidation; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", default=None, help="store directory (default: the configured one)")
    ap.add_argument("--config", default=None, help="YAML configuration file (default: $ARROWENGINE_CONFIG)")
    ap.add_argument("-v", "--verbose", action="count", default=1, help="-v: DEBUG (default INFO)")
    args = ap.parse_args(argv)
    configure_logging(level_from_verbosity(args.verbose, "WARNING"))
    try:
        report = run_consolidation(args.store, args.config)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(None if report is None else report.row(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
