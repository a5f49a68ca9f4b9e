"""A plain ``pyarrow.flight`` client written from docs/federation_protocol.md (not ``SyncClient``) lists the cards
and fetches one, rebuilding the tensors bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.flight as flight
import xxhash

from federation.client import ClientConfig, SyncClient
from federation.server import ServerConfig
from tests.federation.support import running_server, tiny_card

TOKEN = "plain-client"


def test_plain_flight_client_lists_and_fetches_cards(tmp_path):
    cards = {c.meta.adapter: c for c in (tiny_card(0, adapter="chat"), tiny_card(1, rank=2, adapter="support"))}
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN)) as srv:
        for card in cards.values():
            SyncClient(ClientConfig(srv.location, token=TOKEN)).push(card)

        # --- from here on only what docs/federation_protocol.md says
        client = flight.FlightClient(srv.location)
        options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
        infos = list(client.list_flights(options=options))
        metas = {json.loads(i.schema.metadata[b"federation.card"])["adapter"]: i for i in infos}
        assert sorted(metas) == ["chat", "support"]
        info = metas["support"]
        meta = json.loads(info.schema.metadata[b"federation.card"])
        assert (meta["rank"], meta["version"], meta["target_modules"]) == (2, 0, ["q_proj", "v_proj"])
        assert info.descriptor.path == [b"support"]
        assert json.loads(info.endpoints[0].ticket.ticket) == {"adapter": "support", "version": 0}
        table = client.do_get(info.endpoints[0].ticket, options=options).read_all()
        tensors: dict[str, list] = {}
        for row in table.to_pylist():
            assert xxhash.xxh64(row["data"]).intdigest() == row["checksum"]
            tensors.setdefault(row["name"], []).append(row)
        for name, rows in tensors.items():
            assert [r["part"] for r in rows] == list(range(rows[0]["parts"]))
            assert rows[0]["dtype"] == "float32"
            array = np.frombuffer(b"".join(r["data"] for r in rows), dtype="<f4").reshape(rows[0]["shape"])
            assert array.tobytes() == cards["support"].tensors[name].numpy().tobytes()
        assert set(tensors) == set(cards["support"].tensors)
        by_ticket = client.do_get(flight.Ticket(b'{"adapter":"chat","version":null}'), options=options).read_all()
        assert by_ticket.schema.metadata[b"federation.kind"] == b"card" and by_ticket.num_rows == 8
