"""The sync daemon retries a failed sync with exponential backoff and jitter, records every attempt in its sync
log, and stops cleanly; with a server back, its thread syncs on schedule."""

from __future__ import annotations

import socket
import time

from federation.client import ClientConfig
from federation.daemon import DaemonConfig, SyncDaemon
from federation.server import ServerConfig
from tests.federation.support import ADAPTER, running_server, tiny_card


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_retries_with_backoff_then_gives_up(tmp_path, monkeypatch):
    daemon = SyncDaemon(DaemonConfig(ADAPTER, tmp_path / "node", max_retries=3, backoff_s=0.01, backoff_max_s=0.02),
                        ClientConfig(f"grpc+tcp://127.0.0.1:{_closed_port()}", timeout_s=5))
    delays = []
    real_wait = daemon._stop.wait
    monkeypatch.setattr(daemon._stop, "wait", lambda t: delays.append(t) or real_wait(0))
    assert daemon.run_with_retries() is None
    assert len(delays) == 3 and all(0 <= d <= 0.02 for d in delays)  # jittered, capped by backoff_max_s
    log = daemon.log.table().to_pylist()
    assert [(r["op"], r["status"]) for r in log] == [("pull", "error")] * 4
    assert "cannot reach the sync server" in log[0]["error"] or "unavailable" in log[0]["error"].lower()


def test_thread_syncs_on_schedule_and_stops(tmp_path):
    with running_server(ServerConfig(root=tmp_path / "srv")) as srv:
        from federation.client import SyncClient

        SyncClient(ClientConfig(srv.location)).push(tiny_card())
        daemon = SyncDaemon(DaemonConfig(ADAPTER, tmp_path / "node", interval_s=0.05), ClientConfig(srv.location))
        daemon.start()
        deadline = time.monotonic() + 20
        while len(daemon.log.table()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        daemon.stop()
        ops = [(r["op"], r["status"]) for r in daemon.log.table().to_pylist()]
        assert ops[0] == ("pull", "ok") and ("sync", "ok") in ops[1:]
        assert daemon.base_path.is_file() and daemon._thread is None
