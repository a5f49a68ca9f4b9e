"""Fixtures of the server tests: a models dir with a tiny chat model and the real MiniLM, and running servers.

The tiny model is built here from the real SmolLM2 config (2 layers, 64 wide, the real tokenizer and chat
template), saved as a transformers checkpoint and converted like any model, so every server test runs
the real load path in a fraction of a second; parity against ``LLM.chat`` holds for any weights.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMOLLM = REPO / "models" / "smollm2-135m-instruct"
MINILM = REPO / "models" / "all-MiniLM-L6-v2"
TINY = "tiny-chat"
EMBED = "all-MiniLM-L6-v2"
REAL = "smollm2-135m-instruct"


def _need(path: Path) -> None:
    if not (path / "weights.parquet").is_file():
        pytest.skip(f"{path} is missing; run python scripts/fetch_models.py")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny-chat`` (random 2-layer SmolLM2) and links to the real MiniLM and SmolLM2."""
    _need(SMOLLM)
    _need(MINILM)
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    from arrowengine.converters import convert

    root = tmp_path_factory.mktemp("serve_models")
    hf = root / "hf-tiny"
    config = AutoConfig.from_pretrained(SMOLLM)
    config.update({"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 512,
                   "initializer_range": 0.3})  # wide weights: varied tokens rather than one repeated
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(hf)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        if (SMOLLM / name).is_file():
            shutil.copy(SMOLLM / name, hf / name)
    models = root / "models"
    models.mkdir()
    convert(hf, models / TINY)
    os.symlink(MINILM, models / EMBED)
    os.symlink(SMOLLM, models / REAL)
    return models


SERVER_OPTIONS = {"max_batch": 4, "max_queue": 8, "llm_options": {"dtype": "float32"}, "max_tokens_limit": 256,
                  "context_tokens": 512, "max_body_bytes": 64 * 1024}


@pytest.fixture(scope="session")
def server(models_dir: Path) -> Iterator:
    """A server with the test limits on 127.0.0.1, any free port; stopped at the end of the session."""
    from arrowengine.serve import ServeConfig, ServerThread

    with ServerThread(ServeConfig(port=0, models_dir=models_dir, **SERVER_OPTIONS)) as running:
        yield running


@pytest.fixture(scope="session")
def tiny_llm(models_dir: Path):
    """The tiny model as ``LLM`` with the server's construction options (the parity reference)."""
    from arrowengine import LLM

    return LLM(models_dir / TINY, max_context=SERVER_OPTIONS["context_tokens"], **SERVER_OPTIONS["llm_options"])


@pytest.fixture(scope="session")
def minilm_reference():
    """``embed(texts)``: the real MiniLM through ``TextEncoder`` (the embeddings the server must return)."""
    from arrowengine import TextEncoder

    encoder = TextEncoder(MINILM)
    return encoder.encode
