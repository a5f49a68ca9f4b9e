"""``arrowengine memory ...``: the memory store's subcommands, registered as an ``arrowengine.commands`` plugin.

``arrowengine memory consolidate [--store PATH] [--daemon]`` runs one consolidation (or the daemon: nightly cron
plus the storage-pressure check); ``arrowengine memory stats [--store PATH]`` prints the tier sizes and the
consolidation run log. arrowengine finds :func:`register` through the entry point, so it never imports memory.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["register", "run_consolidation"]

logger = logging.getLogger(__name__)


def _store_config(args: argparse.Namespace) -> Any:
    from memory.config import load_memory_config

    cfg = load_memory_config(getattr(args, "config", None))
    return cfg if args.store is None else dataclasses.replace(cfg, path=args.store)


def run_consolidation(store_path: str | Path | None = None, config_file: str | None = None) -> Any:
    """One consolidation of the store at ``store_path`` (default: the configured one) with the configured LLM.

    Returns the run report (None when another consolidation holds the store's lock). The embedded server,
    when it is the LLM, is started for this run and stopped after it.
    """
    from memory.config import load_memory_config
    from memory.consolidation import Consolidator, load_consolidation_config, open_llm
    from memory.store import MemoryStore

    mcfg = load_memory_config(config_file)
    if store_path is not None:
        mcfg = dataclasses.replace(mcfg, path=store_path)
    ccfg = load_consolidation_config(config_file)
    llm = open_llm(ccfg.llm)
    try:
        with MemoryStore(config=mcfg) as store:
            return Consolidator(store, llm, ccfg).run()
    finally:
        close = getattr(llm, "close", None)
        if close is not None:
            close()


def _cmd_consolidate(args: argparse.Namespace) -> int:
    from memory.consolidation import ConsolidationDaemon, load_consolidation_config

    store_path = _store_config(args).path
    if not args.daemon:
        report = run_consolidation(store_path, args.config)
        if report is None:
            print(f"{store_path}: another consolidation is running; nothing done")
            return 0
        print(json.dumps(report.row(), indent=2))
        return 0
    triggers = load_consolidation_config(args.config).triggers
    daemon = ConsolidationDaemon(store_path, lambda _reason: run_consolidation(store_path, args.config), triggers)
    daemon.start()
    nxt = ", ".join(f"{job} at {when.isoformat()}" for job, when in daemon.next_fire_times().items() if when)
    print(f"consolidation daemon for {store_path}: next runs {nxt} (Ctrl-C stops)")
    daemon.wait()
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    from memory.consolidation import read_runs
    from memory.lance_io import connect
    from memory.store import MemoryStore

    cfg = _store_config(args)
    with MemoryStore(config=cfg) as store:
        stats = store.stats()
    runs = read_runs(connect(cfg.path, 0.0), last=args.runs)
    if args.json:
        print(json.dumps({"store": stats, "runs": runs}, indent=2, default=str))
        return 0
    print(f"{stats['path']}: {stats['rows']} memories, tiers {stats['tiers']}, "
          f"{stats.get('disk_bytes', 0) / 2**20:.1f} MiB on disk")
    print(f"consolidation runs ({len(runs)} shown):")
    for r in runs:
        print(f"  {r['run_id']} {r['status']}: scanned {r['scanned']}, clustered {r['clustered']} in "
              f"{r['clusters']} clusters, {r['principles']} principles, {r['archived']} archived, "
              f"{r['rejected']} rejected; short {r['short_before']} -> {r['short_after']}, bytes "
              f"{r['bytes_before']} -> {r['bytes_after']}; {r['llm_calls']} LLM calls, {r['llm_failures']} "
              f"failures ({r['llm']}); {r['duration_s']:.1f} s")
        for reason in r["reasons"]:
            print(f"    rejected {reason['cluster']}: {reason['reason']}")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``memory`` command and its subcommands to the ``arrowengine`` parser."""
    memory = subparsers.add_parser("memory", help="the agent memory store: consolidate, stats")
    sub = memory.add_subparsers(dest="memory_command", required=True)
    store_help = "store directory (default: memory.path from the config, $ARROWENGINE_MEMORY_PATH, else " \
                 "~/.arrowengine/memory)"
    p = sub.add_parser("consolidate", help="consolidate hot short-term memories into long-term principles")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument("--daemon", action="store_true",
                   help="keep running: nightly (memory.consolidation.triggers.cron_hour) and on storage pressure")
    p.set_defaults(func=_cmd_consolidate)
    p = sub.add_parser("stats", help="tier sizes and the consolidation run log")
    p.add_argument("--store", default=None, help=store_help)
    p.add_argument("--runs", type=int, default=10, help="show the last N runs (default 10)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_stats)
