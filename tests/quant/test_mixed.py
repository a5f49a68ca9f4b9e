"""Mixed precision on real MiniLM: sensitivity ranking, the greedy FP16 recipe, sizes, unreachable targets."""

from __future__ import annotations

import pytest
import torch

from quant import CalibrationError, embedding_cosine_evaluator, layer_sensitivity, mixed_precision, quantize

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(minilm, chitchat_sentences, embed_fn):
    """INT2 RTN weights for the last MiniLM layer's six Linears and an embedding-cosine evaluator."""
    model, tokenizer = minilm
    sentences = chitchat_sentences[200:224]
    reference = embed_fn(model, tokenizer, sentences)
    evaluate = embedding_cosine_evaluator(lambda m: embed_fn(m, tokenizer, sentences), reference)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("encoder.layer.5.")]
    qweights = {n: quantize(dict(model.named_modules())[n].weight.detach(), 2, 32, name=n) for n in names}
    return model, qweights, evaluate


def test_recipe_meets_target_keeping_most_sensitive_layers(setup) -> None:
    model, qweights, evaluate = setup
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sens = layer_sensitivity(model, qweights, evaluate)
    assert set(sens) == set(qweights) and all(v > 0 for v in sens.values())
    recipe = mixed_precision(model, qweights, evaluate, 0.995, sensitivity=sens)
    assert recipe.quantized_score < 0.995  # the target is not met with every layer at INT2
    assert recipe.target_met and recipe.score >= 0.995
    ranked = sorted(sens, key=sens.get, reverse=True)
    assert recipe.fp16_layers == ranked[: len(recipe.fp16_layers)]
    assert 0 < len(recipe.fp16_layers) < len(qweights)
    assert sorted(recipe.fp16_layers + recipe.quantized_layers) == sorted(qweights)
    assert recipe.quantized_bytes == sum(qweights[n].nbytes for n in recipe.quantized_layers)
    assert recipe.total_bytes < recipe.float32_bytes / 2
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # model left unchanged


def test_unreachable_target_is_reported(setup) -> None:
    model, qweights, evaluate = setup
    two = dict(list(qweights.items())[:2])
    recipe = mixed_precision(model, two, evaluate, 1.5, sensitivity=dict.fromkeys(two, 1.0))
    assert not recipe.target_met
    assert sorted(recipe.fp16_layers) == sorted(two) and recipe.quantized_layers == []


def test_sensitivity_needs_layers(setup) -> None:
    model, _, evaluate = setup
    with pytest.raises(CalibrationError) as info:
        layer_sensitivity(model, {}, evaluate)
    assert str(info.value) == "layer_sensitivity: no quantized layers given"


def test_bisect_finds_the_same_recipe_as_greedy(setup) -> None:
    model, qweights, evaluate = setup
    sens = layer_sensitivity(model, qweights, evaluate)
    greedy = mixed_precision(model, qweights, evaluate, 0.995, sensitivity=sens)
    calls = []

    def counting(m):
        calls.append(1)
        return evaluate(m)

    bisect = mixed_precision(model, qweights, counting, 0.995, sensitivity=sens, search="bisect")
    assert bisect.target_met and bisect.fp16_layers == greedy.fp16_layers
    assert bisect.score == pytest.approx(greedy.score, abs=1e-9)
    assert len(calls) <= 2 + 3  # quantized score, all-FP16 check, then log2(6) rounded up


def test_bisect_unreachable_and_unknown_search(setup) -> None:
    model, qweights, evaluate = setup
    two = dict(list(qweights.items())[:2])
    recipe = mixed_precision(model, two, evaluate, 1.5, sensitivity=dict.fromkeys(two, 1.0), search="bisect")
    assert not recipe.target_met and sorted(recipe.fp16_layers) == sorted(two)
    with pytest.raises(ValueError, match=r"^mixed_precision: search='binary' is not supported; use 'greedy' or"):
        mixed_precision(model, two, evaluate, 0.9, search="binary")
