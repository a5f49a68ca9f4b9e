"""Prometheus metrics of one server (its own ``CollectorRegistry``) and the per-request log line.

Per request: queue time (submit -> a cache row), time to first token, decode tokens/s; per route: request
count by status and latency. The request log names the key id, token counts and timings, never the prompt
or completion text unless ``ServeConfig.log_prompts`` (debugging) is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from arrowengine.serve.scheduler import GenerationRequest

__all__ = ["ServeMetrics"]

logger = logging.getLogger(__name__)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_RATE = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)


class ServeMetrics:
    """The counters, histograms and gauges of ``/metrics``."""

    def __init__(self, *, log_prompts: bool = False) -> None:
        self.registry = CollectorRegistry()
        self.log_prompts = log_prompts
        r = self.registry
        self.requests = Counter("arrowengine_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.request_seconds = Histogram("arrowengine_request_seconds", "HTTP request latency (to the last byte)",
                                         ["route"], buckets=_LATENCY, registry=r)
        self.queue_seconds = Histogram("arrowengine_queue_seconds", "Time a generation waited for a batch row",
                                       buckets=_LATENCY, registry=r)
        self.ttft_seconds = Histogram("arrowengine_time_to_first_token_seconds",
                                      "Time from submit to the first generated token", buckets=_LATENCY, registry=r)
        self.tokens_per_second = Histogram("arrowengine_decode_tokens_per_second",
                                           "Decode rate of one generation after its first token", buckets=_RATE,
                                           registry=r)
        self.prompt_tokens = Counter("arrowengine_prompt_tokens", "Prompt tokens of finished generations",
                                     registry=r)
        self.cached_tokens = Counter("arrowengine_prompt_cached_tokens",
                                     "Prompt tokens taken from a cached prefix instead of prefilled", registry=r)
        self.generated_tokens = Counter("arrowengine_generated_tokens", "Tokens generated", registry=r)
        self.finished = Counter("arrowengine_generations", "Generations by finish reason", ["reason"], registry=r)

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge read at scrape time (running / queued sequences, loaded models)."""
        Gauge(name, documentation, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

    def observe_generation(self, req: GenerationRequest) -> None:
        """Record one finished generation (called on the scheduler thread) and log it without its text."""
        self.finished.labels(req.finish_reason or "unknown").inc()
        self.prompt_tokens.inc(req.prompt_tokens)
        self.cached_tokens.inc(req.cached_tokens)
        self.generated_tokens.inc(req.completion_tokens)
        queue = ttft = rate = None
        if req.admitted_at is not None:
            queue = req.admitted_at - req.enqueued_at
            self.queue_seconds.observe(queue)
        if req.first_token_at is not None:
            ttft = req.first_token_at - req.enqueued_at
            self.ttft_seconds.observe(ttft)
            if req.finished_at is not None and req.completion_tokens > 1:
                rate = (req.completion_tokens - 1) / max(req.finished_at - req.first_token_at, 1e-9)
                self.tokens_per_second.observe(rate)
        logger.info("generation id=%s key=%s prompt_tokens=%d cached_tokens=%d completion_tokens=%d queue_ms=%s "
                    "ttft_ms=%s tokens_per_s=%s finish=%s%s", req.id, req.key_id, req.prompt_tokens,
                    req.cached_tokens, req.completion_tokens,
                    _ms(queue), _ms(ttft), f"{rate:.1f}" if rate is not None else "-", req.finish_reason,
                    f" text={req.text!r}" if self.log_prompts else "")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"
