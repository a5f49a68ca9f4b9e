"""The sync server end to end over real Flight servers on 127.0.0.1:0: rounds, full-sync fallback, and every
rejection (token, TLS, NaN, shape, size) leaving the server's adapter exactly as it was."""

from __future__ import annotations

import datetime
import ipaddress
import threading

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest
import torch

from federation.client import ClientConfig, SyncClient
from federation.delta import Delta, DeltaConfig, ErrorFeedback, encode_delta
from federation.encoding import EncodedTensor
from federation.errors import SyncRejectedError, SyncUnavailableError
from federation.protocol import SyncRequest
from federation.server import ServerConfig
from federation.synclog import SyncLog
from federation.wire import WireLimits, delta_batches
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


def _raw_exchange(server, delta: Delta, *, limits: WireLimits | None = None, commit: bool = True) -> None:
    """Send ``delta`` as it is (no client-side checks), the way a faulty or hostile node would."""
    client = flight.FlightClient(server.location)
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {TOKEN}".encode())])
    request = SyncRequest("raw", ADAPTER, delta.base_version)
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(request.to_bytes()), options=options)
    schema, batches = delta_batches(delta, limits)
    writer.begin(schema)
    for batch in batches:
        writer.write_batch(batch)
    if commit:
        writer.write_metadata(pa.py_buffer(f'{{"batches":{len(batches)},"commit":true}}'.encode()))
    writer.done_writing()
    reader.read_all()


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


def test_round_is_sample_weighted_fedavg(tmp_path):
    config = ServerConfig(root=tmp_path / "srv", token=TOKEN, round_size=2, round_timeout_s=20)
    with running_server(config) as srv:
        _client(srv).push(tiny_card())
        base = _client(srv).pull(ADAPTER)
        locals_ = {"a": (nudged(base, 1), 1), "b": (nudged(base, 2), 3)}
        results = {}

        def run(node):
            card, samples = locals_[node]
            results[node] = _client(srv, node).sync(card, base, samples=samples, mode="full")

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
        assert {r.card.checksum for r in results.values()} == {merged.checksum}


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
    with pytest.raises(flight.FlightServerError, match=r"NaN/Inf values; the server's adapter is unchanged"):
        _raw_exchange(server, Delta(delta.adapter, delta.base_version, delta.base_checksum, poisoned))
    assert _state(server) == before


def test_stream_without_commit_changes_nothing(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    with pytest.raises(flight.FlightServerError, match="did not end with its commit message"):
        _raw_exchange(server, encode_delta(base, nudged(base, 1), "dense"), commit=False)
    assert _state(server) == before


def test_wrong_shape_is_rejected(server):
    before = _state(server)
    base = _client(server).pull(ADAPTER)
    delta = encode_delta(base, base, "dense")
    name = sorted(delta.tensors)[0]
    wrong = EncodedTensor("dense", (1, 2), np.zeros(2, np.float32), np.empty(0, np.uint16))
    with pytest.raises(flight.FlightServerError, match=rf"{name}: delta shape \[1, 2\] != card shape"):
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
        with pytest.raises(flight.FlightServerError, match=r"exceeds the server's limit of 2048 bytes"):
            _raw_exchange(srv, delta, limits=WireLimits(max_part_bytes=1 << 16, max_batch_bytes=1 << 16))
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
