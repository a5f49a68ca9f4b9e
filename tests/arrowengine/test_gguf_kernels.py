"""Native GGUF block kernels: products against a float reference for every block type and odd shapes, exact
dequantization, and the fallback on a CPU without AVX2 (simulated through the same selection code)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.hardware import CpuInfo
from arrowengine.runtime.llm.weights import Projection
from arrowengine.runtime.native import gguf as native_gguf
from quant.gguf import GGUF_TYPES, GGUFBlocks, quantize_q8_0

TYPES = sorted(GGUF_TYPES)


def random_blocks(quant_type: str, rows: int, k: int, seed: int) -> GGUFBlocks:
    """Blocks as ``gguf`` quantizes a random matrix (so scales and mins are realistic float16 values)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((rows, k)) * rng.uniform(0.01, 2.0, (rows, 1))).astype(np.float32)
    weights += rng.uniform(-0.5, 0.5, (rows, 1)).astype(np.float32)  # offsets exercise Q4_1's min
    data = quantize(weights, GGMLQuantizationType[GGUF_TYPES[quant_type].ggml_name])
    return GGUFBlocks(quant_type, (rows, k), torch.from_numpy(np.ascontiguousarray(data)))


def kernels_or_skip() -> native_gguf.BlockKernels:
    kernels = native_gguf.block_kernels()
    if kernels is None:
        pytest.skip("the native GGUF block kernels do not run on this machine (no AVX2 or no C compiler)")
    return kernels


def activation_error_bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Bound of ``|x_q W^T - x W^T|`` when each 32-block of x is rounded to amax/32767 steps (half a step each)."""
    xb = x.view(x.shape[0], -1, 32)
    half_step = xb.abs().amax(-1) / 65534.0  # [M, blocks]
    w_abs = w.abs().view(w.shape[0], -1, 32).sum(-1)  # [N, blocks]
    return half_step @ w_abs.t()


@settings(max_examples=25, deadline=None)
@given(quant_type=st.sampled_from(TYPES), rows=st.integers(1, 37), blocks=st.integers(1, 9),
       m=st.integers(1, 17), seed=st.integers(0, 2**31 - 1))
def test_matmul_matches_float_reference(quant_type, rows, blocks, m, seed) -> None:
    kernels_or_skip()
    weight = random_blocks(quant_type, rows, 32 * blocks, seed)
    proj = Projection(weight, None, dtype=torch.float32)
    assert proj.kind == "gguf"
    x = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((m, 32 * blocks)).astype(np.float32))
    dense = weight.dequantize()
    ref = (x.double() @ dense.double().t()).float()
    out = proj(x)
    bound = activation_error_bound(x, dense) * 1.001 + 1e-4 * (x.abs() @ dense.abs().t()) + 1e-5
    assert out.shape == (m, rows)
    assert bool(((out - ref).abs() <= bound).all()), float(((out - ref).abs() - bound).max())
    # every row of a batch gets the same result as alone (one quantization per row, no cross-row mixing), whether
    # it went through a group tile (the first rows of a batch of 4 or more) or a pair / single tile (the last)
    torch.testing.assert_close(proj(x[-1:]), out[-1:], rtol=0, atol=0)
    torch.testing.assert_close(proj(x[:1]), out[:1], rtol=0, atol=0)


@pytest.mark.parametrize("quant_type", TYPES)
@pytest.mark.parametrize("m", [64, 70, 133])
def test_long_inputs_in_chunks_match_rows_alone(quant_type, m) -> None:
    """A prompt-length x goes through the kernel in chunks of 64 rows (groups of 8 and 4, then pairs and singles at
    each chunk's end): every row equals its product alone, and the reference within the activation rounding."""
    kernels_or_skip()
    weight = random_blocks(quant_type, 13, 96, m)
    proj = Projection(weight, None, dtype=torch.float32)
    x = torch.from_numpy(np.random.default_rng(m).standard_normal((m, 96)).astype(np.float32))
    out = proj(x)
    for row in (0, 7, 8, 63, 64, m - 2, m - 1):
        torch.testing.assert_close(proj(x[row : row + 1]), out[row : row + 1], rtol=0, atol=0)
    dense = weight.dequantize()
    ref = (x.double() @ dense.double().t()).float()
    bound = activation_error_bound(x, dense) * 1.001 + 1e-4 * (x.abs() @ dense.abs().t()) + 1e-5
    assert bool(((out - ref).abs() <= bound).all())


@pytest.mark.parametrize("quant_type", TYPES)
def test_native_dequantize_is_exact(quant_type) -> None:
    kernels = kernels_or_skip()
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    weight = random_blocks(quant_type, 5, 96, 7)
    ref = dequantize(weight.data.numpy(), GGMLQuantizationType[GGUF_TYPES[quant_type].ggml_name])
    out = torch.empty(5, 96)
    assert kernels.dequantize(weight.kind.ggml_type, weight.data.data_ptr(), 5, 96, weight.data.stride(0),
                              out.data_ptr()) == 0
    assert np.array_equal(out.numpy().view(np.uint32), ref.view(np.uint32))
    assert np.array_equal(weight.dequantize().numpy().view(np.uint32), ref.view(np.uint32))


def test_strided_output_and_rows_of_a_wider_batch() -> None:
    kernels_or_skip()
    weight = random_blocks("gguf_q4_1", 9, 64, 3)
    proj = Projection(weight, None, dtype=torch.float32)
    x = torch.randn(3, 64)
    wide = torch.full((3, 20), 7.0)
    proj.blocks_matmul(x, out=wide[:, 4:13])
    torch.testing.assert_close(wide[:, 4:13], proj(x), rtol=0, atol=0)
    assert bool((wide[:, :4] == 7).all() and (wide[:, 13:] == 7).all())


def test_no_avx2_falls_back_to_exact_dense_weights(monkeypatch, caplog) -> None:
    avx_only = CpuInfo("simulated", "x86_64", 2, 2**30, ("SSE4.2", "AVX"))
    monkeypatch.setattr(native_gguf, "cpu_info", lambda: avx_only)
    assert native_gguf.missing_isa(avx_only.isa) == ["AVX2", "FMA"]
    native_gguf._log_missing.cache_clear()
    weight = random_blocks("gguf_q8_0", 4, 64, 5)
    with caplog.at_level(logging.INFO, logger="arrowengine.runtime.native.gguf"):
        proj = Projection(weight, None, dtype=torch.float32)
    assert "native GGUF block kernels need AVX2, FMA, which this CPU lacks: the blocks are dequantized" in caplog.text
    assert proj.kind == "dense" and torch.equal(proj.weight, weight.dequantize())
    x = torch.randn(2, 64)
    torch.testing.assert_close(proj(x), x @ weight.dequantize().t())


def test_width_follows_the_cpu() -> None:
    assert native_gguf.kernel_width(("AVX2", "FMA")) == "avx2"
    assert native_gguf.kernel_width(("AVX2", "FMA", "AVX-512F", "AVX-512BW", "AVX-512VL")) == "avx2"  # no VNNI
    assert native_gguf.kernel_width(("AVX2", "FMA", *native_gguf.AVX512_ISA)) == "avx512"


@settings(max_examples=12, deadline=None)
@given(quant_type=st.sampled_from(TYPES), rows=st.integers(1, 40), blocks=st.integers(1, 6),
       m=st.integers(1, 70), seed=st.integers(0, 2**31 - 1))
def test_avx2_build_equals_avx512_build_bit_for_bit(quant_type, rows, blocks, m, seed) -> None:
    """A CPU without AVX-512 (simulated through the same selection code) gets the 8-lane build: its results are the
    16-lane build's bit for bit, for strips cut short by the matrix's end and batches through every group size."""
    wide = kernels_or_skip()
    if wide.width != "avx512":
        pytest.skip("this CPU has no AVX-512 VNNI: only the AVX2 build runs here")
    narrow = native_gguf.block_kernels(("SSE4.2", "AVX", "AVX2", "FMA"))
    assert narrow is not None and narrow.width == "avx2" and narrow.path != wide.path
    weight = random_blocks(quant_type, rows, 32 * blocks, seed)
    x = torch.from_numpy(np.random.default_rng(seed + 1).standard_normal((m, 32 * blocks)).astype(np.float32))
    out = [native_gguf.blocks_matmul(kernels, weight, x) for kernels in (wide, narrow)]
    assert torch.equal(out[0].view(torch.int32), out[1].view(torch.int32))


def test_disabled_native_kernels_fall_back(monkeypatch) -> None:
    monkeypatch.setenv("ARROWENGINE_RUNTIME_NATIVE_KERNELS", "0")
    native_gguf._load.cache_clear()
    try:
        assert native_gguf.block_kernels(("AVX2", "FMA")) is None
    finally:
        native_gguf._load.cache_clear()


def test_bad_blocks_are_refused() -> None:
    from quant.errors import QuantModeError, QuantShapeError

    with pytest.raises(QuantModeError) as info:
        GGUFBlocks("gguf_q5_k", (1, 32), torch.zeros(1, 20, dtype=torch.uint8))
    assert str(info.value) == ("quant_type 'gguf_q5_k' is not a GGUF block type; use one of "
                               "['gguf_q4_0', 'gguf_q4_1', 'gguf_q8_0']")
    with pytest.raises(QuantShapeError) as info:
        GGUFBlocks("gguf_q4_1", (2, 64), torch.zeros(2, 20, dtype=torch.uint8))
    assert str(info.value) == "gguf_q4_1 blocks of shape [2, 64] are uint8 [2, 40], got torch.uint8 [2, 20]"
    assert isinstance(info.value, ValueError)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 9), blocks=st.integers(1, 5), scale=st.floats(1e-6, 1e4), seed=st.integers(0, 999),
       zero_block=st.booleans())
def test_quantize_q8_0_is_byte_identical_to_gguf(rows, blocks, scale, seed, zero_block) -> None:
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((rows, blocks * 32)) * scale).astype(np.float32)
    if zero_block:
        weights[0, :32] = 0.0  # d = 0: codes 0, no division by zero
    ours = quantize_q8_0(torch.from_numpy(weights))
    assert ours.shape == (rows, blocks * 32)
    assert np.array_equal(ours.data.numpy(), quantize(weights, GGMLQuantizationType.Q8_0))


def test_native_blocks_dequantize_matches_torch() -> None:
    kernels = kernels_or_skip()
    blocks = random_blocks("gguf_q8_0", 5, 96, seed=4)
    assert torch.equal(native_gguf.blocks_dequantize(kernels, blocks), blocks.dequantize())
