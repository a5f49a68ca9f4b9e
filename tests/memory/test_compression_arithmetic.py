"""The integer arithmetic coder and the logits -> frequency-table quantisation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from memory.compression import ArithmeticDecoder, ArithmeticEncoder, frequencies_from_logits
from memory.compression.arithmetic import MAX_TOTAL, find_symbol
from memory.compression.lm_coder import _decode_bytes, _encode_bytes


def _code(symbols: list[int], tables: list[np.ndarray]) -> bytes:
    encoder = ArithmeticEncoder()
    for s, cum in zip(symbols, tables, strict=True):
        encoder.encode(int(cum[s]), int(cum[s + 1]), int(cum[-1]))
    return encoder.finish()


def _decode(data: bytes, tables: list[np.ndarray]) -> list[int]:
    decoder = ArithmeticDecoder(data)
    out = []
    for cum in tables:
        s = find_symbol(cum, decoder.target(int(cum[-1])))
        decoder.consume(int(cum[s]), int(cum[s + 1]), int(cum[-1]))
        out.append(s)
    return out


@st.composite
def _tables_and_symbols(draw):
    n = draw(st.integers(1, 60))
    tables, symbols = [], []
    for _ in range(n):
        freqs = draw(st.lists(st.integers(1, 5000), min_size=1, max_size=40))
        if draw(st.booleans()):  # skewed tables exercise long runs of underflow bits
            freqs[0] = MAX_TOTAL - sum(freqs[1:])
        cum = np.concatenate([[0], np.cumsum(freqs)]).astype(np.int64)
        tables.append(cum)
        symbols.append(draw(st.integers(0, len(freqs) - 1)))
    return symbols, tables


@settings(max_examples=80, deadline=None)
@given(_tables_and_symbols())
def test_arithmetic_round_trip_on_arbitrary_tables(case):
    symbols, tables = case
    assert _decode(_code(symbols, tables), tables) == symbols


def test_arithmetic_golden_bytes():
    # a fixed 4-symbol table {1, 2, 3, 10}/16 and a fixed message: the code is part of the record format
    cum = np.array([0, 1, 3, 6, 16], dtype=np.int64)
    symbols = [3, 3, 0, 2, 1, 3, 3, 3, 2, 0]
    data = _code(symbols, [cum] * len(symbols))
    assert data.hex() == "9d5cd0"
    assert _decode(data, [cum] * len(symbols)) == symbols


def test_certain_symbols_cost_almost_nothing():
    cum = np.array([0, 1, MAX_TOTAL], dtype=np.int64)
    data = _code([1] * 1000, [cum] * 1000)
    assert len(data) <= 1
    assert _decode(data, [cum] * 1000) == [1] * 1000


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=2, max_size=300), st.integers(17, 30))
def test_frequencies_keep_every_symbol_and_fit_the_total(logits, bits):
    cum = frequencies_from_logits(np.array(logits, dtype=np.float32), bits)
    freqs = np.diff(cum)
    assert cum[0] == 0 and freqs.min() >= 1
    assert cum[-1] <= 1 << bits
    assert np.array_equal(cum, frequencies_from_logits(np.array(logits, dtype=np.float32), bits))


def test_frequencies_follow_the_probabilities():
    logits = np.log(np.array([0.7, 0.2, 0.1], dtype=np.float32))
    freqs = np.diff(frequencies_from_logits(logits, 24)) / float(1 << 24)
    assert np.allclose(freqs, [0.7, 0.2, 0.1], atol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=200))
def test_byte_path_round_trip(data):
    assert _decode_bytes(_encode_bytes(data), len(data)) == data
