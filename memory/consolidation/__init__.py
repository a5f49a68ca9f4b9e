"""memory.consolidation: short-term memories become long-term principles, without losing one.

:class:`Consolidator` (one run), the LLM clients behind :class:`LLMClient`, the triggers
(:class:`ConsolidationDaemon`: nightly cron + storage pressure) and the run log. See ``docs`` in the README's
"Memory consolidation" section and ``arrowengine memory consolidate --help``.
"""

from memory.consolidation.config import ConsolidationConfig, LLMConfig, TriggerConfig, load_consolidation_config
from memory.consolidation.consolidator import Consolidator, principle_id
from memory.consolidation.errors import (
    ConsolidationError,
    JournalError,
    LLMRequestError,
    LLMTransportError,
    LLMUnavailableError,
)
from memory.consolidation.llm import EmbeddedLLM, LLMClient, OllamaLLM, OpenAILLM, open_llm
from memory.consolidation.runlog import RunReport, read_runs
from memory.consolidation.triggers import ConsolidationDaemon, nightly_trigger, storage_pressure
from memory.consolidation.validation import ANSWER_SCHEMA, Verdict, check_answer

__all__ = [
    "ANSWER_SCHEMA",
    "ConsolidationConfig",
    "ConsolidationDaemon",
    "ConsolidationError",
    "Consolidator",
    "EmbeddedLLM",
    "JournalError",
    "LLMClient",
    "LLMConfig",
    "LLMRequestError",
    "LLMTransportError",
    "LLMUnavailableError",
    "OllamaLLM",
    "OpenAILLM",
    "RunReport",
    "TriggerConfig",
    "Verdict",
    "check_answer",
    "load_consolidation_config",
    "nightly_trigger",
    "open_llm",
    "principle_id",
    "read_runs",
    "storage_pressure",
]
