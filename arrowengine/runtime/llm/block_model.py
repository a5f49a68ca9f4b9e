"""A Llama model whose matrices stay GGUF blocks: the module tree ``LlamaForward`` reads, without ``nn.Module``.

``transformers``' modules cannot hold quantized blocks, and building them would allocate float weights. For a
model directory converted from GGUF with its blocks kept (schema V3), :func:`load_block_model` returns plain
objects with the same attribute paths (``model.model.layers[i].self_attn.q_proj.weight`` ...) whose weights
are the mapped ``GGUFBlocks`` (matrices) or tensors (norms), so the forward takes them as it takes a module.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any

import torch

from arrowengine.runtime.llm.errors import UnsupportedModelError

__all__ = ["build_block_model", "holds_blocks", "load_block_model", "quantize_q8_0_state"]

logger = logging.getLogger(__name__)

_LAYER_PARTS = {
    "self_attn": ("q_proj", "k_proj", "v_proj", "o_proj"),
    "mlp": ("gate_proj", "up_proj", "down_proj"),
}


def holds_blocks(weights: Any) -> bool:
    """True when the opened ``WeightFile`` stores any GGUF block tensor."""
    from arrowengine.format.schema import GGUF_QUANT_TYPES

    return any(weights.info(name).quant is not None and weights.info(name).quant.quant_type in GGUF_QUANT_TYPES
               for name in weights)


def _linear(state: dict[str, Any], prefix: str) -> SimpleNamespace:
    if f"{prefix}.weight" not in state:
        raise UnsupportedModelError(f"the model file lacks {prefix}.weight; re-convert the model")
    return SimpleNamespace(weight=state[f"{prefix}.weight"], bias=state.get(f"{prefix}.bias"))


def quantize_q8_0_state(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every Llama matrix and the token embedding / lm_head as Q8_0 blocks (norms stay float).

    The float tensors are read once (from the mapping) and only the blocks are kept: a quarter of the bytes.
    """
    from quant.gguf import quantize_q8_0

    matrices = tuple(f".{group}.{p}.weight" for group, names in _LAYER_PARTS.items() for p in names)
    out = dict(state)
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() == 2 and (
                name.endswith(matrices) or name in ("model.embed_tokens.weight", "lm_head.weight")):
            out[name] = quantize_q8_0(value, name=name)
    return out


def load_block_model(model_dir: str | os.PathLike[str], weights: Any, *, quantize: bool = False) -> SimpleNamespace:
    """The model tree over ``weights`` (an open ``WeightFile`` of ``model_dir``) with its config; ``quantize``
    turns a float model's matrices into Q8_0 blocks first (:func:`quantize_q8_0_state`)."""
    from transformers import AutoConfig, GenerationConfig

    config = AutoConfig.from_pretrained(os.fspath(model_dir), local_files_only=True)
    try:
        generation = GenerationConfig.from_pretrained(os.fspath(model_dir), local_files_only=True)
    except OSError:  # no generation_config.json: the config's eos is enough
        generation = None
    state = weights.state_dict()
    model = build_block_model(config, quantize_q8_0_state(state) if quantize else state, generation)
    model.arrowengine_weights = weights
    if quantize:
        logger.info("LLM: %s quantized to Q8_0 blocks at load", model_dir)
    else:
        logger.info("LLM: %s holds GGUF blocks; matrices stay in the mapping", model_dir)
    return model


def build_block_model(config: Any, state: dict[str, Any], generation_config: Any = None) -> SimpleNamespace:
    """The model tree over ``state`` (transformers Llama names; ``GGUFBlocks`` or tensors) and ``config``."""
    layers = []
    for i in range(config.num_hidden_layers):
        base = f"model.layers.{i}"
        parts = {group: SimpleNamespace(**{p: _linear(state, f"{base}.{group}.{p}") for p in names})
                 for group, names in _LAYER_PARTS.items()}
        layers.append(SimpleNamespace(
            input_layernorm=_linear(state, f"{base}.input_layernorm"),
            post_attention_layernorm=_linear(state, f"{base}.post_attention_layernorm"), **parts))
    embed = _linear(state, "model.embed_tokens")
    head = _linear(state, "lm_head") if "lm_head.weight" in state else embed  # tied: the same blocks
    inner = SimpleNamespace(embed_tokens=embed, norm=_linear(state, "model.norm"), layers=layers)
    return SimpleNamespace(config=config, model=inner, lm_head=head, generation_config=generation_config)
