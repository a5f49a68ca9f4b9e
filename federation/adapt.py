"""Apply a :class:`LoRACard` to a loaded ``arrowengine.LLM`` and remove it again, without reloading the base.

The card becomes low-rank terms beside the LLM's projections (``LLM.add_low_rank``): the mapped base weights are
never written, so removing the card restores the base bit for bit and several adapters may be stacked.
"""

from __future__ import annotations

import logging
from typing import Any

from federation.card import LoRACard

__all__ = ["apply_card", "remove_card"]

logger = logging.getLogger(__name__)


def _key(adapter: str) -> str:
    return f"lora:{adapter}"


def apply_card(llm: Any, card: LoRACard) -> int:
    """Add ``card`` to ``llm`` (an ``arrowengine.LLM``), replacing an earlier version of the same adapter.

    Returns the number of projections changed. The ``alpha / r`` scale is folded into B once, here.
    """
    remove_card(llm, card.meta.adapter)  # a new version replaces the old one, never stacks on it
    modules = card.modules()
    for module, (a, b) in modules.items():
        llm.add_low_rank(_key(card.meta.adapter), module, a, b * card.meta.scale)
    logger.info("applied LoRA card %s v%d (rank %d) to %d projections", card.meta.adapter, card.meta.version,
                card.meta.rank, len(modules))
    return len(modules)


def remove_card(llm: Any, adapter: str | LoRACard) -> int:
    """Remove adapter ``adapter`` (a name or a card) from ``llm``; returns the number of projections restored."""
    name = adapter.meta.adapter if isinstance(adapter, LoRACard) else adapter
    return llm.remove_low_rank(_key(name))
