"""Errors of the consolidator, rooted in :class:`memory.MemoryStoreError` (hence ``arrowengine.errors.EngineError``).

Each also derives from the builtin a caller would catch; messages name the problem and the fix.
"""

from __future__ import annotations

from memory.errors import MemoryStoreError

__all__ = ["ConsolidationError", "JournalError", "LLMRequestError", "LLMTransportError", "LLMUnavailableError"]


class ConsolidationError(MemoryStoreError):
    """Root of the consolidator's errors."""


class LLMTransportError(ConsolidationError, ConnectionError):
    """The LLM endpoint could not be reached or failed on its side (connection, timeout, HTTP 5xx): retried."""


class LLMUnavailableError(LLMTransportError):
    """No LLM answered after every retry; the consolidator falls back to extractive principles (when allowed)."""


class LLMRequestError(ConsolidationError, ValueError):
    """The LLM endpoint refused the request itself (unknown model, bad option: HTTP 4xx): never retried."""


class JournalError(ConsolidationError, OSError):
    """The consolidation journal cannot be written or read (a store on an object-store URI needs ``journal_dir``)."""
