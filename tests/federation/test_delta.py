"""Delta encodings: lossless ones round-trip bit for bit (hypothesis), lossy ones stay within their bounds,
error feedback loses nothing, ``auto`` picks the smallest within its bound, and bad deltas change nothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.card import LoRACard
from federation.delta import DeltaConfig, ErrorFeedback, apply_delta, decode_delta, encode_delta
from federation.encoding import LOSSLESS_METHODS, decode_tensor, encode_tensor
from federation.errors import BaseVersionMismatchError, DeltaError
from tests.federation.support import nudged, tiny_card

_floats = st.floats(width=32, allow_nan=False, allow_infinity=False, allow_subnormal=True)
_arrays = hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                     elements=st.one_of(st.just(0.0), _floats))


@settings(max_examples=60, deadline=None)
@given(values=_arrays, method=st.sampled_from(LOSSLESS_METHODS))
def test_lossless_encodings_round_trip_bit_for_bit(values, method):
    delta = torch.from_numpy(values)
    decoded = decode_tensor(encode_tensor(delta, method))
    assert decoded.shape == delta.shape
    assert decoded.numpy().view(np.uint32).tolist() == values.view(np.uint32).tolist()  # -0.0 and subnormals too


@settings(max_examples=40, deadline=None)
@given(values=hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40),
                         elements=st.floats(-100, 100, width=32)),
       bits=st.sampled_from([8, 4]))
def test_int_encodings_stay_within_half_a_step(values, bits):
    delta = torch.from_numpy(values)
    enc = encode_tensor(delta, f"int{bits}")
    assert enc.nbytes == math.ceil(values.size * bits / 8)
    err = (decode_tensor(enc) - delta).abs().max()
    assert float(err) <= enc.scale / 2 + 1e-6 * float(delta.abs().max())


@settings(max_examples=40, deadline=None)
@given(values=hnp.arrays(np.float32, st.tuples(st.integers(1, 8), st.integers(1, 300)),
                         elements=st.floats(-10, 10, width=32)),
       density=st.floats(0.01, 1.0))
def test_topk_keeps_the_largest_entries(values, density):
    delta = torch.from_numpy(values)
    enc = encode_tensor(delta, "topk_int8", density=density)
    k = math.ceil(density * values.size)
    positions = enc.positions()
    assert len(positions) == k == enc.values.size
    threshold = np.sort(np.abs(values).ravel())[::-1][k - 1]
    assert (np.abs(values.ravel()[positions]) >= threshold).all()
    assert enc.nbytes == k * (1 + enc.indices.itemsize)


def test_sign1_sends_one_bit_per_value_and_the_mean_magnitude():
    delta = torch.tensor([[0.5, -2.0, 0.0, 1.5, -0.25, 3.0, -1.0, 2.0, -0.75]])
    enc = encode_tensor(delta, "sign1")
    assert enc.nbytes == 2 and enc.values.tolist() == [0b10101101, 0b0]
    assert enc.scale == float(torch.tensor(float(delta.abs().mean())).half())
    assert torch.equal(decode_tensor(enc), torch.where(delta >= 0, enc.scale, -enc.scale))


def test_fp16_round_trips_fp16_values_exactly():
    delta = torch.randn(8, 16).half().float()
    assert torch.equal(decode_tensor(encode_tensor(delta, "fp16")), delta)


def test_lossless_delta_applied_on_two_nodes_gives_identical_cards():
    old = tiny_card(0)
    new = nudged(old, 1)
    for method in LOSSLESS_METHODS:
        delta = encode_delta(old, new, method)
        assert apply_delta(old, delta).checksum == apply_delta(old, delta).checksum
        for name, change in decode_delta(old, delta).items():
            assert torch.equal(change, new.tensors[name] - old.tensors[name])


def test_error_feedback_loses_nothing():
    old = tiny_card(0)
    feedback = ErrorFeedback()
    targets = [nudged(old, s) for s in range(1, 5)]
    sent = {n: torch.zeros_like(t) for n, t in old.tensors.items()}
    wanted = {n: torch.zeros_like(t) for n, t in old.tensors.items()}
    for target in targets:
        delta = encode_delta(old, target, "topk_int8", config=DeltaConfig(density=0.1), feedback=feedback)
        for name, change in decode_delta(old, delta).items():
            sent[name] += change
            wanted[name] += target.tensors[name] - old.tensors[name]
    for name in old.tensors:  # what was sent plus what is still owed is exactly what was wanted
        torch.testing.assert_close(sent[name] + feedback.residuals[name], wanted[name], rtol=0, atol=1e-5)


def test_auto_picks_the_smallest_encoding_within_the_bound():
    old = tiny_card(0)
    new = nudged(old, 1)
    strict = encode_delta(old, new, "auto", config=DeltaConfig(max_error=0.0))
    assert set(strict.methods) <= set(LOSSLESS_METHODS)
    loose = encode_delta(old, new, "auto", config=DeltaConfig(max_error=0.2))
    assert "int4" in loose.methods and loose.nbytes < encode_delta(old, new, "int8").nbytes
    for name, enc in loose.tensors.items():
        target = new.tensors[name] - old.tensors[name]
        assert float((decode_tensor(enc) - target).norm() / target.norm()) <= 0.2
    unchanged = encode_delta(old, old, "auto")
    assert unchanged.nbytes == 0  # sparse with nothing in it


def test_bad_deltas_are_refused_and_change_nothing():
    old = tiny_card(0)
    new = nudged(old, 1)
    before = old.checksum
    name = sorted(new.tensors)[0]
    poisoned = dict(new.tensors, **{name: new.tensors[name].clone().fill_(float("nan"))})
    with pytest.raises(DeltaError, match=f"delta of '{name}' holds .* NaN/Inf values"):
        encode_delta(old, poisoned, "dense")
    with pytest.raises(DeltaError, match=r"new shape .* a changed rank needs a full sync"):
        encode_delta(old, dict(new.tensors, **{name: torch.zeros(1, 1)}), "dense")
    delta = encode_delta(old, new, "int8")
    moved = apply_delta(old, delta)
    with pytest.raises(BaseVersionMismatchError, match=r"made against version 0 .* the card is version 1.* full sync"):
        apply_delta(moved, delta)
    with pytest.raises(DeltaError, match="unknown delta method 'zip'"):
        encode_delta(old, new, "zip")
    assert old.checksum == before
    assert isinstance(LoRACard, type)
