"""Errors of the model server, each rooted in :class:`arrowengine.errors.EngineError` and a builtin.

Every request error carries its HTTP status and the OpenAI error ``type`` / ``code``; the routes render it
in each API's own shape (``{"error": "..."}`` for Ollama, ``{"error": {"message", "type", "code"}}`` for
OpenAI), so the mapping from problem to status lives here once.
"""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "AuthError",
    "BadRequestError",
    "BodyTooLargeError",
    "ModelNotFoundError",
    "OverloadedError",
    "RateLimitError",
    "RequestError",
    "ServeConfigError",
]


class ServeConfigError(EngineError, ValueError):
    """A server setting is out of range or an API key file cannot be read."""


class RequestError(EngineError):
    """An error a client caused; ``status`` is its HTTP status."""

    status = 500
    type = "server_error"
    code: str | None = None
    retry_after: int | None = None


class BadRequestError(RequestError, ValueError):
    """Malformed JSON, a field of the wrong type or range, a prompt over the context window."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class AuthError(RequestError, PermissionError):
    """A missing or wrong API key."""

    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(RequestError, LookupError):
    """The request names a model the models directory does not hold (or one that cannot serve the route)."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class BodyTooLargeError(RequestError, ValueError):
    """The request body is over ``ServeConfig.max_body_bytes``."""

    status = 413
    type = "invalid_request_error"
    code = "body_too_large"


class RateLimitError(RequestError, RuntimeError):
    """A key is over its request rate or its concurrent stream limit."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class OverloadedError(RequestError, RuntimeError):
    """The generation queue is full (or the server is shutting down): retry after ``retry_after`` seconds."""

    status = 503
    type = "server_error"
    code = "overloaded"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after
