"""The AI-OS style facade: dict in, dict out, over the ``MemoryStore`` API."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["FacadeMixin"]

_STORE_KEYS = ("modality", "session", "links", "importance", "embedding")


class FacadeMixin:
    """``store_memory`` / ``retrieve_memory`` / ``search_memories`` / ``get_related_memories``."""

    def store_memory(self, memory: Mapping[str, Any]) -> str:
        """Store ``{"content" (or "text"), ...}``; keys the store does not know go into metadata."""
        memory = dict(memory)
        content = memory.pop("content", None)
        if content is None:
            content = memory.pop("text", None)
        kwargs = {key: memory.pop(key) for key in _STORE_KEYS if key in memory}
        metadata = dict(memory.pop("metadata", None) or {})
        metadata.update(memory)
        return self.add(content, metadata=metadata, **kwargs)

    def retrieve_memory(self, memory_id: str) -> dict[str, Any]:
        """The memory as a dict, its content reconstructed when it was archived."""
        return self.get(memory_id).to_dict()

    def search_memories(self, query: Any, top_k: int = 5) -> list[dict[str, Any]]:
        """Hybrid, link-reranked search; each result a dict with the memory fields and the scores."""
        return [dict(hit.__dict__) for hit in self.search(query, k=top_k)]

    def get_related_memories(self, memory_id: str) -> list[dict[str, Any]]:
        """Linked memories, strongest first, each dict carrying ``link_weight`` and ``link_kind``."""
        return [{**mem.to_dict(), "link_weight": link.weight, "link_kind": link.kind}
                for link, mem in self.related(memory_id)]
