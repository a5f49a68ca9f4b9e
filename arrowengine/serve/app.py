"""The ASGI app: both APIs' routes, ``/metrics``, error rendering in each API's shape, the access log.

Errors a client causes (``RequestError``) become their HTTP status with the API's error body: OpenAI's
``{"error": {"message", "type", "param", "code"}}`` under ``/v1``, Ollama's ``{"error": "..."}`` elsewhere,
plus ``Retry-After`` on 429 / 503. The access log records method, path, status, duration and key id, never
a body. The lifespan unloads expired models every second and, at shutdown, stops every scheduler (running
streams get ``shutdown_grace_s`` to finish).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import RequestError
from arrowengine.serve.routes_ollama import OLLAMA_ROUTES
from arrowengine.serve.routes_openai import OPENAI_ROUTES, openai_error_body
from arrowengine.serve.state import ServerState, state_of

__all__ = ["build_app"]

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("arrowengine.serve.access")


def _error_response(request: Request, exc: Exception) -> Response:
    if not isinstance(exc, RequestError):
        logger.exception("serve: unexpected error on %s", request.url.path, exc_info=exc)
    status = exc.status if isinstance(exc, RequestError) else 500
    if request.url.path.startswith("/v1/"):
        body: dict[str, Any] = openai_error_body(exc)
    else:
        body = {"error": str(exc) if isinstance(exc, RequestError) else f"internal error: {exc}"}
    headers = {}
    if isinstance(exc, RequestError) and exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    return JSONResponse(body, status_code=status, headers=headers)


async def _request_error(request: Request, exc: Exception) -> Response:
    return _error_response(request, exc)


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text format."""
    state = state_of(request)
    state.admit(request)
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


class AccessLog:
    """ASGI middleware: one log line and the request metrics per HTTP request (no bodies, no prompts)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = time.perf_counter() - started
            path = scope["path"]
            route = path if path.startswith(("/api/", "/v1/", "/metrics")) else "other"
            state: ServerState | None = getattr(scope["app"].state, "serve", None)
            if state is not None:
                state.metrics.requests.labels(route, str(status)).inc()
                state.metrics.request_seconds.labels(route).observe(elapsed)
            key_id = scope.get("state", {}).get("key_id", "-")
            client = scope.get("client") or ("-", 0)
            access_logger.info("%s %s %s %.1f ms key=%s client=%s", scope["method"], path, status, elapsed * 1000,
                               key_id, client[0])


def build_app(config: ServeConfig | None = None) -> Starlette:
    """The Starlette app serving the models of ``config.models_dir``."""
    config = config or ServeConfig()
    state = ServerState.build(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def expire() -> None:
            while True:
                await asyncio.sleep(1.0)
                state.registry.expire()

        task = asyncio.create_task(expire())
        try:
            yield
        finally:
            task.cancel()
            await asyncio.to_thread(state.registry.close)
            logger.info("serve: stopped")

    app = Starlette(routes=[*OLLAMA_ROUTES, *OPENAI_ROUTES, Route("/metrics", metrics, methods=["GET"])],
                    exception_handlers={RequestError: _request_error, Exception: _request_error},
                    lifespan=lifespan)
    app.state.serve = state
    app.add_middleware(AccessLog)
    return app
