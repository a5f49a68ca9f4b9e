"""API keys and per-key limits: constant-time key check, a token-bucket rate limit, concurrent stream slots.

Without configured keys every client counts as the key ``-`` (one shared budget). Keys are compared with
``hmac.compare_digest`` against every configured key (no early exit), so the time taken does not reveal
how much of a key was right; logs and limits only ever see ``ServeConfig.key_id`` (a short hash).
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from dataclasses import dataclass

from arrowengine.serve.config import ServeConfig
from arrowengine.serve.errors import AuthError, RateLimitError

__all__ = ["KeyGuard"]


@dataclass
class _Bucket:
    tokens: float
    updated: float


class KeyGuard:
    """Authenticates requests and enforces the per-key request rate and concurrent stream limits."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self._keys = [k.encode() for k in config.api_keys]
        self._buckets: dict[str, _Bucket] = {}
        self._streams: dict[str, int] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> str:
        """The key id of an ``Authorization: Bearer <key>`` header; ``AuthError`` when keys are set and it is wrong."""
        if not self._keys:
            return "-"
        if not authorization:
            raise AuthError("this server needs an API key: send the header 'Authorization: Bearer <key>'")
        scheme, _, key = authorization.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError("the Authorization header must be 'Bearer <key>'")
        given = key.strip().encode()
        ok = False
        for known in self._keys:
            ok |= hmac.compare_digest(given, known)
        if not ok:
            raise AuthError("the API key is not valid; check the key the server was started with")
        return self.config.key_id(key.strip())

    def check_rate(self, key_id: str) -> None:
        """Take one request from ``key_id``'s bucket (``rate_limit_per_minute`` per minute, bursts up to it)."""
        rate = self.config.rate_limit_per_minute
        if rate <= 0:
            return
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(key_id, _Bucket(float(rate), now))
            bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.updated) * rate / 60.0)
            bucket.updated = now
            if bucket.tokens < 1.0:
                wait = math.ceil((1.0 - bucket.tokens) * 60.0 / rate)
                raise RateLimitError(f"rate limit of {rate} requests per minute reached for this key; "
                                     f"retry after {wait} s", retry_after=wait)
            bucket.tokens -= 1.0

    def open_stream(self, key_id: str) -> None:
        """Hold one of ``key_id``'s concurrent generation slots (``max_streams_per_key``) until ``close_stream``."""
        limit = self.config.max_streams_per_key
        with self._lock:
            current = self._streams.get(key_id, 0)
            if limit and current >= limit:
                raise RateLimitError(f"this key already has {current} generations running, the limit is {limit}; "
                                     f"wait for one to finish", retry_after=self.config.retry_after_s)
            self._streams[key_id] = current + 1

    def close_stream(self, key_id: str) -> None:
        """Give back a slot taken by ``open_stream``."""
        with self._lock:
            left = self._streams.get(key_id, 0) - 1
            if left > 0:
                self._streams[key_id] = left
            else:
                self._streams.pop(key_id, None)
