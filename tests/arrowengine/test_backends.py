"""CPU backends on the real MiniLM: same embeddings from every backend, logged fallback when unavailable."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from arrowengine.datasets import chitchat_messages
from arrowengine.errors import ConfigError
from arrowengine.runtime.backends import BackendFallbackWarning, configure_threads, prepare_backend
from arrowengine.runtime.text_encoder import TextEncoder


@pytest.fixture(scope="module")
def sentences():
    return chitchat_messages(limit=200)[::4]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime", "compile"])
def test_backend_matches_eager(minilm_dir, text_encoder, sentences, backend):
    if backend == "onnxruntime" and importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed (pip install arrowengine[onnx])")
    encoder = TextEncoder(minilm_dir, backend=backend)
    assert encoder.backend.name == backend
    cosine = np.sum(encoder.encode(sentences) * text_encoder.encode(sentences), axis=1)
    assert cosine.min() >= 0.9999


def test_bfloat16_keeps_fidelity(minilm_dir, text_encoder, sentences):
    encoder = TextEncoder(minilm_dir, dtype="bfloat16")
    assert encoder.dtype == "bfloat16"
    cosine = np.sum(encoder.encode(sentences) * text_encoder.encode(sentences), axis=1)
    assert cosine.min() >= 0.99


def test_missing_backend_falls_back_to_eager(text_encoder):
    if importlib.util.find_spec("intel_extension_for_pytorch") is not None:
        pytest.skip("IPEX is installed here, so there is no fallback to observe")
    with pytest.warns(BackendFallbackWarning, match=r"^backend 'ipex' unavailable \(intel_extension_for_pytorch is "
                                                    r"not installed"):
        choice = prepare_backend(text_encoder.model, "ipex")
    assert (choice.name, choice.requested, choice.fell_back) == ("eager", "ipex", True)
    assert choice.forward is text_encoder.model


def test_invalid_backend_and_threads(text_encoder):
    with pytest.raises(ConfigError, match=r"^backend must be one of eager, compile, onnxruntime, ipex, got 'tpu'$"):
        prepare_backend(text_encoder.model, "tpu")
    with pytest.raises(ConfigError, match=r"^threads must be >= 0, got -1$"):
        configure_threads(-1)
    assert configure_threads(0) >= 1


@pytest.fixture(scope="module")
def st_reference(minilm_source, sentences):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_source), device="cpu")
    return model.encode(sentences, batch_size=32, normalize_embeddings=True)


def test_fast_float32_is_exact_against_sentence_transformers(minilm_dir, sentences, st_reference):
    encoder = TextEncoder(minilm_dir, precision="float32")
    assert encoder.backend.name == "fast"
    cosine = np.sum(encoder.encode(sentences) * st_reference, axis=1)
    assert cosine.min() >= 0.99999


@pytest.mark.parametrize("precision", ["bfloat16", "int8-mixed"])
def test_fast_reduced_precision_keeps_cosine(minilm_dir, sentences, st_reference, precision):
    # "Thank you" was the worst sentence of 2,000 chat messages for the int8 paths (short, outlier-dominated)
    texts = [*sentences, "Thank you", "ok", "Thank you very much"]
    encoder = TextEncoder(minilm_dir, precision=precision)
    ref = TextEncoder(minilm_dir, precision="fp32").encode(texts)
    cosine = np.sum(encoder.encode(texts) * ref, axis=1)
    assert cosine.min() >= 0.99
    assert np.sum(encoder.encode(sentences) * st_reference, axis=1).min() >= 0.99


def test_fast_int8_needs_calibration_and_a_known_precision(minilm_dir):
    from arrowengine.runtime.bert_fast import FastBert, FastBertConfig

    encoder = TextEncoder(minilm_dir, precision="fp32")
    with pytest.raises(ConfigError, match=r"^int8 projections need calibration batches"):
        FastBert(encoder.model, FastBertConfig("int8"))
    with pytest.raises(ConfigError, match=r"^precision must be 'auto' or one of float32, int8-weights, bfloat16, "
                                          r"int8-mixed, int8 \(aliases fp32, bf16\), got 'int4'$"):
        TextEncoder(minilm_dir, precision="int4")
