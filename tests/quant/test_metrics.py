"""Accuracy metrics: cosine statistics, perplexity and relative error against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from quant import QuantShapeError, cosine_stats, perplexity, relative_error


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
