"""Logits transforms and sampling: exact expected values on constructed logits, validation messages."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.runtime.llm import SamplingConfigError, SamplingParams
from arrowengine.runtime.llm.sampling import (
    PenaltyState,
    apply_frequency_penalty,
    apply_min_p,
    apply_presence_penalty,
    apply_repetition_penalty,
    apply_top_k,
    apply_top_p,
    greedy,
    sample_next,
)

INF = math.inf
LOGITS = torch.tensor([[2.0, -1.0, 0.5, -3.0, 4.0, 0.0]])


def test_repetition_penalty_divides_positive_and_multiplies_negative_seen_logits() -> None:
    seen = torch.tensor([[True, True, False, True, False, True]])
    out = apply_repetition_penalty(LOGITS, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, -6.0, 4.0, 0.0]]


def test_presence_penalty_subtracts_once_per_generated_token() -> None:
    counts = torch.tensor([[3, 0, 1, 0, 0, 2]], dtype=torch.int32)
    out = apply_presence_penalty(LOGITS, counts, 0.5)
    assert out.tolist() == [[1.5, -1.0, 0.0, -3.0, 4.0, -0.5]]


def test_frequency_penalty_subtracts_per_occurrence() -> None:
    counts = torch.tensor([[3, 0, 1, 0, 0, 2]], dtype=torch.int32)
    out = apply_frequency_penalty(LOGITS, counts, 0.5)
    assert out.tolist() == [[0.5, -1.0, 0.0, -3.0, 4.0, -1.0]]


def test_penalty_state_sees_prompt_but_counts_only_generated_tokens() -> None:
    prompt = torch.tensor([[9, 0, 1]])  # token 9 sits under padding and must not count
    state = PenaltyState(prompt, torch.tensor([[False, True, True]]), vocab_size=6)
    state.update(torch.tensor([5]))
    state.update(torch.tensor([5]))
    assert state.seen.tolist() == [[True, True, False, False, False, True]]
    assert state.counts.tolist() == [[0, 0, 0, 0, 0, 2]]
    params = SamplingParams(repetition_penalty=2.0, presence_penalty=0.25, frequency_penalty=0.5)
    out = state.apply(LOGITS.clone(), params)
    # token 0: 2/2; token 1: -1*2; token 5: 0*2 - 0.25 - 2*0.5
    assert out.tolist() == [[1.0, -2.0, 0.5, -3.0, 4.0, -1.25]]


def test_top_k_keeps_the_k_largest() -> None:
    out = apply_top_k(LOGITS, 2)
    assert out.tolist() == [[2.0, -INF, -INF, -INF, 4.0, -INF]]
    assert apply_top_k(LOGITS, 0) is LOGITS


def test_top_p_keeps_smallest_set_reaching_p() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    kept = torch.isfinite(apply_top_p(logits, 0.7))
    assert kept.tolist() == [[False, True, False, True]]  # 0.5 + 0.25 reaches 0.7
    kept = torch.isfinite(apply_top_p(logits, 0.75))
    assert kept.tolist() == [[False, True, False, True]]
    kept = torch.isfinite(apply_top_p(logits, 0.76))
    assert kept.tolist() == [[False, True, True, True]]


def test_min_p_drops_tokens_below_fraction_of_top() -> None:
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.15, 0.25]]))
    kept = torch.isfinite(apply_min_p(logits, 0.3))  # threshold 0.15: keeps 0.5, 0.15, 0.25
    assert kept.tolist() == [[False, True, True, True]]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-20, 20, allow_nan=False), min_size=2, max_size=40), st.floats(0.01, 1.0))
def test_top_p_always_keeps_the_argmax(values: list[float], p: float) -> None:
    logits = torch.tensor([values])
    out = apply_top_p(logits, p)
    assert torch.isfinite(out[0, int(logits.argmax())])
    kept_mass = logits.softmax(-1)[torch.isfinite(out)].sum()
    assert kept_mass >= min(p, 1.0) - 1e-5


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([-2.0, 0.0, 1.5, 3.0, -INF, INF]), min_size=5, max_size=5), min_size=1,
                max_size=4))
def test_greedy_picks_what_torch_argmax_picks_ties_included(rows: list[list[float]]) -> None:
    """The numpy argmax behind greedy decoding on CPU picks the first of tied maxima, as torch.argmax does."""
    logits = torch.tensor(rows, dtype=torch.float32)
    picked = greedy(logits)
    assert picked.dtype == torch.int64
    assert picked.tolist() == logits.argmax(dim=-1).tolist()
    assert greedy(logits.double()).tolist() == picked.tolist()  # the torch path (not float32)


def test_greedy_is_argmax_and_seeded_sampling_is_reproducible() -> None:
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    assert sample_next(logits, SamplingParams(), None).tolist() == logits.argmax(-1).tolist()
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.9, min_p=0.01, seed=7)
    draws = [sample_next(logits, params, torch.Generator().manual_seed(7)).tolist() for _ in range(2)]
    assert draws[0] == draws[1]
    many = {tuple(sample_next(logits, params, torch.Generator().manual_seed(s)).tolist()) for s in range(20)}
    assert len(many) > 1  # different seeds explore different tokens


def test_sampling_only_draws_tokens_that_survive_filters() -> None:
    logits = torch.tensor([[5.0, 4.9, 0.0, -1.0, 4.8]])
    params = SamplingParams(temperature=1.0, top_k=2)
    gen = torch.Generator().manual_seed(0)
    drawn = {int(sample_next(logits, params, gen)) for _ in range(50)}
    assert drawn == {0, 1}


@pytest.mark.parametrize(("field", "value", "allowed"), [
    ("temperature", -0.5, "a finite float >= 0"),
    ("top_p", 0.0, "in (0, 1]"),
    ("min_p", 1.0, "in [0, 1)"),
    ("top_k", -1, "an integer >= 0 (0 disables it)"),
    ("max_new_tokens", 0, "an integer >= 1"),
    ("repetition_penalty", 0.0, "a float > 0 (1 disables it)"),
])
def test_invalid_parameters_name_field_and_range(field: str, value: float, allowed: str) -> None:
    with pytest.raises(SamplingConfigError) as info:
        SamplingParams(**{field: value})
    assert str(info.value) == f"SamplingParams.{field}={value!r} is invalid; use {allowed}"
    assert isinstance(info.value, ValueError)


def test_overrides_validate_names_and_normalise_stop() -> None:
    params = SamplingParams().with_overrides(stop="###", stop_token_ids=[5])
    assert params.stop == ("###",) and params.stop_token_ids == (5,)
    with pytest.raises(SamplingConfigError) as info:
        SamplingParams().with_overrides(temprature=1.0)
    assert str(info.value).startswith("unknown sampling parameter(s) ['temprature']; valid: ")
