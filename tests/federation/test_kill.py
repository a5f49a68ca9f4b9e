"""A client process SIGKILLed in the middle of an exchange leaves the server's adapter unchanged, and the next
sync succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow as pa

from federation.client import ClientConfig, SyncClient
from federation.delta import encode_delta
from federation.protocol import SyncRequest
from federation.server import ServerConfig
from federation.wire import WireLimits, delta_batches
from tests.federation.support import ADAPTER, nudged, running_server, tiny_card

TOKEN = "kill-test"

# the dying node: plain pyarrow, sends the schema and one batch of a multi-batch delta, then hangs
_CHILD = """
import sys, time
import pyarrow as pa, pyarrow.flight as flight
location, command, stream = sys.argv[1:4]
with pa.ipc.open_stream(stream) as source:
    schema, batches = source.schema, list(source)
client = flight.FlightClient(location)
options = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer kill-test")])
writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(command.encode()), options=options)
writer.begin(schema)
writer.write_batch(batches[0])
print("SENT", len(batches), flush=True)
time.sleep(120)
"""


def test_client_killed_mid_exchange_changes_nothing(tmp_path):
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN)) as srv:
        client = SyncClient(ClientConfig(srv.location, node="a", token=TOKEN))
        client.push(tiny_card())
        base = client.pull(ADAPTER)
        before = (srv.store.current(ADAPTER).meta.version, srv.store.current(ADAPTER).checksum)
        schema, batches = delta_batches(encode_delta(base, nudged(base, 1), "dense"),
                                        WireLimits(max_part_bytes=256, max_batch_bytes=512))
        stream = tmp_path / "delta.arrows"
        with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, schema) as out:
            for batch in batches:
                out.write_batch(batch)
        command = SyncRequest("dying", ADAPTER, base.meta.version).to_bytes().decode()
        child = subprocess.Popen([sys.executable, "-c", _CHILD, srv.location, command, str(stream)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()
            assert line.startswith("SENT") and int(line.split()[1]) > 1  # killed with batches still unsent
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.wait(30)
        assert child.returncode == -signal.SIGKILL
        time.sleep(0.5)  # let the server notice the broken stream
        assert (srv.store.current(ADAPTER).meta.version, srv.store.current(ADAPTER).checksum) == before
        result = client.sync(nudged(base, 2), base)
        assert result.status == "ok" and srv.store.current(ADAPTER).meta.version == before[0] + 1
        assert result.card.checksum == srv.store.current(ADAPTER).checksum
