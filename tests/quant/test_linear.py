"""QuantLinear: the three execution modes agree, zero-copy buffers, dtypes, replacement in a model, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from quant import MODES, QuantLinear, QuantModeError, QuantShapeError, dequantize, quantize, replace_linears
from quant.kernels import BACKENDS, select_backend


@pytest.fixture(scope="module")
def layer() -> nn.Linear:
    torch.manual_seed(0)
    lin = nn.Linear(192, 96)
    with torch.no_grad():
        lin.weight.mul_(3.0)
    return lin.requires_grad_(False)


@pytest.fixture(scope="module")
def x() -> torch.Tensor:
    return torch.randn(3, 7, 192, generator=torch.Generator().manual_seed(1))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.parametrize(("bits", "group_size"), [(8, 0), (8, 64), (4, 32), (4, 128), (2, 32), (2, 64)])
def test_modes_agree_with_linear_on_dequantized_weight(layer, x, bits, group_size) -> None:
    qt = quantize(layer.weight.detach(), bits, group_size)
    expect = nn.functional.linear(x, dequantize(qt), layer.bias)
    for mode in MODES:
        ql = QuantLinear(qt, layer.bias.detach(), mode=mode)
        y = ql(x)
        assert y.shape == (3, 7, 96) and y.dtype == torch.float32
        if mode == "int8-kernel":
            # dynamic per-token int8 activations (and int8 re-quantization of grouped weights) add ~1% error
            assert _rel(y, expect) < 0.03, mode
        else:
            torch.testing.assert_close(y, expect, rtol=1e-5, atol=1e-5)


def test_int8_kernel_reexpresses_asymmetric_zero_points_exactly(layer) -> None:
    # integer-valued activations with |x| <= 127 quantize without error, so only float rounding remains
    x = torch.randint(-127, 128, (5, 192), generator=torch.Generator().manual_seed(2)).float()
    x[:, 0] = 127.0
    qt = quantize(layer.weight.detach(), 8, 0)
    assert qt.zero_points.unique().numel() > 1  # really asymmetric
    expect = nn.functional.linear(x, dequantize(qt), layer.bias)
    if select_backend("int_mm") != "int_mm":
        pytest.skip("torch._int_mm does not run in this torch build")
    y = QuantLinear(qt, layer.bias.detach(), mode="int8-kernel", int8_backend="int_mm")(x)
    torch.testing.assert_close(y, expect, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_int8_backend_is_accurate(layer, x, backend) -> None:
    if select_backend(backend) != backend:
        pytest.skip(f"int8 backend {backend} does not run in this torch build")
    qt = quantize(layer.weight.detach(), 8, 0, symmetric=True)
    expect = nn.functional.linear(x, dequantize(qt), layer.bias)
    y = QuantLinear(qt, layer.bias.detach(), mode="int8-kernel", int8_backend=backend)(x)
    assert _rel(y, expect) < 0.03


def test_dequant_on_the_fly_keeps_the_given_buffers(layer, x) -> None:
    qt = quantize(layer.weight.detach(), 4, 64)
    ql = QuantLinear(qt, layer.bias.detach(), mode="dequant-on-the-fly")
    ql(x)
    assert ql.packed_weight.data_ptr() == qt.packed.data_ptr()
    assert ql.scales.data_ptr() == qt.scales.data_ptr()
    assert ql.zero_points.data_ptr() == qt.zero_points.data_ptr()
    assert set(ql.state_dict()) == {"packed_weight", "scales", "zero_points", "bias"}


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_activations(layer, x, mode) -> None:
    qt = quantize(layer.weight.detach(), 4, 32)
    ql = QuantLinear(qt, layer.bias.detach(), mode=mode)
    y = ql(x.bfloat16())
    assert y.dtype == torch.bfloat16
    expect = nn.functional.linear(x, dequantize(qt), layer.bias)
    assert _rel(y, expect) < 0.03


def test_from_linear_without_bias() -> None:
    lin = nn.Linear(64, 32, bias=False).requires_grad_(False)
    ql = QuantLinear.from_linear(lin, 8, 0, mode="dequant-on-load")
    x = torch.randn(4, 64)
    assert ql.bias is None
    torch.testing.assert_close(ql(x), x @ ql.dequantized_weight().t())
    assert _rel(ql(x), lin(x)) < 0.02


@pytest.mark.slow
def test_replace_linears_in_a_real_architecture() -> None:
    from transformers import BertConfig, BertModel

    cfg = BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, vocab_size=100)
    torch.manual_seed(3)
    model = BertModel(cfg).eval()
    ids = torch.randint(0, 100, (2, 9))
    with torch.no_grad():
        ref = model(input_ids=ids).last_hidden_state
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    qweights = {n: quantize(dict(model.named_modules())[n].weight.detach(), 8, 0, name=n) for n in names}
    replace_linears(model, qweights, mode="dequant-on-the-fly")
    assert all(isinstance(dict(model.named_modules())[n], QuantLinear) for n in names)
    with torch.no_grad():
        out = model(input_ids=ids).last_hidden_state
    cos = nn.functional.cosine_similarity(out.flatten(), ref.flatten(), dim=0)
    assert float(cos) > 0.999


def test_unknown_mode_is_refused(layer) -> None:
    qt = quantize(layer.weight.detach(), 8)
    with pytest.raises(QuantModeError) as info:
        QuantLinear(qt, mode="fast", name="encoder.layer.0.attention.self.query")
    assert str(info.value) == (
        "encoder.layer.0.attention.self.query: mode 'fast' is unknown; use one of dequant-on-the-fly, "
        "int8-kernel, dequant-on-load"
    )


def test_wrong_input_width_is_refused(layer) -> None:
    ql = QuantLinear(quantize(layer.weight.detach(), 8, name="proj"))
    with pytest.raises(QuantShapeError) as info:
        ql(torch.randn(2, 100))
    assert str(info.value) == "proj: input has 100 features, layer expects 192"


def test_replace_unknown_layer_is_refused(layer) -> None:
    model = nn.Sequential(nn.Linear(192, 96))
    with pytest.raises(QuantShapeError) as info:
        replace_linears(model, {"1": quantize(layer.weight.detach(), 8)})
    assert str(info.value) == "1: no nn.Linear with this name in the model; check the layer names"
