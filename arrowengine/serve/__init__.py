"""``arrowengine serve``: a local model server with the Ollama and OpenAI APIs and continuous batching.

``serve(ServeConfig(...))`` runs it (the CLI's ``arrowengine serve``); ``build_app`` gives the ASGI app;
``ServerThread`` runs it on a background thread (tests, benchmarks). See ``docs/serve.md``.
"""

from __future__ import annotations

from arrowengine.serve.app import build_app
from arrowengine.serve.config import ServeConfig, load_api_keys
from arrowengine.serve.errors import (
    AuthError,
    BadRequestError,
    BodyTooLargeError,
    ModelNotFoundError,
    OverloadedError,
    RateLimitError,
    RequestError,
    ServeConfigError,
)
from arrowengine.serve.runner import ServerThread, serve

__all__ = [
    "AuthError",
    "BadRequestError",
    "BodyTooLargeError",
    "ModelNotFoundError",
    "OverloadedError",
    "RateLimitError",
    "RequestError",
    "ServeConfig",
    "ServeConfigError",
    "ServerThread",
    "build_app",
    "load_api_keys",
    "serve",
]
