"""LLM over GGUF blocks: a tiny random Llama quantized by ``gguf`` (Q4_1 / Q4_0 matrices, Q8_0 embedding), run by
the native decoder layer, the torch step over the block kernels and the dequantized fp32 reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from arrowengine.runtime.llm.block_model import build_block_model
from arrowengine.runtime.llm.decode import DecodeStep
from arrowengine.runtime.llm.kv_cache import KVCache
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.native_step import NativeBlockStep
from arrowengine.runtime.native.gguf import block_kernels
from quant.gguf import GGUF_TYPES, GGUFBlocks
from tests.arrowengine.llm_support import tiny_llama

pytestmark = pytest.mark.skipif(block_kernels() is None, reason="the native GGUF block kernels do not run here")


def to_blocks(weight: torch.Tensor, quant_type: str) -> GGUFBlocks:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    data = quantize(weight.detach().float().numpy(), GGMLQuantizationType[GGUF_TYPES[quant_type].ggml_name])
    return GGUFBlocks(quant_type, tuple(weight.shape), torch.from_numpy(np.ascontiguousarray(data)))


def block_and_float_models(seed: int = 0, **shape):
    """The block model and a float LlamaForCausalLM holding exactly the dequantized blocks (``shape``: tiny_llama's
    hidden / heads / kv_heads)."""
    model = tiny_llama(seed, layers=3, **shape)
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied
        if name.endswith("embed_tokens.weight"):
            state[name] = to_blocks(tensor, "gguf_q8_0")
        elif tensor.dim() == 2:
            state[name] = to_blocks(tensor, "gguf_q4_0" if "down_proj" in name else "gguf_q4_1")
        else:
            state[name] = tensor.detach().clone()
    dense = {k: v.dequantize() if isinstance(v, GGUFBlocks) else v for k, v in state.items()}
    model.load_state_dict(dense, strict=False)
    model.tie_weights()
    return build_block_model(model.config, state), model


def greedy(step, forward: LlamaForward, prompt: torch.Tensor, new: int,
           forced: list[list[int]] | None = None) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy tokens and the logits of each step (``forced``: feed these tokens instead, teacher forcing)."""
    bsz, width = prompt.shape
    cache = forward.new_cache(bsz, width + new)
    logits = forward.forward(prompt, torch.arange(width)[None].expand(bsz, -1), cache, 0)[:, -1]
    tokens, all_logits = [], []
    for t in range(new):
        nxt = logits.argmax(-1) if forced is None else torch.tensor([row[t] for row in forced])
        tokens.append(nxt.tolist())
        pos = torch.full((bsz, 1), width + t)
        logits = step(nxt[:, None], pos, cache, width + t)[:, -1]
        all_logits.append(logits)
    return [list(r) for r in zip(*tokens, strict=True)], torch.stack(all_logits)


def test_native_layer_matches_the_torch_step_and_the_float_reference() -> None:
    blocks, float_model = block_and_float_models(1)
    fwd = LlamaForward(blocks, weight_quant="gguf")
    assert fwd.lm_head.kind == "gguf" and fwd.layers[0].qkv[0].kind == "gguf" and len(fwd.layers[0].qkv) == 1
    native = DecodeStep(fwd)
    assert isinstance(native._step, NativeBlockStep)
    torch_step = DecodeStep(fwd)
    torch_step._step = torch_step._eager
    ref = LlamaForward(float_model)
    ref_step = DecodeStep(ref)
    prompt = torch.randint(3, 512, (3, 7), generator=torch.Generator().manual_seed(2))
    ours, ours_logits = greedy(native, fwd, prompt, 12)
    eager, eager_logits = greedy(torch_step, fwd, prompt, 12)
    assert ours == eager  # same block kernels: only float summation order differs
    torch.testing.assert_close(ours_logits, eager_logits, rtol=1e-4, atol=5e-4)
    # against the float reference fed the same tokens: int8 activation blocks vs float activations, close
    _, want_logits = greedy(ref_step, ref, prompt, 12, forced=ours)
    cosine = torch.nn.functional.cosine_similarity(ours_logits, want_logits, dim=-1)
    assert float(cosine.min()) > 0.995, cosine
    agree = (ours_logits.argmax(-1) == want_logits.argmax(-1)).float().mean()
    assert agree >= 0.8, agree


GROUPINGS = [(4, 4), (4, 2), (6, 2), (8, 2), (5, 1)]  # 1, 2, 3, 4 and 5 query heads per KV head


@pytest.mark.parametrize(("heads", "kv_heads", "kv_dtype"),
                         [(h, k, torch.float32) for h, k in GROUPINGS]
                         + [(h, k, torch.float16) for h, k in GROUPINGS if h // k <= 4])
def test_native_layer_with_64_wide_heads_in_every_grouping(heads, kv_heads, kv_dtype) -> None:
    """64-wide heads attend a KV head's whole group of query heads at once (1 to 4 per KV head; more go head by
    head, float32 cache only): the native step stays the torch step's (SDPA) to float summation order over the
    same cache dtype, and a row's logits in a batch are its logits alone, bit for bit."""
    blocks, _ = block_and_float_models(3, hidden=64 * heads, heads=heads, kv_heads=kv_heads)
    fwd = LlamaForward(blocks, weight_quant="gguf")
    native = DecodeStep(fwd)
    assert isinstance(native._step, NativeBlockStep)
    assert fwd.kv_dtype == (torch.float16 if heads // kv_heads <= 4 else torch.float32)  # the step's choice
    fwd.kv_dtype = kv_dtype
    torch_step = DecodeStep(fwd)
    torch_step._step = torch_step._eager
    fwd.kv_dtype = kv_dtype  # (the second DecodeStep set it again)
    prompt = torch.randint(3, 512, (3, 9), generator=torch.Generator().manual_seed(heads))
    ours, ours_logits = greedy(native, fwd, prompt, 10)
    _, eager_logits = greedy(torch_step, fwd, prompt, 10, forced=ours)
    # 3 layers of 64 x heads wide: the summation-order differences grow to ~6e-4 (also before the grouping); with
    # an fp16 cache a key or value the two steps computed a few float ulps apart can round to neighbouring halves
    # (one fp16 ulp: 1e-3 relative), which the later layers carry to ~2.5e-3
    atol = 2e-3 if kv_dtype == torch.float32 else 4e-3
    torch.testing.assert_close(ours_logits, eager_logits, rtol=1e-4, atol=atol)
    _, alone = greedy(native, fwd, prompt[1:2], 10, forced=ours[1:2])
    assert torch.equal(alone[:, 0], ours_logits[:, 1])


def test_native_layer_rounds_keys_and_values_into_an_fp16_cache_as_torch_does() -> None:
    """The native layer's fp16 append is torch's ``.to(torch.float16)`` (nearest even) of the keys and values it
    computes: layer 0's new slot, whose inputs do not depend on the cache, equals the float32-cache step's slot
    rounded by torch, bit for bit; an fp16 cache is what DecodeStep picks for 64-wide heads."""
    blocks, _ = block_and_float_models(6, hidden=128, heads=2, kv_heads=1)
    fwd = LlamaForward(blocks, weight_quant="gguf")
    step = DecodeStep(fwd)
    assert fwd.kv_dtype == torch.float16 and fwd.new_cache(1, 4).kv.dtype == torch.float16
    prompt = torch.randint(3, 512, (2, 6), generator=torch.Generator().manual_seed(6))
    caches = {}
    for dtype in (torch.float32, torch.float16):
        fwd.kv_dtype = dtype
        cache = caches[dtype] = fwd.new_cache(2, 7)
        fwd.forward(prompt, torch.arange(6)[None].expand(2, -1), cache, 0)
        step(torch.tensor([[5], [8]]), torch.full((2, 1), 6), cache, 6)
    new32, new16 = caches[torch.float32].kv[0, :, :, 6], caches[torch.float16].kv[0, :, :, 6]
    assert torch.equal(new16, new32.to(torch.float16))
    assert float(new32.abs().min()) > 0 and not torch.equal(new16.float(), new32)  # rounding did happen


@pytest.mark.parametrize("prompt_len", [5, 12])
def test_native_layer_respects_the_padding_mask(prompt_len) -> None:
    """Left padding hidden from a row's attention (prompt 12: the masked slots in the softmax's vector part too,
    prompt 5: in its scalar tail only)."""
    blocks, _ = block_and_float_models(2)
    fwd = LlamaForward(blocks, weight_quant="gguf")
    native = DecodeStep(fwd)
    torch_step = DecodeStep(fwd)
    torch_step._step = torch_step._eager
    cache_a, cache_b = fwd.new_cache(2, prompt_len + 3), fwd.new_cache(2, prompt_len + 3)
    prompt = torch.randint(3, 512, (2, prompt_len), generator=torch.Generator().manual_seed(3))
    positions = torch.arange(prompt_len)[None].expand(2, -1)
    for cache in (cache_a, cache_b):
        fwd.forward(prompt, positions, cache, 0)
    mask = torch.ones(2, 1, 1, prompt_len + 1, dtype=torch.bool)
    mask[0, ..., :2] = False  # row 0 is left-padded by two slots
    token = torch.tensor([[7], [9]])
    pos = torch.tensor([[prompt_len - 2], [prompt_len]])
    ours = native(token, pos, cache_a, prompt_len, mask)
    torch.testing.assert_close(ours, torch_step(token, pos, cache_b, prompt_len, mask), rtol=1e-4, atol=5e-4)
    torch.testing.assert_close(cache_a.kv[:, :, :, prompt_len], cache_b.kv[:, :, :, prompt_len], rtol=1e-4, atol=2e-4)
    unmasked = native(token, pos, cache_a, prompt_len, None)
    assert not torch.allclose(ours[0], unmasked[0], rtol=1e-4, atol=5e-4)  # the mask did hide slots
    torch.testing.assert_close(ours[1], unmasked[1], rtol=0, atol=0)


def test_native_rows_at_their_own_lengths_match_each_row_alone() -> None:
    """Continuous batching's step: rows of one cache at different lengths (and a hole), one C call per layer,
    each row's logits and K/V equal to that row decoded alone."""
    blocks, _ = block_and_float_models(5)
    fwd = LlamaForward(blocks, weight_quant="gguf")
    native = DecodeStep(fwd).native
    assert isinstance(native, NativeBlockStep)
    generator = torch.Generator().manual_seed(4)
    lengths = {0: 4, 2: 9, 3: 1}  # row 1 is free: never written
    shared = fwd.new_cache(4, 12)
    shared.kv.zero_()
    alone = {}
    for row, n in lengths.items():
        prompt = torch.randint(3, 512, (1, n), generator=generator)
        fwd.forward(prompt, torch.arange(n)[None], KVCache(shared.kv[:, row:row + 1]), 0)
        alone[row] = fwd.new_cache(1, 12)
        fwd.forward(prompt, torch.arange(n)[None], alone[row], 0)
    rows, tokens = [3, 0, 2], [11, 22, 33]
    got = native.rows(torch.tensor(tokens), torch.tensor(rows), torch.tensor([lengths[r] for r in rows]),
                      shared.layers)[:, -1]
    for i, row in enumerate(rows):
        n = lengths[row]
        want = native(torch.tensor([[tokens[i]]]), torch.tensor([[n]]), alone[row].layers, n, None)[:, -1]
        torch.testing.assert_close(got[i:i + 1], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared.kv[:, row, :, :n + 1], alone[row].kv[:, 0, :, :n + 1], rtol=1e-5,
                                   atol=1e-5)
    assert not shared.kv[:, 1].any()  # the free row is untouched


def test_float_model_keeps_the_torch_step() -> None:
    fwd = LlamaForward(tiny_llama(3))
    step = DecodeStep(fwd)
    assert step._step == step._eager


def word_tokenizer(vocab_size: int):
    """A self-contained word-level tokenizer of ``vocab_size`` tokens (ids 0..2 special), no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def block_model_dir(tmp_path_factory):
    from arrowengine.converters import ConvertedModel, write_model_dir

    blocks, float_model = block_and_float_models(4)
    state = {}
    for layer in range(3):
        base = f"model.layers.{layer}"
        for part in ("input_layernorm", "post_attention_layernorm"):
            state[f"{base}.{part}.weight"] = getattr(blocks.model.layers[layer], part).weight
        for group, names in (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")),
                             ("mlp", ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                state[f"{base}.{group}.{name}.weight"] = getattr(getattr(blocks.model.layers[layer], group),
                                                                 name).weight
    state["model.embed_tokens.weight"] = blocks.model.embed_tokens.weight
    state["model.norm.weight"] = blocks.model.norm.weight
    tok_dir = tmp_path_factory.mktemp("tok")
    word_tokenizer(512).save_pretrained(tok_dir)
    files = {p.name: p for p in tok_dir.iterdir() if p.is_file()}
    dst = tmp_path_factory.mktemp("tiny-gguf") / "model"
    config = {**float_model.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    write_model_dir(ConvertedModel(state_dict=state, config=config, files=files,
                                   source="test", source_format="gguf"), dst)
    return dst


def test_llm_dir_defaults_to_the_blocks_and_fp32_is_one_argument_away(block_model_dir, caplog) -> None:
    from arrowengine.runtime.llm import LLM

    with caplog.at_level("INFO", logger="arrowengine.runtime.llm.precision"):
        llm = LLM(block_model_dir)
    assert "LLM: precision auto -> gguf (the model holds GGUF blocks and the native kernels run here)" in caplog.text
    assert llm.forward.lm_head.kind == "gguf" and isinstance(llm.decode_step._step, NativeBlockStep)
    fp32 = LLM(block_model_dir, precision="fp32")
    assert fp32.forward.lm_head.kind == "dense" and fp32.forward.dtype == torch.float32
    prompts = [[5, 17, 300, 41], [9, 8, 7]]
    ours = [r.token_ids for r in llm.generate_ids(prompts, max_new_tokens=6, ignore_eos=True)]
    ref = [r.token_ids for r in fp32.generate_ids(prompts, max_new_tokens=6, ignore_eos=True)]
    assert all(len(r) == 6 for r in ours)
    assert sum(a == b for r, s in zip(ours, ref, strict=True) for a, b in zip(r, s, strict=True)) >= 6
    ppl, ppl32 = llm.perplexity("w5 w17 w300 w41 w9 w8 w7 w3"), fp32.perplexity("w5 w17 w300 w41 w9 w8 w7 w3")
    assert abs(ppl / ppl32 - 1) < 0.01


def test_llm_dir_without_avx2_dequantizes_once(block_model_dir, monkeypatch, caplog) -> None:
    from arrowengine.hardware import CpuInfo
    from arrowengine.runtime.llm import LLM, engine
    from arrowengine.runtime.native import gguf as native_gguf

    avx_only = CpuInfo("simulated", "x86_64", 2, 2**30, ("SSE4.2", "AVX"))
    monkeypatch.setattr(native_gguf, "cpu_info", lambda: avx_only)
    monkeypatch.setattr(engine, "cpu_info", lambda: avx_only)
    with caplog.at_level("INFO", logger="arrowengine.runtime.llm.precision"):
        llm = LLM(block_model_dir)
    assert ("LLM: precision auto -> fp32 (the native block kernels are unavailable here; the blocks are "
            "dequantized once)") in caplog.text
    assert llm.forward.lm_head.kind == "dense" and llm.decode_step._step == llm.decode_step._eager


@pytest.fixture(scope="module")
def float_model_dir(tmp_path_factory, block_model_dir):
    """The same tiny Llama as a float model directory (what ``arrowengine convert`` writes for a float source)."""
    from arrowengine.converters import ConvertedModel, write_model_dir

    _, float_model = block_and_float_models(4)
    state = {k: v.detach().clone() for k, v in float_model.state_dict().items() if k != "lm_head.weight"}
    files = {p.name: p for p in block_model_dir.iterdir() if p.name.startswith(("tokenizer", "special_tokens"))}
    dst = tmp_path_factory.mktemp("tiny-float") / "model"
    config = {**float_model.config.to_dict(), "architectures": ["LlamaForCausalLM"]}
    write_model_dir(ConvertedModel(state_dict=state, config=config, files=files, source="test",
                                   source_format="safetensors"), dst)
    return dst


def test_float_llm_dir_defaults_to_q8_0_blocks_made_at_load(float_model_dir) -> None:
    from arrowengine.hardware import cpu_info
    from arrowengine.runtime.llm import LLM
    from arrowengine.runtime.llm.precision import auto_precision

    if block_kernels() is None:
        pytest.skip("the native block kernels do not run here (no AVX2 + FMA or no C compiler)")
    # q8_0 where the CPU lacks native bf16 (this CI class), int8 with bf16 activations where it has it
    assert LLM(float_model_dir).precision == auto_precision(cpu_info().isa, has_blocks=False, block_kernels=True).name
    q8 = LLM(float_model_dir, precision="q8_0")
    assert q8.precision == "q8_0" and q8.forward.lm_head.kind == "gguf"
    assert q8.forward.lm_head.blocks.quant_type == "gguf_q8_0" and isinstance(q8.decode_step._step, NativeBlockStep)
    fp32 = LLM(float_model_dir, precision="fp32")
    text = "w5 w17 w300 w41 w9 w8 w7 w3 w77 w12 w140 w6"
    assert abs(q8.perplexity(text) / fp32.perplexity(text) - 1) < 0.01
    prompts = [[5, 17, 300, 41], [9, 8, 7]]
    ours = [r.token_ids for r in q8.generate_ids(prompts, max_new_tokens=6, ignore_eos=True)]
    assert all(len(r) == 6 for r in ours)


def test_q8_0_without_the_native_kernels_is_refused(float_model_dir, monkeypatch) -> None:
    from arrowengine.hardware import CpuInfo
    from arrowengine.runtime.llm import LLM, UnsupportedModelError, engine
    from arrowengine.runtime.native import gguf as native_gguf

    monkeypatch.setattr(native_gguf, "block_kernels", lambda isa=None: None)
    monkeypatch.setattr(engine, "cpu_info", lambda: CpuInfo("simulated", "x86_64", 2, 2**30, ("SSE4.2", "AVX")))
    assert LLM(float_model_dir).precision == "fp32"  # auto falls back
    with pytest.raises(UnsupportedModelError) as info:
        LLM(float_model_dir, precision="q8_0")
    assert str(info.value) == ("precision='q8_0' needs the native block kernels (AVX2 + FMA and a C compiler; the "
                               "reason is logged); use precision='fp32'")


def test_low_rank_terms_on_blocks_decode_through_the_torch_step(float_model_dir) -> None:
    """A LoRA term on a Q8_0 / GGUF model: prefill and decode both see it (the native layer step steps aside
    while it is applied), and removing it restores the native step and the base outputs exactly."""
    from arrowengine.runtime.llm import LLM

    if block_kernels() is None:
        pytest.skip("the native block kernels do not run here (no AVX2 + FMA or no C compiler)")
    llm = LLM(float_model_dir, precision="q8_0")
    proj = llm.forward.layers[0].o
    prompt = [[5, 17, 300, 41]]
    base = [r.token_ids for r in llm.generate_ids(prompt, max_new_tokens=5, ignore_eos=True)]
    base_logits = llm.logits(prompt[0])
    gen = torch.Generator().manual_seed(1)
    down = torch.randn(4, proj.in_features, generator=gen)
    up = torch.randn(proj.out_features, 4, generator=gen)
    llm.add_low_rank("test", "model.layers.0.self_attn.o_proj", down, up)
    assert llm.forward.low_rank_terms == 1
    assert not torch.allclose(llm.logits(prompt[0]), base_logits)
    with_term = [r.token_ids for r in llm.generate_ids(prompt, max_new_tokens=5, ignore_eos=True)]
    # decoding token by token must equal re-running the whole sequence through the prefill (which has the term)
    full = llm.logits(prompt[0] + with_term[0][:-1])
    assert with_term[0] == full[len(prompt[0]) - 1:].argmax(-1).tolist()
    assert llm.remove_low_rank("test") == 1 and llm.forward.low_rank_terms == 0
    assert torch.equal(llm.logits(prompt[0]), base_logits)
    assert [r.token_ids for r in llm.generate_ids(prompt, max_new_tokens=5, ignore_eos=True)] == base


def test_serve_scheduler_on_blocks_batches_natively_and_equals_each_request_alone(block_model_dir) -> None:
    """The server's continuous batching over a GGUF block model: rows at their own lengths go through the native
    per-row step, requests join and leave, and each greedy text equals the LLM generating it alone."""
    import asyncio

    from arrowengine import LLM
    from arrowengine.runtime.llm.sampling import SamplingParams
    from arrowengine.serve.scheduler import GenerationRequest, Scheduler

    llm = LLM(block_model_dir, max_context=128)
    assert llm.decode_step.native is not None
    prompts = [[5, 17, 99, 3, 41, 8], [7, 7, 300], [12, 13, 14, 15, 16, 17, 18, 19, 20], [250, 4]]
    counts = [9, 4, 7, 6]
    sched = Scheduler(llm, name="blocks", max_batch=3, max_queue=8, context=128, prefill_chunk=5)
    calls = []
    original = llm.decode_step.native.rows
    llm.decode_step.native.rows = lambda *a: calls.append(len(a[0])) or original(*a)

    async def run() -> list[GenerationRequest]:
        reqs = []
        for ids, n in zip(prompts, counts, strict=True):
            req = GenerationRequest(list(ids), SamplingParams(max_new_tokens=n, ignore_eos=True))
            req.bind(asyncio.get_running_loop())
            sched.submit(req)
            reqs.append(req)
        for req in reqs:
            req.text = "".join([piece async for piece in req.events()])
        return reqs

    try:
        reqs = asyncio.run(run())
    finally:
        sched.stop()
    assert calls and max(calls) == 3  # batched steps ran natively, up to the 3 rows
    for req, ids, n in zip(reqs, prompts, counts, strict=True):
        assert req.completion_tokens == n
        assert req.text == llm.generate_ids([ids], max_new_tokens=n, ignore_eos=True)[0].text
