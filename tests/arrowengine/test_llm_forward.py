"""Our Llama forward against transformers' own, on tiny random Llamas built from real configs."""

from __future__ import annotations

import pytest
import torch

from arrowengine.runtime.llm import UnsupportedModelError
from arrowengine.runtime.llm.llama import LlamaForward
from tests.arrowengine.llm_support import tiny_llama


def _prefill(fwd: LlamaForward, ids: torch.Tensor) -> torch.Tensor:
    positions = torch.arange(ids.shape[1]).expand_as(ids)
    return fwd.forward(ids, positions, fwd.new_cache(ids.shape[0], ids.shape[1]), 0, None, last_only=False)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 5000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
])
def test_prefill_logits_equal_transformers(rope: dict) -> None:
    model = tiny_llama(1, rope_parameters=rope)
    ids = torch.randint(0, 512, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids).logits
    ours = _prefill(LlamaForward(model), ids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_decode_with_cache_equals_transformers() -> None:
    model = tiny_llama(2, tie=False)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(ids).logits
    fwd = LlamaForward(model)
    cache = fwd.new_cache(2, 24)
    # a prefill of 8 tokens, then one token at a time through the cache
    steps = [fwd.forward(ids[:, :8], torch.arange(8).expand(2, 8), cache, 0, None, last_only=False)]
    for t in range(8, 24):
        steps.append(fwd.forward(ids[:, t:t + 1], torch.full((2, 1), t), cache, t))
    torch.testing.assert_close(torch.cat(steps, dim=1), ref, rtol=1e-5, atol=1e-5)


def test_chunked_prefill_after_cache_uses_offset_causal_mask() -> None:
    model = tiny_llama(3)
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
    fwd = LlamaForward(model)
    cache = fwd.new_cache(1, 20)
    first = fwd.forward(ids[:, :12], torch.arange(12)[None], cache, 0, None, last_only=False)
    second = fwd.forward(ids[:, 12:], torch.arange(12, 20)[None], cache, 12, None, last_only=False)
    torch.testing.assert_close(torch.cat([first, second], dim=1), ref, rtol=1e-5, atol=1e-5)


def test_fp32_shares_weights_and_fusion_matches() -> None:
    model = tiny_llama(4)
    fwd = LlamaForward(model)
    layer = model.model.layers[0]
    assert fwd.layers[0].qkv[0].weight.data_ptr() == layer.self_attn.q_proj.weight.data_ptr()
    assert fwd.layers[0].gate_up[1].weight.data_ptr() == layer.mlp.up_proj.weight.data_ptr()
    assert fwd.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    fused = LlamaForward(model, fuse=True)
    assert len(fused.layers[0].qkv) == 1 and fused.layers[0].qkv[0].out_features == 64 + 2 * 32
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(_prefill(fused, ids), _prefill(fwd, ids), rtol=1e-5, atol=1e-5)


def test_bfloat16_copy_is_close_to_fp32() -> None:
    model = tiny_llama(5)
    ids = torch.randint(0, 512, (1, 16), generator=torch.Generator().manual_seed(4))
    ref = _prefill(LlamaForward(model), ids)
    bf16 = LlamaForward(model, dtype=torch.bfloat16)
    assert len(bf16.layers[0].qkv) == 1 and bf16.layers[0].qkv[0].weight.dtype == torch.bfloat16
    assert bf16.weight_bytes_per_token * 2 == pytest.approx(LlamaForward(model).weight_bytes_per_token, rel=0.01)
    out = _prefill(bf16, ids)
    assert torch.nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999


def test_non_llama_model_is_refused() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError) as info:
        LlamaForward(model)
    assert str(info.value) == ("LLM runs Llama-architecture models only; this model has model_type='gpt2' "
                               "(use transformers generate for it, or convert a Llama model)")


def test_length_dependent_rope_is_refused() -> None:
    model = tiny_llama(6, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    with pytest.raises(UnsupportedModelError) as info:
        LlamaForward(model)
    assert str(info.value) == ("LLM does not support rope_type='dynamic' (its tables change with sequence "
                               "length); supported: ['default', 'linear', 'llama3', 'yarn']")
