"""The store on an object-store URI (issue 18): add / search / reopen against a real S3-compatible server
(moto in server mode on 127.0.0.1, an ephemeral port), and a clear error when no server answers."""

from __future__ import annotations

import socket

import pytest

from memory import MemoryStore, StoreUnreachableError

moto_server = pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install -e .[dev])")


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server with one bucket; the AWS variables point lancedb at it."""
    import boto3

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_REGION": "us-east-1"}.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="memories")
        yield "s3://memories/agent"
    finally:
        server.stop()


def test_add_search_reopen_on_s3(s3, embedder):
    with MemoryStore(s3, embedder=embedder) as store:
        ids = store.add_many([{"content": "the spare key is under the blue flower pot", "session": "home"},
                              {"content": "the dentist appointment moved to Friday", "session": "home"}])
        assert store.search("where is the spare key?", k=1)[0].id == ids[0]
    with MemoryStore(s3, embedder=embedder) as reopened:
        assert len(reopened) == 2
        assert reopened.get(ids[1]).content == "the dentist appointment moved to Friday"
        assert reopened.search("when is the dentist?", k=1)[0].id == ids[1]


def test_unreachable_uri(monkeypatch, embedder):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    with pytest.raises(StoreUnreachableError) as err:
        MemoryStore("s3://memories/agent", embedder=embedder)
    message = str(err.value)
    assert message.startswith("memory store URI 's3://memories/agent' cannot be reached (")
    assert message.endswith("); check the endpoint (AWS_ENDPOINT_URL) and credentials (AWS_ACCESS_KEY_ID, "
                            "AWS_SECRET_ACCESS_KEY), or use a local directory")
