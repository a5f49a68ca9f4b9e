"""RTN quantize/dequantize: error bounds, symmetric vs asymmetric, MSE clipping, the format and its errors."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import EngineError
from quant import (
    GroupSizeError,
    NonFiniteWeightError,
    QuantizedTensor,
    QuantShapeError,
    UnsupportedBitsError,
    dequantize,
    quantize,
)


def _elementwise_scale(qt: QuantizedTensor) -> torch.Tensor:
    """The scale that applies to each element of a 2-D tensor quantized along its last dim."""
    return qt.scales.float().repeat_interleave(qt.group_len, dim=1)[:, : qt.k]


@settings(max_examples=50, deadline=None)
@given(
    bits=st.sampled_from([2, 4, 8]),
    group_size=st.sampled_from([0, 32, 64, 128]),
    symmetric=st.booleans(),
    rows=st.integers(1, 6),
    cols=st.integers(1, 300),
    magnitude=st.sampled_from([1e-4, 0.05, 1.0, 300.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_error_is_at_most_half_a_scale(bits, group_size, symmetric, rows, cols, magnitude, seed) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=gen) * magnitude
    qt = quantize(w, bits, group_size, symmetric=symmetric)
    err = (dequantize(qt) - w).abs()
    # scales are rounded up to float16 before codes are computed, so the bound holds with the stored scale;
    # the slack covers float32 arithmetic in w / scale and scale * code
    bound = _elementwise_scale(qt) / 2 * (1 + 1e-5) + w.abs() * 1e-6
    assert bool((err <= bound).all()), float((err - bound).max())
    assert qt.scales.dtype == torch.float16 and qt.zero_points.dtype == torch.uint8


def test_symmetric_fixes_zero_point_and_maps_zero_exactly() -> None:
    w = torch.randn(8, 128, generator=torch.Generator().manual_seed(0))
    w[:, 5] = 0.0
    for bits in (2, 4, 8):
        qt = quantize(w, bits, 64, symmetric=True)
        assert bool((qt.zero_points == 1 << (bits - 1)).all())
        assert bool((dequantize(qt)[:, 5] == 0).all())
        # asymmetric uses the full range: its zero points vary with the group's min and max
        assert quantize(w, bits, 64).zero_points.unique().numel() > 1


def test_asymmetric_beats_symmetric_on_skewed_weights() -> None:
    w = torch.rand(16, 256, generator=torch.Generator().manual_seed(1)) * 2 - 0.2  # mostly positive
    for bits in (4, 8):
        asym = (dequantize(quantize(w, bits, 0)) - w).pow(2).mean()
        sym = (dequantize(quantize(w, bits, 0, symmetric=True)) - w).pow(2).mean()
        assert asym < sym


def test_mse_clip_never_worse_than_minmax_per_group() -> None:
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(2)) ** 3  # heavy tails reward clipping
    for bits, g in ((2, 32), (4, 64), (4, 128)):
        mm, mse = quantize(w, bits, g), quantize(w, bits, g, clip="mse")
        err_mm = (dequantize(mm) - w).pow(2).view(32, -1, g).sum(-1)
        err_mse = (dequantize(mse) - w).pow(2).view(32, -1, g).sum(-1)
        assert bool((err_mse <= err_mm * (1 + 1e-6)).all())
        assert err_mse.sum() < err_mm.sum()


def test_packed_layout_and_sizes() -> None:
    w = torch.randn(96, 200)
    qt = quantize(w, 4, 64)
    # 200 columns -> 4 groups of 64 (last one padded by 56 zeros), 256 codes -> 128 bytes per row
    assert (qt.num_groups, qt.padded_k, qt.packed_shape) == (4, 256, (96, 128))
    assert tuple(qt.scales.shape) == (96, 4) and tuple(qt.packed.shape) == (96, 128)
    assert qt.nbytes == 96 * 128 + 96 * 4 * 2 + 96 * 4
    # padded positions hold the code of 0.0, i.e. the group's zero point
    assert torch.equal(qt.codes()[:, 200:], qt.zero_points[:, 3:4].expand(96, 56))
    i8 = quantize(w, 8)
    assert tuple(i8.packed.shape) == (96, 200) and tuple(i8.scales.shape) == (96, 1)


def test_int8_per_channel_matches_reference_formula() -> None:
    w = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    qt = quantize(w, 8)
    lo, hi = w.amin(1).clamp(max=0), w.amax(1).clamp(min=0)
    scale = qt.scales.float()[:, 0]
    assert bool((scale >= (hi - lo) / 255).all()) and bool((scale <= (hi - lo) / 255 * (1 + 2**-10)).all())
    assert torch.equal(qt.zero_points[:, 0].float(), torch.round(-lo / scale))


def test_axis_other_than_last() -> None:
    w = torch.randn(40, 6, 3, generator=torch.Generator().manual_seed(4))
    qt = quantize(w, 8, 0, axis=0)
    assert qt.axis == 0 and qt.k == 40 and qt.rows == 18
    back = dequantize(qt)
    assert back.shape == w.shape
    scale = qt.scales.float().view(6, 3)
    assert bool(((back - w).abs() <= scale[None] / 2 * (1 + 1e-5)).all())


def test_bfloat16_input_and_output_dtype() -> None:
    w = torch.randn(8, 64).bfloat16()
    qt = quantize(w, 4, 32)
    assert dequantize(qt, torch.bfloat16).dtype == torch.bfloat16


def test_unsupported_group_size_message() -> None:
    with pytest.raises(GroupSizeError) as info:
        quantize(torch.randn(4, 96), 4, 48, name="encoder.layer.0.output.dense.weight")
    assert str(info.value) == (
        "encoder.layer.0.output.dense.weight: group_size=48 is not supported; use 0 (per output channel), 32, 64 or 128"
    )
    assert isinstance(info.value, ValueError) and isinstance(info.value, EngineError)


def test_unsupported_bits_message() -> None:
    with pytest.raises(UnsupportedBitsError) as info:
        quantize(torch.randn(4, 96), 3, 32, name="w")
    assert str(info.value) == "w: bits=3 is not supported; use one of 2, 4 or 8"


def test_non_finite_weights_are_refused() -> None:
    w = torch.randn(4, 8)
    w[1, 2], w[3, 3] = math.nan, math.inf
    with pytest.raises(NonFiniteWeightError) as info:
        quantize(w, 8, name="lm_head.weight")
    assert str(info.value) == "lm_head.weight: 2 NaN/Inf values; fix or drop the tensor before quantizing"


def test_scales_length_mismatch_is_refused() -> None:
    qt = quantize(torch.randn(8, 128), 4, 32)
    with pytest.raises(QuantShapeError) as info:
        QuantizedTensor(qt.packed, qt.scales[:, :3], qt.zero_points, 4, 32, (8, 128), name="blk.0.q.weight")
    assert str(info.value) == (
        "blk.0.q.weight: scales holds 24 values but shape [8, 128] with group_size=32 needs 8 x 4 = 32; "
        "the file or the caller paired this tensor with the wrong scales"
    )


def test_flat_buffers_are_viewed_without_copy() -> None:
    qt = quantize(torch.randn(8, 128), 2, 64)
    flat_scales, flat_packed = qt.scales.reshape(-1), qt.packed.reshape(-1)
    again = QuantizedTensor(flat_packed, flat_scales, qt.zero_points.reshape(-1), 2, 64, (8, 128))
    assert again.scales.data_ptr() == flat_scales.data_ptr()
    assert again.packed.data_ptr() == flat_packed.data_ptr()
    assert torch.equal(dequantize(again), dequantize(qt))


def test_packed_size_mismatch_is_refused() -> None:
    qt = quantize(torch.randn(8, 128), 4, 32)
    with pytest.raises(QuantShapeError) as info:
        QuantizedTensor(qt.packed[:, :-1], qt.scales, qt.zero_points, 4, 32, (8, 128), name="t")
    assert (
        str(info.value) == "t: packed data is torch.uint8 [8, 63] but 4-bit codes of shape [8, 128] need uint8 [8, 64]"
    )
