"""CPU backends on the real MiniLM: same embeddings from every backend, logged fallback when unavailable."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from arrowengine.runtime.backends import BackendFallbackWarning, configure_threads, prepare_backend
from arrowengine.runtime.text_encoder import TextEncoder
from tests.conftest import chitchat_messages


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
    with pytest.raises(ValueError, match=r"^backend must be one of eager, compile, onnxruntime, ipex, got 'tpu'$"):
        prepare_backend(text_encoder.model, "tpu")
    with pytest.raises(ValueError, match=r"^threads must be >= 0, got -1$"):
        configure_threads(-1)
    assert configure_threads(0) >= 1
