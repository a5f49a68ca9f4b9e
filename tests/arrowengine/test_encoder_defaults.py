"""TextEncoder's default precision, its errors, and the calibration defaults and cache, on the real MiniLM."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.errors import ConfigError, EngineError, InputTypeError, ModelTypeError
from arrowengine.runtime.calibration import (
    cached_scales,
    calibration_key,
    default_calibration_texts,
    synthetic_speech,
)
from arrowengine.runtime.precision import select_precision
from arrowengine.runtime.text_encoder import TextEncoder, length_batches

SENTENCES = ["The meeting moved to Tuesday.", "Thank you", "ok", "I love hiking in the mountains on weekends!"]


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A private calibration cache for the test (runtime.cache_dir through the environment)."""
    monkeypatch.setenv("ARROWENGINE_RUNTIME_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "calibration"


@pytest.mark.parametrize("config, found, use", [
    ('{"model_type": "whisper"}', "'whisper' model (audio)", "AudioEncoder"),
    ('{"model_type": "dinov2"}', "'dinov2' model (image)", "ImageEncoder"),
    ('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}', "'llama' model (causal lm)", "LLM"),
])
def test_wrong_model_kind_is_refused_at_construction(tmp_path, config, found, use):
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(ModelTypeError) as info:
        TextEncoder(tmp_path)
    assert str(info.value) == (f"{tmp_path} holds a {found}, which TextEncoder cannot run; use "
                               f"arrowengine.{use}({str(tmp_path)!r}) instead")
    assert isinstance(info.value, EngineError) and isinstance(info.value, ValueError)


def test_default_is_the_lean_forward_in_the_cpu_rule_precision(minilm_dir, caplog, cache_dir):
    with caplog.at_level(logging.INFO, logger="arrowengine.runtime.precision"):
        encoder = TextEncoder(minilm_dir)
    expected = select_precision("text").precision
    assert (encoder.precision, encoder.backend.name) == (expected, "fast")
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"TextEncoder({minilm_dir.name}) precision auto -> {expected}"]
    exact = TextEncoder(minilm_dir, precision="fp32")
    assert (exact.precision, exact.backend.name) == ("float32", "fast")
    cosine = (encoder.encode(SENTENCES) * exact.encode(SENTENCES)).sum(axis=1)
    assert cosine.min() >= 0.99


@pytest.mark.parametrize("kwargs, precision, backend, dtype", [
    ({"backend": "eager"}, None, "eager", "float32"),
    ({"dtype": "bfloat16"}, None, "eager", "bfloat16"),
    ({"precision": None}, None, "eager", "float32"),
    ({"quant_mode": "dequant-on-load"}, None, "eager", "float32"),
])
def test_module_forward_options_select_the_module_forward(minilm_dir, kwargs, precision, backend, dtype):
    encoder = TextEncoder(minilm_dir, **kwargs)
    assert (encoder.precision, encoder.backend.name, encoder.dtype) == (precision, backend, dtype)


@pytest.mark.parametrize("kwargs, message", [
    ({"precision": "int4"}, "precision must be 'auto' or one of float32, int8-weights, bfloat16, int8-mixed, "
                            "int8 (aliases fp32, bf16), got 'int4'"),
    ({"precision": "bfloat16", "backend": "onnxruntime"}, "precision='bfloat16' runs the lean forward, which takes "
                                                          "no backend; pass precision=None to use them"),
    ({"precision": "int8", "dtype": "bfloat16", "quant_mode": "int8-kernel"},
     "precision='int8' runs the lean forward, which takes no dtype, quant_mode; pass precision=None to use them"),
    ({"pooling": "median"}, "pooling must be one of ('mean', 'cls', 'max'), got 'median'"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
    ({"max_batch_tokens": 0}, "max_batch_tokens must be >= 1, got 0"),
    ({"precision": None, "dtype": "int8"}, "dtype must be one of float32, float16, bfloat16, got 'int8'"),
    ({"precision": None, "backend": "tpu"}, "backend must be one of eager, compile, onnxruntime, ipex, got 'tpu'"),
    ({"precision": "int8-mixed", "calibration_texts": []},
     "calibration_texts is empty; pass a few hundred sentences or leave it unset for the shipped calibration set"),
])
def test_bad_options_are_config_errors(minilm_dir, kwargs, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        TextEncoder(minilm_dir, **kwargs)


def test_non_text_input_is_an_input_type_error(minilm_dir):
    with pytest.raises(InputTypeError, match=r"^texts\[1\] is a int, expected str$") as info:
        TextEncoder(minilm_dir, precision="fp32").encode(["fine", 3])
    assert isinstance(info.value, TypeError)


def test_shipped_calibration_text_needs_no_data_package():
    texts = default_calibration_texts()
    assert len(texts) >= 300 and len(set(texts)) == len(texts)
    assert {"Thank you", "ok"} <= set(texts)  # the short messages int8 finds hardest are represented
    assert all(t.strip() for t in texts)  # no blank line slipped into the file
    assert max(len(t.split()) for t in texts) >= 20


def test_synthetic_speech_is_deterministic_and_in_range():
    first, again = synthetic_speech(clips=2, seconds=1.0), synthetic_speech(clips=2, seconds=1.0)
    assert [w.shape for w in first] == [(16_000,), (16_000,)] and all(w.dtype == np.float32 for w in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])
    assert all(0.05 < np.abs(w).max() <= 1.0 for w in first)


def test_calibration_is_cached_per_model_and_inputs(minilm_dir, cache_dir, caplog):
    texts = default_calibration_texts()[:48]
    first = TextEncoder(minilm_dir, precision="int8-mixed", calibration_texts=texts)
    assert len(list(cache_dir.glob("smooth-*.pt"))) == 1
    with caplog.at_level(logging.INFO, logger="arrowengine.runtime.calibration"):
        again = TextEncoder(minilm_dir, precision="int8-mixed", calibration_texts=texts)
    assert any(r.getMessage().startswith("SmoothQuant scales from the calibration cache") for r in caplog.records)
    np.testing.assert_array_equal(first.encode(SENTENCES), again.encode(SENTENCES))
    TextEncoder(minilm_dir, precision="int8-mixed", calibration_texts=texts[:40])  # other inputs: another entry
    assert len(list(cache_dir.glob("smooth-*.pt"))) == 2


def test_calibration_key_follows_weights_recipe_and_inputs(minilm_dir):
    from arrowengine.format import WeightFile

    weights = WeightFile.open(minilm_dir)
    key = calibration_key(weights, {"alpha": 0.8}, [b"a", b"b"])
    assert key == calibration_key(weights, {"alpha": 0.8}, [b"a", b"b"])
    assert len({key, calibration_key(weights, {"alpha": 0.5}, [b"a", b"b"]),
                calibration_key(weights, {"alpha": 0.8}, [b"a"])}) == 3


def test_cached_scales_computes_once_and_survives_a_damaged_entry(cache_dir, caplog):
    calls = []

    def compute():
        calls.append(1)
        return {(0, "qkv"): torch.arange(4.0), (1, "up"): torch.ones(2)}

    first = cached_scales("k1", compute)
    second = cached_scales("k1", compute)
    assert len(calls) == 1 and first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    (cache_dir / "smooth-k1.pt").write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="arrowengine.runtime.calibration"):
        third = cached_scales("k1", compute)
    assert len(calls) == 2 and torch.equal(third[(0, "qkv")], torch.arange(4.0))
    assert caplog.records[0].getMessage().startswith(f"calibration cache entry {cache_dir / 'smooth-k1.pt'} is "
                                                     "unreadable")
    assert cached_scales(None, compute) and len(calls) == 3  # no key: no cache


def test_int8_weights_keeps_only_q8_0_blocks_within_cosine_of_fp32(minilm_dir, text_encoder):
    from arrowengine.runtime.native.gguf import block_kernels

    if block_kernels() is None:
        pytest.skip("the native block kernels do not run here (no AVX2 + FMA or no C compiler)")
    texts = default_calibration_texts()[:48]
    encoder = TextEncoder(minilm_dir, precision="int8-weights")
    exact = text_encoder.encode(texts)
    batched = encoder.encode(texts)  # many rows per projection: the float GEMM over dequantized blocks
    single = np.stack([encoder.encode(text)[0] for text in texts[:8]])  # few rows: the block kernel
    assert float((exact * batched).sum(1).min()) >= 0.999
    assert float((exact[:8] * single).sum(1).min()) >= 0.999
    fast = encoder.backend.forward
    linears = [getattr(layer, kind) for layer in fast.layers for kind in ("qkv", "out", "up", "down")]
    assert {linear.kind for linear in linears} == {"q8_0"} and fast.stream_dtype == torch.float32
    assert not any(hasattr(linear, "weight") for linear in linears)  # a quarter of the float32 bytes, no copy kept


def test_int8_weights_runs_the_whole_encoder_in_one_native_call_up_to_the_kernel_rows(minilm_dir):
    """Up to the block kernel's rows the int8-weights encoder is one ``bert_layer.c`` call; it agrees with the
    torch forward over the same blocks to float rounding, for single texts and for padded batches, and a batch
    above the kernel's rows takes the torch forward (its float GEMM is faster there)."""
    from arrowengine.runtime.native.gguf import block_kernels

    if block_kernels() is None:
        pytest.skip("the native block kernels do not run here (no AVX2 + FMA or no C compiler)")
    texts = default_calibration_texts()[:12]
    encoder = TextEncoder(minilm_dir, precision="int8-weights")
    fast = encoder.backend.forward
    native, max_rows = fast._native
    assert max_rows == 128 and len(native) == len(fast.layers)
    single = np.stack([encoder.encode(text)[0] for text in texts])
    padded = encoder.encode(texts, batch_size=4)  # rows of different lengths: the key mask matters
    fast._native = None  # the torch forward over the same Q8_0 blocks
    try:
        reference = np.stack([encoder.encode(text)[0] for text in texts])
        reference_padded = encoder.encode(texts, batch_size=4)
    finally:
        fast._native = (native, max_rows)
    assert float((single * reference).sum(1).min()) >= 0.99999
    assert float((padded * reference_padded).sum(1).min()) >= 0.99999
    np.testing.assert_allclose(padded, single, atol=1e-5)
    calls = []
    fast._native_forward = lambda *args: calls.append(args)  # must not be reached above the kernel's rows
    long_batch = encoder.encode(texts * 8, batch_size=96)
    assert not calls and np.allclose(long_batch[: len(texts)], reference, atol=1e-3)


def test_native_encoder_is_safe_to_call_from_threads(minilm_dir):
    """Each call runs on its own copy of the layer arguments: texts encoded from 4 threads at once get the
    embeddings they get alone."""
    from concurrent.futures import ThreadPoolExecutor

    from arrowengine.runtime.native.gguf import block_kernels

    if block_kernels() is None:
        pytest.skip("the native block kernels do not run here (no AVX2 + FMA or no C compiler)")
    texts = default_calibration_texts()[:16]
    encoder = TextEncoder(minilm_dir, precision="int8-weights")
    alone = [encoder.encode(text)[0] for text in texts]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda text: encoder.encode(text)[0], texts * 3))
    for i, vector in enumerate(together):
        np.testing.assert_allclose(vector, alone[i % len(texts)], atol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 300), max_size=80), st.integers(1, 40), st.integers(1, 1024))
def test_length_batches_cover_every_text_once_within_the_caps(lengths, max_count, max_tokens):
    batches = length_batches(lengths, max_count, max_tokens)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first, within and across batches
    for position, batch in enumerate(batches):
        longest = lengths[batch[0]]
        assert len(batch) <= max_count
        assert len(batch) * longest <= max_tokens or len(batch) == 1  # only a text over the cap goes alone
        if position < len(batches) - 1:  # each batch is as full as the caps allow: one more text breaks one
            assert len(batch) == max_count or (len(batch) + 1) * longest > max_tokens


def test_embeddings_do_not_depend_on_the_token_budget(minilm_dir):
    texts = ["ok", "Thank you so much for the lovely evening, we should do it again soon!", "yes",
             " ".join(["a long message about gardening and tomatoes"] * 12), "see you tomorrow at nine"]
    small = TextEncoder(minilm_dir, precision="fp32", max_batch_tokens=16).encode(texts)
    large = TextEncoder(minilm_dir, precision="fp32", max_batch_tokens=100_000).encode(texts)
    one = np.stack([TextEncoder(minilm_dir, precision="fp32").encode(t)[0] for t in texts])
    np.testing.assert_allclose(small, one, atol=1e-5)
    np.testing.assert_allclose(large, one, atol=1e-5)
