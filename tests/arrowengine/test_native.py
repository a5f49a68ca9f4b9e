"""The native bf16 softmax: agreement with torch.softmax, its build and every fallback to torch."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import EngineError
from arrowengine.hardware import cpu_info
from arrowengine.runtime import native, whisper_fast
from arrowengine.runtime.native import softmax_bf16_, softmax_kernel
from arrowengine.runtime.whisper_fast import FastWhisperEncoder

needs_kernel = pytest.mark.skipif(softmax_kernel() is None,
                                  reason="the native softmax does not build here (no AVX-512 or no C compiler)")


@pytest.fixture
def fresh_build(tmp_path, monkeypatch):
    """A cold kernel cache in tmp_path and a cleared in-process memo, restored afterwards."""
    monkeypatch.setenv("ARROWENGINE_RUNTIME_CACHE_DIR", str(tmp_path))
    softmax_kernel.cache_clear()
    yield tmp_path
    softmax_kernel.cache_clear()


def _expected(x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(x.float(), dim=-1)


@needs_kernel
@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 300), scale=st.sampled_from([0.1, 1.0, 8.0, 60.0]),
       seed=st.integers(0, 10_000))
def test_matches_torch_softmax_to_bf16_rounding(rows, cols, scale, seed):
    x = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()
    want = _expected(x)
    got = softmax_bf16_(x.clone())
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    # one bf16 rounding of the exact value: at most half a step (2^-9 relative) plus the fp32 exp error
    assert torch.all((got.float() - want).abs() <= want * 2.0**-8 + 1e-30)
    assert torch.allclose(got.float().sum(dim=-1), torch.ones(rows), atol=cols * 2.0**-8)


@needs_kernel
def test_in_place_on_contiguous_bf16_and_masked_entries_are_zero():
    x = torch.randn(2, 3, 5, 40).bfloat16()
    x[..., :7] = float("-inf")  # masked keys, as an attention mask writes them
    want = _expected(x)
    result = softmax_bf16_(x)
    assert result.data_ptr() == x.data_ptr()
    assert torch.all(result[..., :7] == 0)
    assert torch.all((result.float() - want).abs() <= want * 2.0**-8 + 1e-30)


def test_other_tensors_go_through_torch():
    x = torch.randn(4, 33)
    assert torch.equal(softmax_bf16_(x), torch.softmax(x, dim=-1))  # float32: torch, not in place
    strided = torch.randn(33, 4).bfloat16().t()
    assert torch.equal(softmax_bf16_(strided), torch.softmax(strided, dim=-1))
    empty = torch.empty(0, 8, dtype=torch.bfloat16)
    assert softmax_bf16_(empty).shape == (0, 8)


@needs_kernel
def test_builds_into_the_cache_once(fresh_build):
    assert softmax_kernel() is not None
    built = list((fresh_build / "native").glob("softmax_bf16-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    softmax_kernel.cache_clear()
    assert softmax_kernel() is not None
    assert built[0].stat().st_mtime_ns == stamp  # the second process-level load reuses the library


def test_disabled_by_environment(fresh_build, monkeypatch, caplog):
    monkeypatch.setenv("ARROWENGINE_RUNTIME_NATIVE_KERNELS", "false")
    with caplog.at_level(logging.INFO, logger=native.__name__):
        assert softmax_kernel() is None
    assert "native kernels disabled (runtime.native_kernels is false): torch.softmax is used" in caplog.text
    x = torch.randn(3, 20).bfloat16()
    assert torch.equal(softmax_bf16_(x), torch.softmax(x, dim=-1))


def test_missing_compiler_falls_back_with_a_warning(fresh_build, monkeypatch, caplog):
    monkeypatch.setattr(native, "cpu_info", lambda: dataclasses.replace(
        cpu_info(), isa=("AVX-512F", "AVX-512BW", "AVX-512VL", "FMA")))
    monkeypatch.setenv("CC", str(fresh_build / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert softmax_kernel() is None
    assert "native softmax unavailable, torch.softmax is used instead" in caplog.text


def test_failing_build_reports_the_compiler_error(fresh_build, monkeypatch, caplog):
    monkeypatch.setattr(native, "cpu_info", lambda: dataclasses.replace(
        cpu_info(), isa=("AVX-512F", "AVX-512BW", "AVX-512VL", "FMA")))
    monkeypatch.setenv("CC", "false")  # runs and exits 1, like a compiler rejecting the source
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert softmax_kernel() is None
    assert "false failed on softmax_bf16.c" in caplog.text


def test_build_errors_are_named(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")
    with pytest.raises(native.NativeBuildError, match=r"^false failed on softmax_bf16.c: ") as info:
        native._build(native._SOFTMAX_SOURCE, native._FLAGS, fresh_build)
    assert isinstance(info.value, EngineError) and isinstance(info.value, OSError)
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(fresh_build))  # no cc or gcc on it
    with pytest.raises(native.NativeBuildError, match=r"^no C compiler: set CC or install gcc \(e.g. apt-get install "
                                                      r"gcc\)$"):
        native._compiler()


def test_cpu_without_avx512_uses_torch(fresh_build, monkeypatch, caplog):
    monkeypatch.setattr(native, "cpu_info", lambda: dataclasses.replace(cpu_info(), isa=("AVX2", "FMA")))
    with caplog.at_level(logging.INFO, logger=native.__name__):
        assert softmax_kernel() is None
    assert "needs AVX-512F, AVX-512BW, AVX-512VL, which this CPU lacks" in caplog.text


@pytest.mark.parametrize("use_native", [True, False])
def test_whisper_blocked_attention_matches_sdpa(monkeypatch, use_native):
    if not use_native:
        monkeypatch.setattr(whisper_fast, "softmax_bf16_", lambda x: torch.softmax(x, dim=-1))
    generator = torch.Generator().manual_seed(0)
    # 300 frames: two full query blocks and a shorter last one
    q, k, v = (torch.randn(1, 6, 300, 64, generator=generator).bfloat16() for _ in range(3))
    q = q * 64**-0.5
    got = FastWhisperEncoder._attention(None, q, k, v).float()
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=1.0)
    want = want.transpose(1, 2).reshape(1, 300, 384)
    assert F.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.9999
