"""``arrowengine sync serve|push|list|pull|daemon``: a server process started by ``scripts/flight_sync_daemon.py``
on 127.0.0.1 port 0 with the token from the environment, the client verbs through the ``arrowengine`` console
entry with the token from a file, and the sync logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from arrowengine.cli import build_parser, main
from federation.card import LoRACard
from tests.federation.support import nudged, tiny_card

TOKEN = "cli-token"


def test_sync_verbs_end_to_end(tmp_path, capsys):
    env = dict(os.environ, ARROWENGINE_SYNC_TOKEN=TOKEN)
    script = Path(__file__).resolve().parents[2] / "scripts" / "flight_sync_daemon.py"
    err_file = (tmp_path / "server.err").open("w")  # its log lines and the last one, "interrupted"
    server = subprocess.Popen([sys.executable, str(script), "serve", "--host", "127.0.0.1", "--port", "0", "--dir",
                               str(tmp_path / "srv")], env=env, stdout=subprocess.PIPE, text=True,
                              stderr=err_file)
    try:
        line = server.stdout.readline()
        assert line.startswith("sync server listening on grpc+tcp://127.0.0.1:"), line
        location = line.split()[-1]
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")
        auth = ["--server", location, "--token-file", str(token_file)]
        card = tiny_card(0)
        card.save(tmp_path / "card.parquet")
        assert main(["sync", "push", str(tmp_path / "card.parquet"), *auth]) == 0
        assert main(["sync", "list", *auth]) == 0
        assert main(["sync", "pull", "chat", "--out", str(tmp_path / "pulled.parquet"), *auth]) == 0
        out = capsys.readouterr().out.splitlines()
        assert json.loads(out[0]) == {"pushed": "chat", "version": 0}
        assert json.loads(out[1])["adapter"] == "chat" and json.loads(out[1])["rank"] == 4
        assert LoRACard.load(tmp_path / "pulled.parquet").checksum == card.checksum

        node = tmp_path / "node"
        daemon = ["sync", "daemon", "--adapter", "chat", "--dir", str(node), "--once", "--node", "n1", *auth]
        assert main(daemon) == 0  # first tick: pulls the base
        nudged(LoRACard.load(node / "chat.base.parquet"), 1).save(node / "chat.local.parquet")
        assert main(daemon) == 0  # second tick: a delta sync
        merged = LoRACard.load(node / "chat.base.parquet")
        assert merged.meta.version == 1
        log = pq.read_table(node / "synclog").to_pylist()
        assert [(r["op"], r["status"], r["method"]) for r in log] == [("pull", "ok", "full"),
                                                                       ("sync", "ok", "delta")]
        assert log[1]["bytes_sent"] > 0 and log[1]["base_version"] == 0 and log[1]["new_version"] == 1

        assert main(["sync", "list", "--server", location]) == 2  # no token: refused with one line
        assert "missing or wrong bearer token" in capsys.readouterr().err
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
        err_file.close()
        server.stdout.close()
    err = (tmp_path / "server.err").read_text()
    assert server.returncode == 130 and err.rstrip().endswith("interrupted"), err  # Ctrl-C: one line, exit 130
    server_log = pq.read_table(tmp_path / "srv" / "_synclog").to_pylist()
    assert {r["op"] for r in server_log} >= {"push", "pull", "sync"}


def test_sync_serve_arguments():
    args = build_parser(plugins=["sync"]).parse_args(["sync", "serve", "--host", "127.0.0.1", "--port", "8815",
                                                      "--dir", "adapters", "--token-file", "token"])
    assert (args.host, args.port, args.dir, args.token_file) == ("127.0.0.1", 8815, "adapters", "token")
    defaults = build_parser(plugins=["sync"]).parse_args(["sync", "serve", "--dir", "d"])
    assert (defaults.host, defaults.round_size) == ("127.0.0.1", 1)  # this machine only, unless asked
