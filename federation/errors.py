"""Errors of federation, each rooted in :class:`arrowengine.errors.EngineError` and the matching builtin."""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "BaseVersionMismatchError",
    "CardError",
    "DeltaError",
    "DeltaIntegrityError",
    "FederationError",
    "SyncRejectedError",
    "SyncUnavailableError",
]


class FederationError(EngineError):
    """Root of the federation errors."""


class CardError(FederationError, ValueError):
    """A LoRA card is malformed: missing metadata, a tensor of the wrong shape, a non-finite value."""


class DeltaError(FederationError, ValueError):
    """A delta cannot be encoded or applied (unknown method, wrong shape, NaN / Inf, checksum mismatch)."""


class BaseVersionMismatchError(DeltaError):
    """A delta was made against another version of the adapter than the one it is applied to: full sync."""


class DeltaIntegrityError(DeltaError):
    """A delta arrived damaged (a row checksum failed, parts are missing): nothing was applied, and the sender
    falls back to a full sync (R5.6)."""


class SyncRejectedError(FederationError, PermissionError):
    """The sync server refused a request (bad token, invalid delta, oversized message); the message says why."""


class SyncUnavailableError(FederationError, ConnectionError):
    """The sync server cannot be reached (down, wrong address, TLS required or not offered)."""
