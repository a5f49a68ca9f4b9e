"""``CognitiveLoop``: perceive (text, speech, image), recall across modalities, optionally respond, remember.

One :meth:`CognitiveLoop.step` encodes a composite perception into the joint space, retrieves the memories of
any modality nearest to the fused perception, optionally asks an LLM for an answer grounded in them, and stores
the perception (one memory per modality, linked to each other and to what it recalled). The store is any object
with :class:`memory.MemoryStore`'s ``add_many`` and ``search`` (multimodal does not import memory:
the dependency points the other way).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from multimodal.errors import ModalityInputError

__all__ = ["CognitiveLoop", "LoopConfig", "MemoryLike", "OllamaResponder", "Step"]

logger = logging.getLogger(__name__)


class MemoryLike(Protocol):
    """What the loop needs of a memory store (``memory.MemoryStore`` has it)."""

    def add_many(self, items: Sequence[Mapping[str, Any]]) -> list[str]: ...

    def search(self, query: Any = None, k: int = 10, **kwargs: Any) -> list[Any]: ...


@dataclass(frozen=True)
class LoopConfig:
    """How much to recall, whether to store, and how to prompt the LLM.

    ``k`` memories are recalled per step (``modalities`` limits them, None: all); recalled memories with cosine
    at least ``link_min_score`` are linked to the new perception (kind ``recalled``); ``remember=False`` makes a
    step read-only.
    """

    k: int = 5
    modalities: tuple[str, ...] | None = None
    link_min_score: float = 0.0
    remember: bool = True
    max_new_tokens: int = 96
    system_prompt: str = ("You are an assistant with a memory. Answer the user in one or two sentences, using only "
                          "the memories listed; say so if they do not help.")


@dataclass
class Step:
    """One loop step: the fused perception, what it recalled, the answer (if asked) and the stored ids."""

    embedding: np.ndarray
    recalled: list[Any]
    response: str | None = None
    stored: dict[str, str] = field(default_factory=dict)  # modality -> new memory id


class OllamaResponder:
    """Chat with a model on an Ollama-API server (Ollama itself, or ``arrowengine serve``)."""

    def __init__(self, host: str, model: str) -> None:
        from ollama import Client

        self.client, self.model = Client(host=host), model

    def chat(self, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 96) -> str:
        """The assistant's reply to ``messages`` (greedy)."""
        reply = self.client.chat(model=self.model, messages=list(messages),
                                 options={"num_predict": max_new_tokens, "temperature": 0.0})
        return reply["message"]["content"]


class CognitiveLoop:
    """Perceive, recall, respond, remember, with one joint encoder and one memory store.

    Args:
        store: a ``memory.MemoryStore`` (or anything :class:`MemoryLike`) in the joint space (MiniLM text space).
        joint: a :class:`multimodal.JointEncoder` (default: ``JointEncoder()``, the trained ``models/joint-fusion``).
        llm: None (no answers), an ``arrowengine.LLM``, or an :class:`OllamaResponder` for a server.
        config: :class:`LoopConfig`.
    """

    def __init__(self, store: MemoryLike, joint: Any | None = None, llm: Any | None = None,
                 config: LoopConfig | None = None) -> None:
        if joint is None:
            from multimodal.joint import JointEncoder

            joint = JointEncoder()
        self.store, self.joint, self.llm = store, joint, llm
        self.config = config or LoopConfig()

    def step(self, text: str | None = None, audio: Any = None, image: Any = None, *, sampling_rate: int = 16_000,
             session: str | None = None, respond: bool | None = None) -> Step:
        """One perception -> recall -> (answer) -> remember cycle; ``respond`` defaults to "an LLM is set"."""
        vectors: dict[str, np.ndarray] = {}
        if text is not None:
            vectors["text"] = self.joint.encode_text(text)
        if audio is not None:
            vectors["audio"] = self.joint.encode_audio(audio, sampling_rate)
        if image is not None:
            vectors["image"] = self.joint.encode_image(image)
        if not vectors:
            raise ModalityInputError("a perception needs at least one of text=, audio=, image=")
        fused = self.joint.fuse(vectors)[0]
        cfg = self.config
        recalled = self.store.search(fused, k=cfg.k, modalities=list(cfg.modalities) if cfg.modalities else None)
        respond = self.llm is not None if respond is None else respond
        response = self._respond(text, audio, image, recalled) if respond else None
        stored = self._remember(vectors, text, audio, image, session, recalled) if cfg.remember else {}
        return Step(fused, recalled, response, stored)

    def _respond(self, text: str | None, audio: Any, image: Any, recalled: list[Any]) -> str:
        if self.llm is None:
            raise ModalityInputError("respond=True needs an llm: pass arrowengine.LLM(...) or OllamaResponder(...)")
        notes = "\n".join(f"- [{h.modality}] {h.content}" for h in recalled) or "- (nothing recalled)"
        parts = [text] if text else []
        if audio is not None:
            parts.append("(the user also said something, heard as speech)")
        if image is not None:
            parts.append("(the user also showed an image)")
        messages = [{"role": "system", "content": f"{self.config.system_prompt}\nMemories:\n{notes}"},
                    {"role": "user", "content": " ".join(parts)}]
        return str(self.llm.chat(messages, max_new_tokens=self.config.max_new_tokens)).strip()

    def _remember(self, vectors: dict[str, np.ndarray], text: str | None, audio: Any, image: Any,
                  session: str | None, recalled: list[Any]) -> dict[str, str]:
        contents = {"text": text, "audio": _reference(audio, "audio perception"),
                    "image": _reference(image, "image perception")}
        modalities = list(vectors)
        ids = {m: uuid.uuid4().hex for m in modalities}
        recall_links = [(h.id, float(max(h.similarity, 0.0)), "recalled") for h in recalled
                        if h.similarity >= self.config.link_min_score]
        # one write: the parts of a perception link to each other and to what they recalled (both ends)
        items = [{"id": ids[m], "content": contents[m], "modality": m, "embedding": vectors[m][0],
                  "session": session, "metadata": {"perception": modalities},
                  "links": [(ids[o], 1.0, "co-perceived") for o in modalities if o != m] + recall_links}
                 for m in modalities]
        self.store.add_many(items)
        return ids


def _reference(value: Any, fallback: str) -> str:
    return str(value) if isinstance(value, (str, os.PathLike)) else fallback
