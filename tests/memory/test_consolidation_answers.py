"""The consolidator against answers it must refuse, transport failures, and the extractive fallback.

The LLM is a real HTTP server on 127.0.0.1 (port 0) speaking Ollama's ``/api/chat`` with canned replies, reached
through the official ``ollama`` client (:class:`memory.consolidation.OllamaLLM`); the store and embedder are real.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memory import MemoryStore
from memory.consolidation import (
    ConsolidationConfig,
    Consolidator,
    LLMConfig,
    OllamaLLM,
    OpenAILLM,
    check_answer,
    principle_id,
    read_runs,
)
from memory.lance_io import connect

COFFEE = ["I drink two cups of coffee every morning before work.",
          "Coffee after lunch keeps me awake in long meetings.",
          "Without my morning coffee I get a headache by noon.",
          "I always buy a large coffee on the way to the office."]
DOGS = ["My dog needs a long walk every evening.",
        "We take the dog to the park on weekends to run around.",
        "The dog gets restless when we skip his walk.",
        "Walking my dog is the best part of my day."]
OTHER = ["The train was late again this morning.", "I finished reading a novel about pirates."]
GOOD = json.dumps({"principles": ["I rely on coffee every day to stay alert."]})


class CannedOllama(BaseHTTPRequestHandler):
    """``POST /api/chat`` (Ollama) and ``/v1/chat/completions`` (OpenAI) answer the next (status, content) of
    ``replies`` (the last one repeats)."""

    replies: ClassVar[list[tuple[int, str]]] = []
    calls: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls.append(body)
        status, content = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        if status != 200:
            payload = {"error": content} if self.path.startswith("/api/") else {"error": {"message": content}}
        elif self.path == "/v1/chat/completions":  # the OpenAI API's shape
            payload = {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}
        else:
            payload = {"model": body["model"], "created_at": "2026-11-30T00:00:00Z", "done": True,
                       "done_reason": "stop", "message": {"role": "assistant", "content": content}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def canned() -> Iterator[tuple[str, type[CannedOllama]]]:
    handler = type("Handler", (CannedOllama,), {"replies": [], "calls": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def themed(store: MemoryStore) -> MemoryStore:
    store.add_many(DOGS + OTHER + COFFEE)  # newest first in selection: the coffee cluster is planned first
    return store


CFG = ConsolidationConfig(similarity_threshold=0.4, min_cluster_size=3, max_clusters=1,
                          llm=LLMConfig(retries=2, backoff_s=0.01))


def _tiers(store: MemoryStore) -> dict[str, int]:
    return store.stats()["tiers"]


@pytest.mark.parametrize(("answer", "why"), [
    ("", "empty answer"),
    ("   \n", "empty answer"),
    ("You seem to like coffee a lot.", "non-JSON answer"),
    ('{"principles": ["unterminated', "non-JSON answer"),
    (json.dumps({"summary": "coffee"}), "wrong JSON shape ('principles' is a required property)"),
    (json.dumps({"principles": "coffee"}), "wrong JSON shape ('coffee' is not of type 'array')"),
    (json.dumps({"principles": []}), "wrong JSON shape ([] should be non-empty)"),
    (json.dumps({"principles": [{"name": "coffee"}]}), "wrong JSON shape ({'name': 'coffee'} is not of type"),
    (json.dumps({"principles": ["coffee " * 80]}), "principle longer than its sources"),
    (json.dumps({"principles": ["Tectonic plates drift a few centimetres per year."]}), "off-topic principle"),
])
def test_a_bad_answer_writes_nothing_and_archives_nothing(themed, canned, answer, why):
    url, handler = canned
    handler.replies = [(200, answer)]
    before = _tiers(themed)
    report = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert (report.clusters, report.principles, report.archived, report.rejected) == (1, 0, 0, 1)
    assert report.llm_calls == 1 and len(handler.calls) == 1
    assert report.reasons[0]["reason"].startswith(why)
    assert _tiers(themed) == before == {"short": 10, "long": 0, "archived": 0}
    (logged,) = read_runs(connect(themed.path, 0.0))
    assert logged["reasons"][0]["reason"].startswith(why) and logged["archived"] == 0


def test_a_valid_answer_becomes_a_linked_principle_and_archives_its_sources(themed, canned):
    url, handler = canned
    handler.replies = [(200, "Sure! ```json\n" + GOOD + "\n```")]  # fences and chatter around the object
    report = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert (report.principles, report.archived, report.llm_calls) == (1, 4, 1), report.reasons
    (pid,) = report.principle_ids
    principle = themed.get(pid)
    assert principle.tier == "long" and principle.content == "I rely on coffee every day to stay alert."
    assert principle.metadata["method"] == "llm" and principle.metadata["kind"] == "principle"
    sources = {themed.get(s).content: themed.get(s) for s in principle.source_ids}
    assert set(sources) == set(COFFEE) and all(m.tier == "archived" for m in sources.values())
    assert {link.target for link in principle.links if link.kind == "consolidated"} == set(principle.source_ids)
    assert all(any(link.target == pid for link in m.links) for m in sources.values())
    messages = handler.calls[0]["messages"]
    assert messages[0]["role"] == "system" and all(t in messages[-1]["content"] for t in COFFEE)
    assert _tiers(themed) == {"short": 6, "long": 1, "archived": 4}
    # the next run does not consolidate the same memories again
    again = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert again.principles in (0, 1) and set(COFFEE).isdisjoint(
        themed.get(p).content for p in again.principle_ids)


def test_an_off_topic_principle_beside_an_on_topic_one_is_dropped_not_written(themed, canned):
    url, handler = canned
    handler.replies = [(200, json.dumps({"principles": ["Tectonic plates drift a few centimetres per year.",
                                                        "I rely on coffee every day to stay alert."]}))]
    report = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert (report.principles, report.archived, report.rejected) == (1, 4, 0), report.reasons
    assert themed.get(report.principle_ids[0]).content == "I rely on coffee every day to stay alert."
    assert not any("Tectonic" in h.content for h in themed.search("tectonic plates drift", k=20))


def test_an_answer_with_junk_inside_the_object_is_repaired_from_its_principles_array(themed, canned):
    url, handler = canned
    handler.replies = [(200, GOOD[:-1] + ', "and also"]')]  # SmolLM2's habit: text after the array, no "}"
    report = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert (report.principles, report.archived, report.repaired) == (1, 4, 1)


def test_transport_errors_are_retried_with_backoff_and_counted(themed, canned):
    url, handler = canned
    handler.replies = [(503, "busy"), (503, "busy"), (200, GOOD)]
    report = Consolidator(themed, OllamaLLM("smollm2", url), CFG).run()
    assert (report.llm_failures, report.llm_calls, report.principles, report.archived) == (2, 1, 1, 4)


def test_an_openai_compatible_endpoint_through_the_openai_client(themed, canned):
    url, handler = canned
    handler.replies = [(503, "overloaded"), (200, GOOD)]
    report = Consolidator(themed, OpenAILLM("gpt-x", f"{url}/v1", "key"), CFG).run()
    assert (report.llm_failures, report.llm_calls, report.principles, report.archived) == (1, 1, 1, 4)
    assert report.llm.startswith("openai:gpt-x@") and handler.calls[-1]["max_tokens"] == 96


def test_the_delete_policy_deletes_sources_once_the_principle_is_durable(themed, canned):
    url, handler = canned
    handler.replies = [(200, GOOD)]
    cfg = ConsolidationConfig(similarity_threshold=0.4, max_clusters=1, source_policy="delete")
    report = Consolidator(themed, OllamaLLM("smollm2", url), cfg).run()
    assert (report.principles, report.archived) == (1, 4)
    principle = themed.get(report.principle_ids[0])
    assert len(principle.source_ids) == 4 and not [link for link in principle.links if link.kind == "consolidated"]
    assert _tiers(themed) == {"short": 6, "long": 1, "archived": 0} and len(themed) == 7


def test_a_refused_request_is_not_retried_and_archives_nothing(themed, canned):
    url, handler = canned
    handler.replies = [(404, "model 'nope' not found")]
    report = Consolidator(themed, OllamaLLM("nope", url), CFG).run()
    assert len(handler.calls) == 1 and report.archived == 0
    assert report.reasons[0]["reason"].startswith("LLM refused the request")


def test_no_reachable_llm_falls_back_to_extractive_and_says_so(themed, caplog):
    closed = OllamaLLM("smollm2", "http://127.0.0.1:9")  # discard port: nothing listens
    cfg = ConsolidationConfig(similarity_threshold=0.4, max_clusters=2, llm=LLMConfig(retries=1, backoff_s=0.01))
    with caplog.at_level(logging.WARNING, logger="memory.consolidation"):
        report = Consolidator(themed, closed, cfg).run()
    assert report.extractive == 2 and report.llm_calls == 0 and report.llm_failures == 2  # one retry, then down
    assert "extractive principles for the rest of this run" in caplog.text
    for pid in report.principle_ids:
        principle = themed.get(pid)
        assert principle.metadata["method"] == "extractive"
        assert principle.content in {themed.get(s).content for s in principle.source_ids}
    cfg_strict = ConsolidationConfig(similarity_threshold=0.4, llm=LLMConfig(retries=0, fallback_extractive=False))
    strict = Consolidator(themed, closed, cfg_strict).run()
    assert strict.archived == 0 and all(r["reason"].startswith("LLM unavailable") for r in strict.reasons)


def _unit_embed(texts: list[str]) -> np.ndarray:
    return np.ones((len(texts), 4), dtype=np.float32) / 2.0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_check_answer_never_raises_and_never_accepts_more_text_than_the_sources(answer):
    sources = ["I like tea.", "Tea in the evening calms me."]
    verdict = check_answer(answer, sources, np.ones(4, np.float32), _unit_embed, max_principles=3,
                           min_relevance=0.3)
    assert verdict.accepted != (verdict.reason is not None)
    assert sum(len(p) for p in verdict.principles) <= sum(len(s) for s in sources)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True), st.randoms())
def test_principle_ids_depend_on_the_set_of_sources_not_their_order(ids, rnd):
    shuffled = list(ids)
    rnd.shuffle(shuffled)
    assert principle_id("run", ids, 0) == principle_id("run", shuffled, 0)
    assert principle_id("run", ids, 0) not in (principle_id("other", ids, 0), principle_id("run", ids, 1))
