"""API keys, the per-key rate limit, concurrent streams per key, the full queue (503 + Retry-After), metrics.

The scheduler is paused (``Scheduler.pause``) to hold a request in the queue, so "queue full" and "too
many streams" are reached deterministically, without timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from arrowengine.serve import ServeConfig, ServeConfigError, ServerThread, load_api_keys
from tests.serve.conftest import TINY

KEYS = ("key-alpha", "key-beta", "key-rate")
CHAT = {"model": TINY, "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": {"num_predict": 2}}


@pytest.fixture(scope="module")
def keyed(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# serve keys\n" + "\n".join(KEYS) + "\n")
    config = ServeConfig(port=0, models_dir=models_dir, api_keys=load_api_keys(key_file), max_batch=1, max_queue=1,
                         max_streams_per_key=1, rate_limit_per_minute=30, retry_after_s=2,
                         llm_options={"dtype": "float32"}, context_tokens=512)
    with ServerThread(config) as running:
        yield running


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_api_keys(keyed):
    with httpx.Client(base_url=keyed.url, timeout=120) as http:
        missing = http.post("/api/chat", json=CHAT)
        assert missing.status_code == 401
        need = "this server needs an API key: send the header 'Authorization: Bearer <key>'"
        assert missing.json() == {"error": need}
        wrong = http.get("/v1/models", headers=_auth("key-alphx"))
        assert wrong.status_code == 401
        assert wrong.json()["error"] == {"message": "the API key is not valid; check the key the server was started "
                                                    "with", "type": "authentication_error", "param": None,
                                         "code": "invalid_api_key"}
        assert http.get("/metrics").status_code == 401
        assert http.post("/api/chat", json=CHAT, headers=_auth("key-alpha")).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="nope", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="key-beta", max_retries=0)
    assert [m.id for m in good.models.list().data] == ["all-MiniLM-L6-v2", "smollm2-135m-instruct", TINY]
    assert ollama.Client(host=keyed.url, headers=_auth("key-beta")).chat(
        model=TINY, messages=[{"role": "user", "content": "x"}], options={"num_predict": 2}).done


def test_rate_limit_per_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=60) as http:
        statuses = [http.get("/api/version", headers=_auth("key-rate")).status_code for _ in range(31)]
        assert statuses[:30] == [200] * 30 and statuses[30] == 429
        limited = http.get("/api/version", headers=_auth("key-rate"))
        assert limited.status_code == 429 and limited.headers["retry-after"] == "2"
        assert limited.json() == {"error": "rate limit of 30 requests per minute reached for this key; retry after 2 s"}
        assert http.get("/api/version", headers=_auth("key-beta")).status_code == 200  # other keys unaffected


def test_queue_full_and_streams_per_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=120) as http:  # the model is loaded (it has a scheduler)
        assert http.post("/api/chat", json=CHAT, headers=_auth("key-beta")).status_code == 200
    sched = next(m for m in keyed.app.state.serve.registry.loaded() if m.scheduler).scheduler
    sched.pause()
    held: dict[str, httpx.Response] = {}

    def hold() -> None:  # one request parked in the queue while the batch is paused
        with httpx.Client(base_url=keyed.url, timeout=120) as c:
            held["resp"] = c.post("/api/chat", json=CHAT, headers=_auth("key-alpha"))

    thread = threading.Thread(target=hold)
    try:
        thread.start()
        while sched.queued == 0:
            thread.join(0.01)
        with httpx.Client(base_url=keyed.url, timeout=60) as http:
            second = http.post("/v1/chat/completions", headers=_auth("key-alpha"),
                               json={"model": TINY, "messages": CHAT["messages"], "max_tokens": 2})
            assert second.status_code == 429 and second.headers["retry-after"] == "2"
            assert second.json()["error"]["message"] == ("this key already has 1 generations running, the limit is "
                                                         "1; wait for one to finish")
            full = http.post("/api/chat", json=CHAT, headers=_auth("key-beta"))
            assert full.status_code == 503 and full.headers["retry-after"] == "2"
            assert full.json() == {"error": f"the generation queue of {TINY} is full (1 waiting); retry after the "
                                            "Retry-After delay"}
            assert http.post("/api/embed", json={"model": "all-MiniLM-L6-v2", "input": "x"},
                             headers=_auth("key-beta")).status_code == 200  # embeddings do not queue
    finally:
        sched.resume()
        thread.join(120)
    assert held["resp"].status_code == 200 and held["resp"].json()["done"] is True
    with httpx.Client(base_url=keyed.url, timeout=60) as http:  # the slot and the queue are free again
        assert http.post("/api/chat", json=CHAT, headers=_auth("key-alpha")).status_code == 200


def test_metrics_and_access_log_without_prompt_text(keyed, caplog):
    secret = "purple-elephant-prompt"
    with caplog.at_level("INFO", logger="arrowengine.serve"), httpx.Client(base_url=keyed.url, timeout=120) as http:
        chat = {**CHAT, "messages": [{"role": "user", "content": secret}]}
        assert http.post("/api/chat", json=chat, headers=_auth("key-beta")).status_code == 200
        text = http.get("/metrics", headers=_auth("key-beta")).text
    assert 'arrowengine_requests_total{route="/api/chat",status="200"}' in text
    for name in ("arrowengine_time_to_first_token_seconds_count", "arrowengine_queue_seconds_count",
                 "arrowengine_decode_tokens_per_second_count", "arrowengine_generated_tokens_total"):
        line = next(ln for ln in text.splitlines() if ln.startswith(name))
        assert float(line.split()[-1]) >= 1, line
    assert "arrowengine_loaded_models 2.0" in text or "arrowengine_loaded_models 1.0" in text
    records = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("POST /api/chat 200") for m in records)
    assert any(m.startswith("generation id=") and "prompt_tokens=" in m for m in records)
    assert not any(secret in m for m in records)


def test_config_validation_and_key_file_errors(tmp_path):
    with pytest.raises(ServeConfigError, match=r"ServeConfig.max_batch=0 is invalid; use an integer >= 1"):
        ServeConfig(max_batch=0)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ServeConfigError, match="holds no key; write one key per line"):
        load_api_keys(empty)
    with pytest.raises(ServeConfigError, match="cannot read the API key file"):
        load_api_keys(tmp_path / "missing.txt")


def test_binding_beyond_loopback_without_keys_warns(models_dir, caplog):
    with caplog.at_level("WARNING", logger="arrowengine.serve"):
        ServerThread(ServeConfig(host="0.0.0.0", port=0, models_dir=models_dir))  # built, never started
    assert any("LISTENING ON 0.0.0.0 WITHOUT API KEYS" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level("WARNING", logger="arrowengine.serve"):
        ServerThread(ServeConfig(host="0.0.0.0", port=0, models_dir=models_dir, api_keys=("k",)))
    assert not caplog.records


def test_cli_serve_defaults_to_loopback():
    from arrowengine.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.models, args.api_key_file) == ("127.0.0.1", 11434, None, None)
