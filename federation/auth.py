"""Bearer-token authentication (server middleware) and the token / TLS settings both sides read.

The token travels as the gRPC header ``authorization: Bearer <token>``; with a token set on the server, every
call without the right header is refused with ``FlightUnauthenticatedError`` before any handler runs.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

import pyarrow.flight as flight

from federation.errors import SyncRejectedError

__all__ = ["TOKEN_ENV", "TokenMiddlewareFactory", "auth_headers", "resolve_token"]

logger = logging.getLogger(__name__)

TOKEN_ENV = "ARROWENGINE_SYNC_TOKEN"


def resolve_token(token: str | None = None, token_file: str | os.PathLike[str] | None = None) -> str | None:
    """The token: ``token``, else the first line of ``token_file``, else ``$ARROWENGINE_SYNC_TOKEN``, else None."""
    if token:
        return token
    if token_file:
        path = Path(token_file)
        if not path.is_file():
            raise SyncRejectedError(f"token file {path} does not exist; write the token into it (one line)")
        value = path.read_text(encoding="utf-8").strip()
        if not value:
            raise SyncRejectedError(f"token file {path} is empty; write the token into it (one line)")
        return value
    return os.environ.get(TOKEN_ENV) or None


def auth_headers(token: str | None) -> list[tuple[bytes, bytes]]:
    """The call headers carrying ``token`` (none without one)."""
    return [(b"authorization", f"Bearer {token}".encode())] if token else []


class TokenMiddlewareFactory(flight.ServerMiddlewareFactory):
    """Refuses every call whose ``authorization`` header is not ``Bearer <token>`` (constant-time compare)."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> None:
        """Check the header of one call; raise to refuse it."""
        values = headers.get("authorization", [])
        if not any(hmac.compare_digest(str(v).encode(), self._expected) for v in values):
            logger.warning("sync server: refused a %s call without a valid bearer token", info.method)
            raise flight.FlightUnauthenticatedError(
                "missing or wrong bearer token: send the header 'authorization: Bearer <token>' with the server's "
                "token (ARROWENGINE_SYNC_TOKEN or --token-file)")
        return None
