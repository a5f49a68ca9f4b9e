"""``arrowengine sync serve|push|pull|list|daemon``: the sync verbs, registered into the ``arrowengine`` CLI.

:func:`register` adds the ``sync`` command to an argparse sub-parser collection (the CLI's plugin hook calls
it); :func:`main` runs the same verbs standalone (``scripts/flight_sync_daemon.py``). The token comes from
``--token-file`` or ``$ARROWENGINE_SYNC_TOKEN`` and is never taken on the command line (it would show in ``ps``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "register"]

logger = logging.getLogger(__name__)


def _client_config(args: argparse.Namespace) -> Any:
    from federation.auth import resolve_token
    from federation.client import ClientConfig

    return ClientConfig(location=args.server, node=args.node, token=resolve_token(token_file=args.token_file),
                        tls_root_cert=args.tls_root_cert)


def _cmd_serve(args: argparse.Namespace) -> int:
    from federation.auth import resolve_token
    from federation.server import ServerConfig, SyncServer

    config = ServerConfig(root=args.dir, host=args.host, port=args.port,
                          token=resolve_token(token_file=args.token_file), tls_cert=args.tls_cert,
                          tls_key=args.tls_key, round_size=args.round_size, round_timeout_s=args.round_timeout)
    server = SyncServer(config)
    print(f"sync server listening on {server.location}", flush=True)  # the bound port, for --port 0
    # The server runs from its creation. serve() would wait under pyarrow's own SIGINT / SIGTERM handler, whose
    # shutdown waits for every in-flight call without a deadline (a CI run saw Ctrl-C ignored for 20 s): here
    # Ctrl-C raises KeyboardInterrupt in this loop, SIGTERM ends it, and the shutdown gets a bounded grace time.
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C even when started with SIGINT ignored (a child of pytest-xdist's workers inherits that)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    interrupted = True
    try:
        while not stop.wait(0.5):
            pass
        interrupted = False
    finally:
        _shutdown(server, SHUTDOWN_GRACE_S, 130 if interrupted else 0)
    return 0


SHUTDOWN_GRACE_S = 10.0  # seconds in-flight calls get to finish once the server is asked to stop


def _shutdown(server: Any, grace_s: float, exit_code: int) -> None:
    """Stop ``server``, letting in-flight calls finish for ``grace_s``; past that, leave the process at once
    (``exit_code``), because gRPC would otherwise wait for a stalled call forever, at exit too."""
    worker = threading.Thread(target=server.shutdown, name="sync-server-shutdown", daemon=True)
    worker.start()
    worker.join(grace_s)
    if worker.is_alive():
        logger.warning("sync server: calls still in flight %.0f s after the stop; exiting without them", grace_s)
        if exit_code:
            print("interrupted", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_code)


def _cmd_push(args: argparse.Namespace) -> int:
    from federation.card import LoRACard
    from federation.client import SyncClient

    card = LoRACard.load(args.card)
    with SyncClient(_client_config(args)) as client:
        client.push(card)
    print(json.dumps({"pushed": card.meta.adapter, "version": card.meta.version}))
    return 0


def _cmd_pull(args: argparse.Namespace) -> int:
    from federation.client import SyncClient

    with SyncClient(_client_config(args)) as client:
        card = client.pull(args.adapter, args.version)
    card.save(args.out)
    print(json.dumps({"pulled": card.meta.adapter, "version": card.meta.version, "path": str(args.out)}))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    import dataclasses

    from federation.client import SyncClient

    with SyncClient(_client_config(args)) as client:
        for meta in client.list_cards():
            print(json.dumps(dataclasses.asdict(meta), sort_keys=True))
    return 0


def _cmd_daemon(args: argparse.Namespace) -> int:
    from federation.daemon import DaemonConfig, SyncDaemon

    daemon = SyncDaemon(DaemonConfig(adapter=args.adapter, directory=args.dir, interval_s=args.interval,
                                     max_retries=args.retries, mode=args.mode, samples=args.samples),
                        _client_config(args))
    if args.once:
        return 0 if daemon.run_with_retries() is not None else 1
    daemon.start()
    try:
        daemon.wait()
    finally:
        daemon.stop()
    return 0


def _add_client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", required=True, help="grpc+tcp://HOST:PORT or grpc+tls://HOST:PORT")
    p.add_argument("--node", default="node", help="this node's name (sync log, server rounds)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token (else $ARROWENGINE_SYNC_TOKEN)")
    p.add_argument("--tls-root-cert", default=None, help="PEM certificate to trust for grpc+tls://")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``sync`` command (with its verbs) to ``subparsers`` (from ``ArgumentParser.add_subparsers``);
    each verb sets ``func(args) -> exit code``."""
    sync = subparsers.add_parser("sync", help="federated LoRA sync over Arrow Flight (docs/federation_protocol.md)")
    verbs = sync.add_subparsers(dest="sync_command", required=True)

    p = verbs.add_parser("serve", help="run the sync server")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default: this machine only)")
    p.add_argument("--port", type=int, default=8815, help="port (0: any free port, printed at start)")
    p.add_argument("--dir", required=True, help="directory of the adapters (created if missing)")
    p.add_argument("--token-file", default=None, help="file holding the bearer token (else $ARROWENGINE_SYNC_TOKEN)")
    p.add_argument("--tls-cert", default=None, help="PEM certificate: serve grpc+tls://")
    p.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    p.add_argument("--round-size", type=int, default=1, help="nodes whose updates make one round (FedAvg)")
    p.add_argument("--round-timeout", type=float, default=30.0, help="seconds before a round closes with fewer")
    p.set_defaults(func=_cmd_serve)

    p = verbs.add_parser("push", help="upload a card file as the adapter's next version")
    p.add_argument("card", help="a LoRA card file (LoRACard.save)")
    _add_client_options(p)
    p.set_defaults(func=_cmd_push)

    p = verbs.add_parser("pull", help="download an adapter's card (a full sync)")
    p.add_argument("adapter")
    p.add_argument("--out", required=True, help="card file to write")
    p.add_argument("--version", type=int, default=None, help="a version still on the server (default: current)")
    _add_client_options(p)
    p.set_defaults(func=_cmd_pull)

    p = verbs.add_parser("list", help="the adapters on the server, one JSON line each")
    _add_client_options(p)
    p.set_defaults(func=_cmd_list)

    p = verbs.add_parser("daemon", help="sync DIR/<adapter>.local.parquet with the server periodically")
    p.add_argument("--adapter", required=True)
    p.add_argument("--dir", required=True, help="the node's card directory (base, local, synclog)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between syncs")
    p.add_argument("--retries", type=int, default=5, help="retries per sync (exponential backoff, jitter)")
    p.add_argument("--mode", choices=["delta", "full"], default="delta")
    p.add_argument("--samples", type=int, default=1, help="training samples behind this node's update (FedAvg)")
    p.add_argument("--once", action="store_true", help="one sync (with retries), then exit")
    _add_client_options(p)
    p.set_defaults(func=_cmd_daemon)
    return sync


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser whose only command is ``sync`` (``scripts/flight_sync_daemon.py``)."""
    parser = argparse.ArgumentParser(prog="flight_sync_daemon", description="Federated LoRA sync over Arrow Flight.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v: INFO log lines, -vv: DEBUG")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sync ...`` standalone; returns the exit code (2 with one line for an error the user can fix)."""
    from arrowengine.errors import EngineError
    from arrowengine.logging_setup import configure_logging, level_from_verbosity

    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    configure_logging(level_from_verbosity(args.verbose, "WARNING"))
    try:
        return int(args.func(args))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
