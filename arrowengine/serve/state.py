"""``ServerState``: the objects one running server shares between its routes (kept on ``app.state.serve``)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from arrowengine.serve.config import ServeConfig
from arrowengine.serve.fields import read_json
from arrowengine.serve.limits import KeyGuard
from arrowengine.serve.metrics import ServeMetrics
from arrowengine.serve.registry import ModelRegistry
from arrowengine.serve.service import ServeService

__all__ = ["ServerState", "state_of"]


@dataclass
class ServerState:
    """Config, model registry, generation service, key guard and metrics of one server."""

    config: ServeConfig
    registry: ModelRegistry
    service: ServeService
    guard: KeyGuard
    metrics: ServeMetrics

    @classmethod
    def build(cls, config: ServeConfig) -> ServerState:
        """Wire the parts together for ``config``."""
        metrics = ServeMetrics(log_prompts=config.log_prompts)
        registry = ModelRegistry(config, on_finish=metrics.observe_generation)
        guard = KeyGuard(config)
        state = cls(config, registry, ServeService(config, registry, guard), guard, metrics)
        metrics.gauge("arrowengine_loaded_models", "Models in memory", lambda: len(registry.loaded()))
        metrics.gauge("arrowengine_running_sequences", "Sequences holding a batch row",
                      lambda: sum(m.scheduler.running for m in registry.loaded() if m.scheduler))
        metrics.gauge("arrowengine_queued_requests", "Generations waiting for a batch row",
                      lambda: sum(m.scheduler.queued for m in registry.loaded() if m.scheduler))
        return state

    def admit(self, request: Request) -> str:
        """Authenticate ``request`` and take one request from its key's rate budget; returns the key id."""
        key_id = self.guard.authenticate(request.headers.get("authorization"))
        request.state.key_id = key_id
        self.guard.check_rate(key_id)
        return key_id

    async def body(self, request: Request) -> dict:
        """The JSON body under the size limit."""
        return await read_json(request, self.config.max_body_bytes)


def state_of(request: Request) -> ServerState:
    """The server state of the app handling ``request``."""
    return request.app.state.serve
