"""The sync server end to end over real Flight servers on 127.0.0.1:0: rounds, full-sync fallback, and every
rejection (token, TLS, NaN, shape, size) leaving the server's adapter exactly as it was."""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
import threading

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import torch

from federation.card import CardMeta, LoRACard
from federation.client import ClientConfig, SyncClient
from federation.delta import Delta, DeltaConfig, ErrorFeedback, encode_delta
from federation.encoding import EncodedTensor
from federation.errors import SyncRejectedError, SyncUnavailableError
from federation.protocol import SyncRequest, batch_bytes
from federation.server import ServerConfig, SyncServer
from federation.synclog import SyncLog
from federation.wire import WireLimits, card_batches, delta_batches
from tests.federation.support import ADAPTER, nudged, running_server, tiny_card

TOKEN = "test-token-1"


def _state(server) -> tuple[int, str]:
    card = server.store.current(ADAPTER)
    return card.meta.version, card.checksum


@pytest.fixture
def server(tmp_path):
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN)) as srv:
        SyncClient(ClientConfig(srv.location, token=TOKEN)).push(tiny_card())
        yield srv


def _client(server, node="a", **kwargs) -> SyncClient:
    return SyncClient(ClientConfig(server.location, node=node, token=TOKEN, **kwargs))


def _raw_exchange(server, delta: Delta | None = None, *, limits: WireLimits | None = None, commit: bool = True,
                  stream: tuple[pa.Schema, list[pa.RecordBatch]] | None = None, mode: str = "delta") -> dict:
    """Send ``delta`` (or ``stream``) as it is (no client-side checks), the way a faulty or hostile node would;
    returns the server's reply (its last metadata message)."""
    client = flight.FlightClient(server.location)
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
    request = SyncRequest("raw", ADAPTER, 0 if delta is None else delta.base_version, mode)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(request.to_bytes()), options=options)
    schema, batches = stream or delta_batches(delta, limits)
    writer.begin(schema)
    for batch in batches:
        writer.write_batch(batch)
    if commit:
        writer.write_metadata(pa.py_buffer(f'{{"batches":{len(batches)},"commit":true}}'.encode()))
    writer.done_writing()
    reply = None
    for chunk in reader:
        if chunk.app_metadata is not None:
            reply = json.loads(chunk.app_metadata.to_pybytes())
    return reply


def _rejected(message: str) -> str:
    """The server's exact rejection text, as a pattern (Flight appends its own context after it)."""
    return "^" + re.escape(f"rejected: {message}; the server's adapter is unchanged")


def test_delta_sync_merges_and_node_matches_server_bit_for_bit(server, tmp_path):
    log = SyncLog(tmp_path / "log")
    client = SyncClient(ClientConfig(server.location, node="a", token=TOKEN), log)
    base = client.pull(ADAPTER)
    result = client.sync(nudged(base, 1), base, samples=5, feedback=ErrorFeedback())
    assert result.status == "ok"
    assert (result.card.meta.version, result.card.checksum) == _state(server) == (1, result.card.checksum)
    assert result.card.meta.parent_version == 0
    rows = log.table().to_pylist()
    assert [(r["op"], r["status"], r["method"]) for r in rows] == [("pull", "ok", "full"), ("sync", "ok", "delta")]
    assert rows[1]["bytes_sent"] == result.bytes_sent > 0 and rows[1]["bytes_received"] == result.bytes_received
    assert rows[1]["base_version"] == 0 and rows[1]["new_version"] == 1
    server_rows = server.log.table().to_pylist()
    assert server_rows[-1]["op"] == "sync" and server_rows[-1]["bytes_received"] == result.bytes_sent


@pytest.mark.parametrize("mode", ["full", "delta"])
def test_round_is_sample_weighted_fedavg(tmp_path, mode):
    config = ServerConfig(root=tmp_path / "srv", token=TOKEN, round_size=2, round_timeout_s=20)
    with running_server(config) as srv:
        _client(srv).push(tiny_card())
        base = _client(srv).pull(ADAPTER)
        locals_ = {"a": (nudged(base, 1), 1), "b": (nudged(base, 2), 3)}
        results = {}

        def run(node):
            card, samples = locals_[node]
            client = _client(srv, node, delta=DeltaConfig(method="dense"))  # lossless both ways (dense broadcast)
            results[node] = client.sync(card, base, samples=samples, mode=mode)

        threads = [threading.Thread(target=run, args=(n,)) for n in locals_]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        merged = srv.store.current(ADAPTER)
        assert merged.meta.version == 1
        for name, t in merged.tensors.items():
            expected = 0.25 * locals_["a"][0].tensors[name] + 0.75 * locals_["b"][0].tensors[name]
            torch.testing.assert_close(t, expected, rtol=0, atol=1e-6)
        assert {(r.status, r.card.checksum) for r in results.values()} == {("ok", merged.checksum)}
        rows = [r for r in srv.log.table().to_pylist() if r["op"] == "sync"]
        assert sorted((r["node"], r["method"], r["status"], r["new_version"]) for r in rows) == [
            ("a", mode, "ok", 1), ("b", mode, "ok", 1)]


def test_stale_base_is_told_to_full_sync_and_ends_consistent(server):
    a, b = _client(server, "a"), _client(server, "b")
    base = a.pull(ADAPTER)
    a.sync(nudged(base, 1), base)  # the server moves to version 1
    feedback = ErrorFeedback()
    stale = b.sync(nudged(base, 2), base, feedback=feedback)  # b still holds version 0
    assert stale.status == "full_sync"
    assert (stale.card.meta.version, stale.card.checksum) == _state(server) == (1, stale.card.checksum)
    assert feedback.residuals == {}
    again = b.sync(nudged(stale.card, 3), stale.card)  # and the next sync works from there
    assert again.status == "ok" and _state(server) == (2, again.card.checksum)


def test_wrong_token_is_refused(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    intruder = SyncClient(ClientConfig(server.location, token="wrong"))
    with pytest.raises(SyncRejectedError, match="missing or wrong bearer token"):
        intruder.sync(nudged(base, 1), base)
    with pytest.raises(SyncRejectedError, match="missing or wrong bearer token"):
        SyncClient(ClientConfig(server.location)).list_cards()
    with pytest.raises(flight.FlightUnauthenticatedError):  # a plain Flight call without the header
        list(flight.FlightClient(server.location).list_flights())
    assert _state(server) == before


def test_nan_delta_is_rejected_before_anything_changes(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    delta = encode_delta(base, nudged(base, 1), "dense")
    name = sorted(delta.tensors)[0]
    values = delta.tensors[name].values.copy()
    values[3] = np.nan
    poisoned = dict(delta.tensors, **{name: EncodedTensor("dense", delta.tensors[name].shape, values,
                                                           np.empty(0, np.uint16))})
    with pytest.raises(flight.FlightServerError, match=_rejected(f"{name}: the update holds NaN/Inf values")):
        _raw_exchange(server, Delta(delta.adapter, delta.base_version, delta.base_checksum, poisoned))
    assert _state(server) == before


def test_stream_without_commit_changes_nothing(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    message = 'the stream of 1 batches did not end with its commit message {"batches":1,"commit":true} (cut short?)'
    with pytest.raises(flight.FlightServerError, match=_rejected(message)):
        _raw_exchange(server, encode_delta(base, nudged(base, 1), "dense"), commit=False)
    assert _state(server) == before


def test_wrong_shape_is_rejected(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    delta = encode_delta(base, base, "dense")
    name = sorted(delta.tensors)[0]
    wrong = EncodedTensor("dense", (1, 2), np.zeros(2, np.float32), np.empty(0, np.uint16))
    shape = list(base.tensors[name].shape)
    with pytest.raises(flight.FlightServerError, match=_rejected(f"{name}: delta shape [1, 2] != card shape {shape}")):
        _raw_exchange(server, Delta(delta.adapter, delta.base_version, delta.base_checksum,
                                    dict(delta.tensors, **{name: wrong})))
    assert _state(server) == before


def test_oversized_message_is_rejected(tmp_path):
    small = WireLimits(max_part_bytes=512, max_batch_bytes=1024)  # both sides cut streams into small batches
    config = ServerConfig(root=tmp_path / "srv", token=TOKEN, max_message_bytes=2048, limits=small)
    with running_server(config) as srv:
        _client(srv, limits=small).push(tiny_card())
        before = _state(srv)
        base = _client(srv).pull(ADAPTER)
        delta = encode_delta(base, nudged(base, 1), "dense")
        big = WireLimits(max_part_bytes=1 << 16, max_batch_bytes=1 << 16)
        size = batch_bytes(delta_batches(delta, big)[1][0])
        message = (f"a message of {size} bytes exceeds the server's limit of 2048 bytes; split the stream into "
                   f"smaller batches")
        with pytest.raises(flight.FlightServerError, match=_rejected(message)):
            _raw_exchange(srv, delta, limits=big)
        assert _state(srv) == before
        ok = SyncClient(ClientConfig(srv.location, token=TOKEN, limits=small,
                                     delta=DeltaConfig(method="dense"))).sync(nudged(base, 1), base)
        assert ok.status == "ok" and _state(srv)[0] == 1


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_plain_connection_is_refused_when_tls_is_required(tmp_path):
    cert, key = _self_signed(tmp_path)
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN, tls_cert=cert, tls_key=key)) as srv:
        assert srv.location.startswith("grpc+tls://")
        secure = SyncClient(ClientConfig(srv.location, token=TOKEN, tls_root_cert=cert))
        secure.push(tiny_card())
        base = secure.pull(ADAPTER)
        before = _state(srv)
        plain = SyncClient(ClientConfig(srv.location.replace("grpc+tls", "grpc+tcp"), token=TOKEN, timeout_s=10))
        with pytest.raises(SyncUnavailableError, match="the server may require TLS"):
            plain.sync(nudged(base, 1), base)
        assert _state(srv) == before
        assert secure.sync(nudged(base, 1), base).status == "ok"  # the TLS client still syncs


# ---------------------------------------------------------------------------- R5.6: a failed delta -> full sync
def _damaged(schema: pa.Schema, batches: list[pa.RecordBatch]) -> list[pa.RecordBatch]:
    """``batches`` with one payload byte of the first row flipped (its checksum left as it was)."""
    rows = pa.Table.from_batches(batches, schema=schema).to_pylist()
    column = "values" if "values" in rows[0] else "data"
    rows[0][column] = bytes([rows[0][column][0] ^ 0xFF]) + rows[0][column][1:]
    return [pa.RecordBatch.from_pylist(rows, schema=schema)]


def test_damaged_delta_is_answered_with_full_sync_required_and_changes_nothing(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    schema, batches = delta_batches(encode_delta(base, nudged(base, 1), "dense"))
    reply = _raw_exchange(server, stream=(schema, _damaged(schema, batches)))
    name = sorted(base.tensors)[0]
    assert reply == {"checksum": before[1], "contributors": 0, "status": "full_sync_required", "version": 0,
                     "reason": f"the delta failed: {name} part 0: checksum mismatch (payload damaged in transit); "
                               f"nothing was applied, send it again"}
    assert _state(server) == before
    record = server.log.table().to_pylist()[-1]
    assert (record["op"], record["status"], record["new_version"]) == ("sync", "full_sync_required", 0)


class _DamagingClient(SyncClient):
    """A node whose first delta is damaged on the way (a flipped payload byte): the server cannot apply it."""

    damaged = 0

    def _update_batches(self, local, base, mode, feedback):
        schema, batches = super()._update_batches(local, base, mode, feedback)
        if mode == "delta" and not self.damaged:
            self.damaged += 1
            return schema, _damaged(schema, batches)
        return schema, batches


def test_failed_delta_falls_back_to_sending_the_whole_card(server, tmp_path):
    log = SyncLog(tmp_path / "log")
    node = _DamagingClient(ClientConfig(server.location, node="a", token=TOKEN), log)
    base = node.pull(ADAPTER)
    local = nudged(base, 1)
    feedback = ErrorFeedback()
    result = node.sync(local, base, feedback=feedback)
    assert (result.status, result.fallback) == ("full_sync", "full_update")
    assert "checksum mismatch (payload damaged in transit)" in result.reason
    merged = server.store.current(ADAPTER)
    assert merged.meta.version == 1 and result.card.checksum == merged.checksum
    for name, t in merged.tensors.items():  # the node's whole card made the round (round of one)
        assert torch.equal(t, local.tensors[name])
    assert feedback.residuals == {}
    rows = [(r["op"], r["method"], r["status"]) for r in log.table().to_pylist()]
    assert rows == [("pull", "full", "ok"), ("sync", "delta", "full_sync_required"), ("sync", "full", "ok")]
    assert result.bytes_sent > base.nbytes  # the delta and then the whole card


class _DamagingServer(SyncServer):
    """A server whose merged delta is damaged on the way back."""

    def _reply_batches(self, result, mode):
        schema, batches = super()._reply_batches(result, mode)
        return (schema, _damaged(schema, batches)) if mode == "delta" else (schema, batches)


def test_merged_update_failing_on_receipt_falls_back_to_a_pull(tmp_path):
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN), _DamagingServer) as srv:
        log = SyncLog(tmp_path / "log")
        node = SyncClient(ClientConfig(srv.location, node="a", token=TOKEN), log)
        node.push(tiny_card())
        base = node.pull(ADAPTER)
        result = node.sync(nudged(base, 1), base, feedback=ErrorFeedback())
        assert (result.status, result.fallback) == ("full_sync", "pull")
        assert result.reason.startswith("the merged update failed here: ") and "checksum mismatch" in result.reason
        assert (result.card.meta.version, result.card.checksum) == _state(srv) == (1, result.card.checksum)
        rows = [(r["op"], r["status"]) for r in log.table().to_pylist()]
        assert rows == [("push", "ok"), ("pull", "ok"), ("sync", "apply_failed"), ("pull", "ok")]


# ---------------------------------------------------------------------------- auth, limits, invalid full cards
def test_every_call_without_the_token_is_refused(server):
    before = _state(server)
    plain = flight.FlightClient(server.location)
    card = tiny_card(3)
    schema, batches = card_batches(card)
    calls = {
        "list_flights": lambda: list(plain.list_flights()),
        "get_flight_info": lambda: plain.get_flight_info(flight.FlightDescriptor.for_path(ADAPTER)),
        "do_get": lambda: plain.do_get(flight.Ticket(b'{"adapter":"chat","version":null}')).read_all(),
        "do_put": lambda: _put(plain.do_put(flight.FlightDescriptor.for_path(ADAPTER), schema)[0], batches),
        "do_exchange": lambda: plain.do_exchange(flight.FlightDescriptor.for_command(
            SyncRequest("x", ADAPTER, 0).to_bytes()))[1].read_all(),
        "list_actions": lambda: list(plain.list_actions()),
        "do_action": lambda: list(plain.do_action(flight.Action("noop", b""))),
    }
    for method, call in calls.items():
        with pytest.raises(flight.FlightUnauthenticatedError, match=r"^missing or wrong bearer token: send"):
            call()
        assert method
    assert _state(server) == before and len(server.store.adapters()) == 1


def _put(writer, batches):
    for batch in batches:
        writer.write_batch(batch)
    writer.close()


def _big_card() -> LoRACard:
    """A rank-8 card of 5.1 MB fp32: more than gRPC's default 4 MiB message limit."""
    meta = CardMeta(ADAPTER, "big", "b1", 8, 16.0, ("q_proj",))
    gen = torch.Generator().manual_seed(0)
    stem = "base_model.model.model.layers.0.self_attn.q_proj"
    return LoRACard(meta, {f"{stem}.lora_A.weight": torch.randn(8, 80_000, generator=gen),
                           f"{stem}.lora_B.weight": torch.randn(80_000, 8, generator=gen)})


def test_a_card_larger_than_grpc_default_limit_travels_in_batches(tmp_path):
    big = _big_card()
    assert big.nbytes > 4 << 20
    with running_server(ServerConfig(root=tmp_path / "srv", token=TOKEN)) as srv:
        grpc_default = ClientConfig(srv.location, token=TOKEN, max_message_bytes=4 << 20)
        node = SyncClient(grpc_default)
        node.push(big)
        base = node.pull(ADAPTER)
        assert base.checksum == big.checksum
        result = node.sync(nudged(base, 1), base, mode="full")
        assert result.status == "ok" and result.card.checksum == _state(srv)[1]
        batches = card_batches(big)[1]
        assert len(batches) >= 3 and max(batch_bytes(b) for b in batches) < 4 << 20
        # gRPC's server side takes any size (pyarrow sets no limit there); the server's own limit refuses it clearly
        before = _state(srv)
        whole = WireLimits(max_part_bytes=8 << 20, max_batch_bytes=8 << 20)
        one_batch = card_batches(result.card, whole)
        size = batch_bytes(one_batch[1][0])
        message = (f"a message of {size} bytes exceeds the server's limit of 4194304 bytes; split the stream into "
                   f"smaller batches")
        with pytest.raises(flight.FlightServerError, match=_rejected(message)):
            _raw_exchange(srv, stream=one_batch, mode="full")
        assert _state(srv) == before
        tiny_limit = SyncClient(ClientConfig(srv.location, token=TOKEN, max_message_bytes=1 << 20))
        with pytest.raises(SyncRejectedError, match=re.escape("pull of 'chat' was cancelled by gRPC: usually a "
                                                               "message over this client's limit of 1048576 bytes")):
            tiny_limit.pull(ADAPTER)  # a batch over the client's own receive limit: refused by gRPC, clearly


def test_invalid_full_cards_are_rejected_before_anything_changes(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    name = sorted(base.tensors)[0]
    poisoned = dict(base.tensors, **{name: base.tensors[name].clone()})
    poisoned[name][0, 0] = float("inf")
    bad = LoRACard(base.meta, poisoned)
    with pytest.raises(flight.FlightServerError, match=_rejected(f"{name}: the update holds NaN/Inf values")):
        _raw_exchange(server, stream=card_batches(bad), mode="full")
    with pytest.raises(SyncRejectedError, match=re.escape(f"{name}: the card holds NaN/Inf values")):
        _client(server).push(bad)
    wrong = LoRACard(tiny_card(0, rank=2).meta, tiny_card(0, rank=2).tensors)
    with pytest.raises(flight.FlightServerError,
                       match=_rejected("the card's tensor names or shapes differ from the server's adapter")):
        _raw_exchange(server, stream=card_batches(wrong), mode="full")
    assert _state(server) == before


def test_sync_log_counts_are_flights_own(server, tmp_path):
    log = SyncLog(tmp_path / "log")
    node = SyncClient(ClientConfig(server.location, node="a", token=TOKEN, limits=WireLimits(256, 512),
                                   delta=DeltaConfig(method="dense")), log)
    base = node.pull(ADAPTER)
    node.sync(nudged(base, 1), base, feedback=ErrorFeedback())
    client_row = log.table().to_pylist()[-1]
    server_row = server.log.table().to_pylist()[-1]
    delta = encode_delta(base, nudged(base, 1), "dense")
    batches = delta_batches(delta, WireLimits(256, 512))[1]
    # Flight's own IPC message counters: the schema plus every record batch (metadata-only messages not counted)
    assert client_row["messages_sent"] == server_row["messages_received"] == 1 + len(batches) > 2
    assert client_row["messages_received"] == server_row["messages_sent"] == 2
    assert client_row["bytes_sent"] == server_row["bytes_received"]
    assert client_row["bytes_received"] == server_row["bytes_sent"]
    assert client_row["seconds"] > 0 and client_row["method"] == "delta"
