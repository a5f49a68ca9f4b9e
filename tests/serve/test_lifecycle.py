"""Model cache eviction, client disconnect freeing the batch row, graceful shutdown finishing a stream."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import ollama

from arrowengine.serve import ServeConfig, ServerThread
from tests.serve.conftest import TINY


def _config(models_dir: Path, **overrides) -> ServeConfig:
    return ServeConfig(port=0, models_dir=models_dir, llm_options={"dtype": "float32"}, context_tokens=512,
                       **overrides)


def _wait_for(predicate, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_lru_cache_holds_at_most_max_loaded(models_dir):
    with ServerThread(_config(models_dir, max_loaded_models=2)) as server:
        client = ollama.Client(host=server.url)
        for tag in ("latest", "fp32", "latest", "bf16"):  # precisions of the tiny model: separate cache entries
            client.generate(model=f"{TINY}:{tag}", prompt="hi", options={"num_predict": 2})
        # fp32 was the least recently used (latest was used after it), so loading bf16 evicted it
        assert sorted(m.model for m in client.ps().models) == [f"{TINY}:bf16", f"{TINY}:latest"]


def test_client_disconnect_cancels_and_frees_the_row(models_dir):
    with ServerThread(_config(models_dir, max_batch=1)) as server:
        body = {"model": TINY, "prompt": "count", "options": {"num_predict": 256, "temperature": 0}}
        with httpx.Client(base_url=server.url, timeout=120) as http:
            with http.stream("POST", "/api/generate", json=body) as resp:
                first = json.loads(next(resp.iter_lines()))
                assert first["done"] is False
            # the connection is closed after one line: the scheduler drops the sequence and frees its row
            sched = server.app.state.serve.registry.loaded()[0].scheduler
            assert _wait_for(lambda: sched.running == 0 and sched.queued == 0)
            metrics = http.get("/metrics").text
            assert 'arrowengine_generations_total{reason="cancelled"} 1.0' in metrics
            done = http.post("/api/generate", json={**body, "stream": False, "options": {"num_predict": 3}})
            assert done.status_code == 200 and done.json()["eval_count"] >= 1  # the single row serves again


def test_graceful_shutdown_finishes_the_running_stream(models_dir):
    server = ServerThread(_config(models_dir, shutdown_grace_s=60)).start()
    lines: list[dict] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": TINY, "prompt": "go", "options": {"num_predict": 40, "temperature": 0}}
        with httpx.Client(base_url=server.url, timeout=120) as http, \
                http.stream("POST", "/api/generate", json=body) as resp:
            for line in resp.iter_lines():
                lines.append(json.loads(line))
                started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(120)
    server.stop(timeout=120)
    thread.join(120)
    assert lines[-1]["done"] is True and lines[-1]["done_reason"] in ("stop", "length")
    assert lines[-1]["eval_count"] == len([ln for ln in lines if not ln["done"]]) or lines[-1]["done_reason"] == "stop"
    assert not server._thread.is_alive()
