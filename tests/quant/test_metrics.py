"""Accuracy metrics: cosine statistics, perplexity and relative error against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant import QuantShapeError, cosine_stats, perplexity, relative_error, windowed_perplexity


def test_cosine_stats_match_numpy() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 16, generator=gen)
    b = a + 0.3 * torch.randn(200, 16, generator=gen)
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    cos = (an * bn).sum(1) / np.linalg.norm(an, axis=1) / np.linalg.norm(bn, axis=1)
    stats = cosine_stats(a, b)
    assert stats.count == 200
    assert stats.mean == pytest.approx(cos.mean(), abs=1e-12)
    assert stats.min == pytest.approx(cos.min(), abs=1e-12)
    assert stats.p05 == pytest.approx(np.quantile(cos, 0.05), abs=1e-12)
    assert stats.p50 == pytest.approx(np.median(cos), abs=1e-12)
    assert set(stats.as_dict()) == {"mean", "min", "p01", "p05", "p50", "count"}


def test_perplexity_of_uniform_logits_is_the_vocabulary_size() -> None:
    logits = torch.zeros(2, 9, 50)
    labels = torch.randint(0, 50, (2, 9))
    assert perplexity(logits, labels) == pytest.approx(50.0)


def test_perplexity_matches_manual_nll_with_shift_and_ignore() -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 6, 11, generator=gen)
    labels = torch.tensor([[3, 1, 4, -100, 5, 9]])
    logp = torch.log_softmax(logits[0], dim=-1)
    # position t predicts label t+1; the ignored label (-100) is skipped
    nll = [-float(logp[t, labels[0, t + 1]]) for t in range(5) if labels[0, t + 1] != -100]
    assert perplexity(logits, labels) == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-6)


def test_perplexity_shape_mismatch() -> None:
    with pytest.raises(QuantShapeError) as info:
        perplexity(torch.zeros(1, 5, 7), torch.zeros(1, 4, dtype=torch.long))
    assert str(info.value) == (
        "perplexity: logits [1, 5, 7] do not match labels [1, 4]; expected logits [..., seq, vocab] and "
        "labels [..., seq]"
    )


def test_relative_error() -> None:
    ref = torch.tensor([3.0, 4.0])
    assert relative_error(torch.tensor([3.0, 5.0]), ref) == pytest.approx(0.2)
    with pytest.raises(QuantShapeError) as info:
        relative_error(torch.ones(2), torch.zeros(2))
    assert str(info.value) == "relative_error: the reference is all zeros, so a relative error is undefined"


def _tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def test_windowed_perplexity_scores_each_token_once_per_window() -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 64, (23,), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        whole = perplexity(model(ids[None]).logits, ids[None])
        # windows of 5 scored tokens: [0..5] scores 1..5, [5..10] scores 6..10, ..., [20..22] scores 21..22
        nll, count = 0.0, 0
        for start in range(0, 22, 5):
            chunk = ids[start:start + 6]
            logits = model(chunk[None, :-1]).logits[0]
            nll += float(torch.nn.functional.cross_entropy(logits, chunk[1:], reduction="sum"))
            count += chunk.numel() - 1
    assert count == 22
    assert windowed_perplexity(model, ids, 64) == pytest.approx(whole, rel=1e-6)  # one window: the whole stream
    assert windowed_perplexity(model, ids, 5) == pytest.approx(math.exp(nll / count), rel=1e-6)


def test_windowed_perplexity_needs_a_stream_of_two_tokens() -> None:
    with pytest.raises(QuantShapeError) as err:
        windowed_perplexity(_tiny_llama(), torch.tensor([3]), 8)
    assert str(err.value) == "windowed_perplexity: ids [1]; expected a 1-D stream of >= 2 tokens"
