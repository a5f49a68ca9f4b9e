"""BlockLinear and INT8 encoders stored as Q8_0 blocks: the weights stay in the file mapping and run in place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import ConfigError
from arrowengine.format import WeightFile
from arrowengine.runtime.block_linear import BlockLinear, blocks_linear
from arrowengine.runtime.native.gguf import block_kernels
from quant.gguf import quantize_q8_0

needs_block_kernels = pytest.mark.skipif(block_kernels() is None,
                                         reason="the native block kernels do not run here (no AVX2 + FMA or no C "
                                                "compiler)")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm().clamp_min(1e-12))


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 70), outs=st.lists(st.integers(1, 40), min_size=1, max_size=3),
       blocks=st.integers(1, 4), bias=st.booleans(), seed=st.integers(0, 2**16))
def test_blocks_linear_matches_the_float_product_over_the_dequantized_parts(rows, outs, blocks, bias, seed):
    """Parts stacked by output rows (Q, K, V of a layer) give the product with their concatenation, on the kernel
    path (few rows), the dequantize + GEMM path (many rows) and torch's own dequantization (no kernels)."""
    generator = torch.Generator().manual_seed(seed)
    k = 32 * blocks
    parts = [quantize_q8_0(torch.randn(n, k, generator=generator)) for n in outs]
    b = torch.randn(sum(outs), generator=generator) if bias else None
    x = torch.randn(rows, k, generator=generator)
    want = F.linear(x, torch.cat([p.dequantize() for p in parts]), b)
    exact = blocks_linear(x, parts, b, kernels=None)
    assert torch.allclose(exact, want, rtol=1e-5, atol=1e-5)
    if block_kernels() is not None:
        for max_rows in (0, 100):  # 0: dequantize + GEMM, 100: the block kernel on every row
            got = blocks_linear(x, parts, b, kernel_max_rows=max_rows)
            assert got.shape == (rows, sum(outs))
            # the kernel rounds each activation block to int16: far below the weight's int8 rounding
            assert _relative_error(got, want) < 1e-3


def test_block_linear_forward_keeps_leading_dims_and_dtype():
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(24, 64, generator=generator), torch.randn(24, generator=generator)
    layer = BlockLinear(quantize_q8_0(weight), bias, name="proj")
    x = torch.randn(2, 3, 64, generator=generator)
    y = layer(x)
    assert y.shape == (2, 3, 24) and y.dtype == torch.float32
    assert _relative_error(y, F.linear(x, layer.dequantized_weight(), bias)) < 1e-3
    assert layer(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert "in_features=64, out_features=24, gguf_q8_0" in repr(layer)


@pytest.fixture(scope="module")
def q8_0_minilm(minilm_dir, tmp_path_factory):
    """MiniLM with every Linear written as Q8_0 blocks (schema V3) and float word embeddings, as
    ``arrowengine quantize --bits 8`` writes them with ``quantize_embeddings=False``."""
    from arrowengine.converters import ConvertedModel, write_model_dir
    from arrowengine.runtime.loading import load_config_dict

    weights = WeightFile.open(minilm_dir)
    state = {}
    for name in weights.keys():
        value = weights[name]
        is_linear = name.endswith(".weight") and value.dim() == 2 and "embeddings" not in name
        state[name] = quantize_q8_0(value, name=name) if is_linear else value
    files = {f: minilm_dir / f for f in ("tokenizer.json", "modules.json", "sentence_bert_config.json",
                                         "1_Pooling/config.json")}
    model = ConvertedModel(state_dict=state, config=load_config_dict(minilm_dir), files=files)
    return write_model_dir(model, tmp_path_factory.mktemp("q8") / "minilm-q8_0",
                           quant_recipe={"method": "rtn", "bits": 8, "weight_format": "q8_0"})


def test_load_model_runs_linears_on_the_mapped_blocks(q8_0_minilm, text_encoder):
    from arrowengine.runtime.loading import load_model

    assert WeightFile.open(q8_0_minilm).schema_version == 3
    model = load_model(q8_0_minilm)
    layers = [m for m in model.modules() if isinstance(m, BlockLinear)]
    assert len(layers) == 37 and not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    lo, hi = model.arrowengine_weights.mapping_range()
    assert all(lo <= m.blocks_data.data_ptr() < hi for m in layers)  # zero-copy: no float weight anywhere
    floats = load_model(q8_0_minilm, gguf_linears="dequantize")
    query = floats.encoder.layer[0].attention.self.query
    assert type(query) is torch.nn.Linear
    assert torch.equal(query.weight, model.encoder.layer[0].attention.self.query.dequantized_weight())


def test_bad_gguf_linears_value_is_refused(q8_0_minilm):
    from arrowengine.runtime.loading import load_model

    with pytest.raises(ConfigError) as info:
        load_model(q8_0_minilm, gguf_linears="float")
    assert str(info.value) == "gguf_linears must be 'auto', 'blocks' or 'dequantize', got 'float'"


@needs_block_kernels
def test_text_encoder_on_q8_0_blocks_equals_int8_weights_of_the_float_file(q8_0_minilm, minilm_dir, text_encoder):
    """The default lean forward reads the file's blocks in place; they are byte for byte the blocks int8-weights
    makes from the float file at load, so the embeddings are identical, and close to float32."""
    from arrowengine.runtime.text_encoder import TextEncoder

    sentences = ["The meeting moved to Tuesday.", "ok", "I love hiking in the mountains on weekends!"] * 20
    encoder = TextEncoder(q8_0_minilm, precision="int8-weights")
    lo, hi = encoder.model.arrowengine_weights.mapping_range()
    for layer in encoder.backend.forward.layers:
        for linear in (layer.qkv, layer.out, layer.up, layer.down):
            assert all(lo <= part.data.data_ptr() < hi for part in linear.parts)
    assert len(encoder.backend.forward.layers[0].qkv.parts) == 3  # Q, K, V in place, never concatenated
    from_float = TextEncoder(minilm_dir, precision="int8-weights")
    got = encoder.encode(sentences)  # batches of 32 and 28 padded sentences: dequantize + GEMM
    assert np.array_equal(got, from_float.encode(sentences))
    assert np.sum(got * text_encoder.encode(sentences), axis=1).min() >= 0.999
    query = encoder.encode(sentences[:1])  # one short query: the block kernel itself
    assert np.array_equal(query, from_float.encode(sentences[:1]))
    assert float(np.sum(query * text_encoder.encode(sentences[:1]))) >= 0.999


def test_other_forwards_run_a_q8_0_file(q8_0_minilm, text_encoder):
    """The module forward runs BlockLinear; the float32 lean forward dequantizes the blocks once."""
    from arrowengine.runtime.text_encoder import TextEncoder

    sentences = ["Thank you", "Where did you park the car yesterday evening?"]
    reference = text_encoder.encode(sentences)
    for kwargs in ({"precision": None}, {"precision": "fp32"}):
        assert np.sum(TextEncoder(q8_0_minilm, **kwargs).encode(sentences) * reference, axis=1).min() >= 0.999
