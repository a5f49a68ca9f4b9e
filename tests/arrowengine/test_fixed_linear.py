"""FixedLinear: every precision against the float32 product, with the fused GELU and residual epilogues."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import ConfigError, DeviceUnavailableError
from arrowengine.runtime import fixed_linear, whisper_fast
from arrowengine.runtime.fixed_linear import LINEAR_KINDS, FixedLinear, onednn_int8_available, smooth_scales
from arrowengine.runtime.native import gguf as native_gguf
from arrowengine.runtime.native.gguf import block_kernels
from quant.errors import QuantShapeError

needs_block_kernels = pytest.mark.skipif(block_kernels() is None,
                                         reason="the native block kernels do not run here (no AVX2 + FMA or no C "
                                                "compiler)")
needs_onednn_int8 = pytest.mark.skipif(not onednn_int8_available(),
                                       reason="oneDNN's quantized linear is not available in this torch build")

# worst-case relative error of each kind on LayerNorm-like inputs (fp32 is exact up to summation order)
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "int8": 3e-2, "int8-tensor": 4e-2, "q8_0": 1e-2}


def _reference(x, weight, bias, activation, residual):
    y = F.linear(x.float(), weight, bias)
    if activation is not None:
        y = F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    return y if residual is None else y + residual.float()


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


@settings(max_examples=30, deadline=None)
@given(kind=st.sampled_from([k for k in LINEAR_KINDS if (k != "int8-tensor" or onednn_int8_available())
                             and (k != "q8_0" or block_kernels() is not None)]),
       rows=st.integers(1, 70), inputs=st.sampled_from([32, 64, 96]), outputs=st.sampled_from([8, 48, 128]),
       activation=st.sampled_from([None, "gelu", "gelu_tanh"]), with_residual=st.booleans(),
       with_bias=st.booleans(), dtype=st.sampled_from([torch.float32, torch.bfloat16]), seed=st.integers(0, 99))
def test_every_kind_matches_the_float_product(kind, rows, inputs, outputs, activation, with_residual, with_bias,
                                              dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, inputs, generator=generator).to(dtype)
    weight = torch.randn(outputs, inputs, generator=generator) * inputs**-0.5
    bias = torch.randn(outputs, generator=generator) * 0.1 if with_bias else None
    residual = torch.randn(rows, outputs, generator=generator).to(dtype) if with_residual else None
    linear = FixedLinear(weight, bias, kind)
    got = linear(x, activation=activation, residual=residual)
    assert got.dtype == dtype and got.shape == (rows, outputs)
    tolerance = TOLERANCE[kind] + (1e-2 if dtype == torch.bfloat16 else 0.0)  # the bf16 output rounding
    assert _relative_error(got, _reference(x, weight, bias, activation, residual)) < tolerance


@pytest.mark.parametrize("kind", ["int8", pytest.param("int8-tensor", marks=needs_onednn_int8)])
def test_smoothquant_moves_an_outlier_channel_into_the_weight(kind):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200, 64, generator=generator)
    x[:, 5] *= 60.0  # one outlier input channel, as LayerNorm outputs of speech and text models have
    weight = torch.randn(32, 64, generator=generator) * 0.125
    want = F.linear(x, weight)
    plain = _relative_error(FixedLinear(weight, None, kind)(x), want)
    scales = smooth_scales(x.abs().amax(dim=0), weight, alpha=0.5)
    smoothed = _relative_error(FixedLinear(weight, None, kind, scales)(x), want)
    # the caller folding the division into the producer gives the same numbers without the per-call multiply
    folded = _relative_error(FixedLinear(weight, None, kind, scales, input_smoothed=True)(x / scales), want)
    assert smoothed < plain / 2, (smoothed, plain)
    assert folded == pytest.approx(smoothed, rel=0.05)


def test_bad_kind_and_activation_name_the_choices():
    with pytest.raises(ConfigError) as info:
        FixedLinear(torch.ones(2, 2), None, "int4")
    assert str(info.value) == "kind must be one of float32, bfloat16, int8, int8-tensor, q8_0, got 'int4'"
    with pytest.raises(ConfigError) as info:
        FixedLinear(torch.ones(2, 2), None, "float32")(torch.ones(1, 2), activation="relu")
    assert str(info.value) == "activation must be one of (None, 'gelu', 'gelu_tanh'), got 'relu'"


@pytest.mark.parametrize("kind, module, switch, message", [
    ("int8-tensor", fixed_linear, "onednn_int8_available",
     "int8-tensor needs oneDNN's quantized linear, which this torch build or CPU lacks; use kind='int8'"),
    ("q8_0", native_gguf, "block_kernels",
     "q8_0 needs the native block kernels (AVX2 + FMA and a C compiler; the reason is logged); use kind='float32'"),
])
def test_a_kind_this_machine_cannot_run_says_what_to_use(monkeypatch, kind, module, switch, message):
    monkeypatch.setattr(module, switch, lambda: None if switch == "block_kernels" else False)
    with pytest.raises(DeviceUnavailableError) as info:
        FixedLinear(torch.ones(4, 32), None, kind)
    assert str(info.value) == message


def test_onednn_int8_needs_int8_dot_product_instructions(monkeypatch):
    import dataclasses

    from arrowengine.hardware import cpu_info

    onednn_int8_available.cache_clear()
    monkeypatch.setattr(fixed_linear, "cpu_info", lambda: dataclasses.replace(cpu_info(), isa=("AVX2", "FMA")))
    try:
        assert onednn_int8_available() is False  # AVX2's saturating int16 pair sums give wrong products
    finally:
        onednn_int8_available.cache_clear()


def test_whisper_int8_mixed_falls_back_to_per_token_int8_without_onednn(monkeypatch, caplog):
    monkeypatch.setattr(whisper_fast, "onednn_int8_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger=whisper_fast.__name__):
        kinds = whisper_fast._kinds("int8-mixed")
    assert kinds == {"qkv": "int8", "out": "int8", "up": "int8", "down": "bfloat16"}
    assert "falls back to per-token int8" in caplog.text


@needs_onednn_int8
def test_whisper_int8_mixed_uses_per_tensor_int8_after_layer_norms():
    assert whisper_fast._kinds("int8-mixed") == {"qkv": "int8-tensor", "out": "bfloat16", "up": "int8-tensor",
                                                 "down": "bfloat16"}


@needs_block_kernels
def test_q8_0_kernel_and_dequantized_gemm_paths_agree():
    """Few rows run the block kernel, many the float GEMM over the dequantized blocks: one answer either way."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(96, 128, generator=generator) * 0.1
    bias = torch.randn(96, generator=generator)
    x = torch.randn(80, 128, generator=generator)
    kernel = FixedLinear(weight, bias, "q8_0", kernel_max_rows=80)(x)
    gemm = FixedLinear(weight, bias, "q8_0", kernel_max_rows=0)(x)
    # the kernel only adds the rounding of x to int16 per block of 32: far below the weight's int8 rounding
    assert _relative_error(kernel, gemm) < 1e-4
    assert _relative_error(gemm, F.linear(x, weight, bias)) < 1e-2


@needs_block_kernels
def test_q8_0_keeps_only_the_blocks():
    linear = FixedLinear(torch.randn(64, 256), None, "q8_0")
    assert not hasattr(linear, "weight")
    assert linear.parts[0].data.dtype == torch.uint8 and linear.parts[0].nbytes == 64 * 256 // 32 * 34


def test_q8_0_needs_rows_of_whole_blocks():
    with pytest.raises(QuantShapeError) as info:
        FixedLinear(torch.ones(4, 48), None, "q8_0")
    assert str(info.value) == ("weight: Q8_0 quantizes a 2-D matrix whose rows hold a multiple of 32 elements, got "
                               "shape [4, 48]")

