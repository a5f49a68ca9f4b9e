"""The decode fast paths: the single-token step, fused projections, bf16 and int8 / int4 weight-only matmuls."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.runtime.llm import LLM, UnsupportedModelError
from arrowengine.runtime.llm.decode import DecodeStep
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.weights import Projection
from tests.arrowengine.llm_support import smollm2, tiny_llama


def _greedy_steps(fwd: LlamaForward, step, ids: torch.Tensor, new: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens and the stacked logits of ``new`` decode steps after a prefill, through ``step``."""
    bsz, width = ids.shape
    cache = fwd.new_cache(bsz, width + new)
    logits = fwd.forward(ids, torch.arange(width).expand(bsz, width), cache, 0)[:, -1]
    tokens, seen = [], []
    for t in range(new):
        nxt = logits.argmax(-1)
        tokens.append(nxt.tolist())
        logits = step(nxt[:, None], torch.full((bsz, 1), width + t), cache, width + t, None)[:, -1]
        seen.append(logits)
    return tokens, torch.stack(seen)


def test_decode_step_is_bitwise_equal_to_the_general_forward() -> None:
    model = tiny_llama(21, tie=False)
    fwd = LlamaForward(model)
    ids = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    general = _greedy_steps(fwd, fwd.forward, ids, 12)
    fast = _greedy_steps(fwd, DecodeStep(fwd), ids, 12)
    assert fast[0] == general[0]
    assert torch.equal(fast[1], general[1])


def test_decode_step_with_padding_mask_equals_general_forward() -> None:
    model = tiny_llama(22)
    fwd = LlamaForward(model)
    cache_a, cache_b = fwd.new_cache(2, 8), fwd.new_cache(2, 8)
    ids = torch.randint(0, 512, (2, 6), generator=torch.Generator().manual_seed(1))
    for cache in (cache_a, cache_b):
        fwd.forward(ids, torch.arange(6).expand(2, 6), cache, 0)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., :2] = False  # row 1 had two pad slots
    feed, pos = torch.tensor([[5], [7]]), torch.tensor([[6], [4]])
    expect = fwd.forward(feed, pos, cache_a, 6, mask)
    got = DecodeStep(fwd)(feed, pos, cache_b, 6, mask)
    assert torch.equal(got, expect)
    assert torch.equal(cache_a.kv[:, :, :, :7], cache_b.kv[:, :, :, :7])  # slot 7 was never written


def test_fused_projections_match_unfused() -> None:
    model = tiny_llama(23)
    ids = torch.randint(0, 512, (2, 10), generator=torch.Generator().manual_seed(2))
    plain, fused = LlamaForward(model, fuse=False), LlamaForward(model, fuse=True)
    assert len(plain.layers[0].qkv) == 3 and len(fused.layers[0].qkv) == 1
    tokens_plain, logits_plain = _greedy_steps(plain, DecodeStep(plain), ids, 10)
    tokens_fused, logits_fused = _greedy_steps(fused, DecodeStep(fused), ids, 10)
    assert tokens_fused == tokens_plain
    torch.testing.assert_close(logits_fused, logits_plain, rtol=1e-6, atol=1e-6)


@settings(max_examples=20, deadline=None)
@given(out_features=st.sampled_from([8, 40, 96]), in_features=st.sampled_from([32, 64, 160]),
       seed=st.integers(0, 2**16))
def test_int8_projection_error_is_bounded_per_channel(out_features: int, in_features: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    proj = Projection(w, None, dtype=torch.bfloat16, quant="int8")
    err = (proj.dense_weight().float() - w).abs().amax(dim=1)
    # round-to-nearest: at most half a step of amax / 127 per element (plus the bf16 rounding of the scale)
    assert bool((err <= w.abs().amax(dim=1) / 127 * 0.51 + 1e-6).all())
    x = torch.randn(3, in_features, generator=g).bfloat16()
    torch.testing.assert_close(proj(x).float(), x.float() @ proj.dense_weight().float().t(), rtol=0.02, atol=0.05)


def test_int4_projection_reconstructs_rtn_groups() -> None:
    from quant.rtn import dequantize, quantize

    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(3))
    proj = Projection(w, None, dtype=torch.bfloat16, quant="int4", group_size=32)
    expect = dequantize(quantize(w, 4, 32, symmetric=False))
    # the kernel holds scale and zero in bf16: the same RTN grid up to bf16 rounding of its parameters
    torch.testing.assert_close(proj.dense_weight().float(), expect, rtol=0.02, atol=0.02)
    assert proj.nbytes == 64 * 128 // 2 + 64 * (128 // 32) * 2 * 2


def test_int4_falls_back_to_int8_when_groups_do_not_divide() -> None:
    proj = Projection(torch.randn(16, 48), None, dtype=torch.bfloat16, quant="int4", group_size=32)
    assert proj.kind == "int8"


def test_quantized_forward_is_close_and_smaller() -> None:
    model = tiny_llama(24)
    ids = torch.randint(0, 512, (1, 12), generator=torch.Generator().manual_seed(4))
    ref = LlamaForward(model)
    positions = torch.arange(12)[None]
    expect = ref.forward(ids, positions, ref.new_cache(1, 12), 0, last_only=False)
    bf16 = LlamaForward(model, dtype=torch.bfloat16)
    for quant in ("int8", "int4"):
        fwd = LlamaForward(model, dtype=torch.bfloat16, weight_quant=quant)
        assert fwd.lm_head.kind == quant and fwd.embed.dtype == torch.float32  # the mapped table, rows cast
        assert fwd.weight_bytes_per_token < 0.6 * bf16.weight_bytes_per_token
        out = fwd.forward(ids, positions, fwd.new_cache(1, 12), 0, last_only=False)
        cosine = torch.nn.functional.cosine_similarity(out.flatten(), expect.flatten(), dim=0)
        assert cosine > (0.999 if quant == "int8" else 0.95), (quant, cosine)


def test_bad_weight_options_are_refused(pytestconfig: pytest.Config) -> None:
    model = tiny_llama(25)
    tokenizer = smollm2(pytestconfig)[1]
    with pytest.raises(UnsupportedModelError) as info:
        LLM.from_model(model, tokenizer, weight_quant="int3")
    assert str(info.value) == "weight_quant='int3' is not supported; use None or one of ['int8', 'int4']"
    with pytest.raises(UnsupportedModelError) as info:
        LLM.from_model(model, tokenizer, weight_quant="int8", dtype="float32")
    assert str(info.value) == ("weight_quant='int8' runs bfloat16 activations (its fp32-activation kernels are "
                               "6x-30x slower); pass dtype='bfloat16' or leave dtype unset")
    with pytest.raises(UnsupportedModelError):
        LLM.from_model(model, tokenizer, weight_quant="int4", group_size=48)
    assert LLM.from_model(model, tokenizer, weight_quant="int8").forward.dtype == torch.bfloat16


@pytest.mark.slow
def test_smollm2_quantized_paths_keep_perplexity_and_agree_with_fp32(pytestconfig: pytest.Config) -> None:
    from arrowengine.bench.datasets import chat_prompts
    from arrowengine.datasets import chitchat_messages

    model, tokenizer = smollm2(pytestconfig)
    text = "\n".join(chitchat_messages(430)[400:])
    prompts = chat_prompts(tokenizer, 4)
    fp32 = LLM.from_model(model, tokenizer)
    ppl32 = fp32.perplexity(text, window=512)
    ref = [r.token_ids for r in fp32.generate_ids(prompts, max_new_tokens=16)]
    for options, max_delta in (({"dtype": "bfloat16"}, 0.02), ({"weight_quant": "int8"}, 0.02)):
        llm = LLM.from_model(model, tokenizer, **options)
        assert llm.perplexity(text, window=512) / ppl32 - 1 < max_delta, options
        rows = [r.token_ids for r in llm.generate_ids(prompts, max_new_tokens=16)]
        agree = sum(a == b for out, want in zip(rows, ref, strict=True) for a, b in zip(out, want, strict=False))
        assert agree >= 0.5 * sum(map(len, ref)), (options, rows, ref)
