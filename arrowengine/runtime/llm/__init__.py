"""Causal LM runtime: our own Llama forward, KV cache, sampling, streaming, chat and perplexity.

``LLM`` is the entry point; ``SamplingParams`` says how tokens are picked and when generation stops.
"""

from __future__ import annotations

from arrowengine.runtime.llm.engine import LLM
from arrowengine.runtime.llm.errors import (
    ContextOverflowError,
    InvalidPromptError,
    SamplingConfigError,
    UnsupportedModelError,
)
from arrowengine.runtime.llm.generate import RowOutput
from arrowengine.runtime.llm.sampling import SamplingParams

__all__ = [
    "LLM",
    "ContextOverflowError",
    "InvalidPromptError",
    "RowOutput",
    "SamplingConfigError",
    "SamplingParams",
    "UnsupportedModelError",
]
