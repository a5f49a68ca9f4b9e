"""Errors of the causal LM runtime, each rooted in :class:`arrowengine.errors.EngineError`."""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = ["ContextOverflowError", "InvalidPromptError", "SamplingConfigError", "UnsupportedModelError"]


class UnsupportedModelError(EngineError, ValueError):
    """The model is not a Llama-architecture causal LM (or uses a variant the fast forward lacks)."""


class SamplingConfigError(EngineError, ValueError):
    """A sampling parameter is out of range (a negative temperature, ``top_p`` above 1, ...)."""


class ContextOverflowError(EngineError, ValueError):
    """A prompt (or the newest chat turn with the system message) does not fit the context window."""


class InvalidPromptError(EngineError, ValueError):
    """A prompt, chat message list or perplexity text is malformed or empty."""
