"""The wire format: golden bytes of the card and delta streams, round trips through batches (with tensors cut
into parts), and damage detection (checksums, missing parts) before anything is built."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federation.card import CardMeta, LoRACard
from federation.delta import Delta, decode_delta, encode_delta
from federation.encoding import LOSSLESS_METHODS, EncodedTensor
from federation.errors import CardError, DeltaError
from federation.wire import WireLimits, card_batches, card_from_batches, delta_batches, delta_from_batches
from tests.federation.support import nudged, tiny_card

A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"


def _fixed_card() -> LoRACard:
    meta = CardMeta("chat", "tiny", "00ff", 1, 2.0, ("q_proj",), version=1, parent_version=0)
    return LoRACard(meta, {A: torch.tensor([[0.0, 0.25, 0.5, 0.75]]), B: torch.tensor([[0.5], [-1.0]])})


def _fixed_delta() -> Delta:
    return Delta("chat", 1, "abcd", {
        A: EncodedTensor("topk_int8", (1, 4), np.array([255, 1], np.uint8), np.array([1, 2], np.uint16), 0.5),
        B: EncodedTensor("dense", (2, 1), np.array([0.5, -1.0], np.float32), np.empty(0, np.uint16)),
    })


def _digest(schema: pa.Schema, batches: list[pa.RecordBatch]) -> str:
    data = schema.serialize().to_pybytes() + b"".join(b.serialize().to_pybytes() for b in batches)
    return hashlib.sha256(data).hexdigest()


def test_card_stream_golden_bytes():
    schema, batches = card_batches(_fixed_card())
    assert schema.metadata[b"federation.kind"] == b"card"
    assert schema.names == ["name", "part", "parts", "shape", "dtype", "data", "checksum"]
    rows = batches[0].to_pylist()
    assert rows[0]["data"].hex() == "000000000000803e0000003f0000403f"
    assert rows[0]["checksum"] == 0xAB0BC5657AEF1DE0  # xxh64 of those 16 bytes
    assert _digest(schema, batches) == GOLDEN_CARD_STREAM


def test_delta_stream_golden_bytes():
    schema, batches = delta_batches(_fixed_delta())
    assert schema.metadata[b"federation.delta"] == b'{"adapter":"chat","base_checksum":"abcd","base_version":1}'
    rows = batches[0].to_pylist()
    assert (rows[0]["method"], rows[0]["indices"].hex(), rows[0]["values"].hex()) == ("topk_int8", "01000200", "ff01")
    assert _digest(schema, batches) == GOLDEN_DELTA_STREAM


def test_round_trips_with_tensors_cut_into_parts():
    card = tiny_card(0)
    limits = WireLimits(max_part_bytes=100, max_batch_bytes=300)
    schema, batches = card_batches(card, limits)
    assert len(batches) > 5 and max(len(r["data"]) for b in batches for r in b.to_pylist()) <= 100
    assert card_from_batches(schema, batches).checksum == card.checksum
    for method in ("dense", "sparse", "int8", "int4", "topk_int8"):
        delta = encode_delta(card, nudged(card, 1), method)
        schema, batches = delta_batches(delta, limits)
        back = delta_from_batches(schema, batches)
        for name, enc in delta.tensors.items():
            got = back.tensors[name]
            assert (got.method, got.shape, got.scale) == (enc.method, enc.shape, enc.scale)
            assert got.values.tobytes() == enc.values.tobytes() and got.indices.tobytes() == enc.indices.tobytes()


def test_damage_is_detected_before_anything_is_built():
    schema, batches = delta_batches(_fixed_delta())
    table = pa.Table.from_batches(batches).to_pylist()
    table[1]["values"] = table[1]["values"][:-1] + b"\x00"
    damaged = pa.RecordBatch.from_pylist(table, schema=schema)
    with pytest.raises(DeltaError, match=r"lora_B\.weight part 0: checksum mismatch"):
        delta_from_batches(schema, [damaged])
    card_schema, card_rows = card_batches(tiny_card(0), WireLimits(max_part_bytes=64, max_batch_bytes=64))
    with pytest.raises(CardError, match="are missing or out of order; the stream was cut short"):
        card_from_batches(card_schema, card_rows[:-1])
    with pytest.raises(DeltaError, match="the stream is not a delta stream"):
        delta_from_batches(card_schema, card_rows)


# sha256 of the serialized schema message followed by every record batch message (Arrow IPC format, stable)
GOLDEN_CARD_STREAM = "bdf6f47041209e07c7dc4f38454222f4c8935f61137012a2d4e1f0fa34b3e1d2"
GOLDEN_DELTA_STREAM = "19a4d1bd4ccc0f06d136675224dc4f7621611c3c0d97f5f2c7e605b6352b6bde"


_values = st.one_of(st.just(0.0), st.just(-0.0), st.floats(width=32, allow_nan=False, allow_infinity=False))


@st.composite
def _lossless_case(draw):
    rank, fan_in, fan_out = draw(st.integers(1, 4)), draw(st.integers(1, 40)), draw(st.integers(1, 40))
    arrays = {name: draw(hnp.arrays(np.float32, shape, elements=_values))
              for name, shape in ((A, (rank, fan_in)), (B, (fan_out, rank)))}
    part = draw(st.integers(4, 200))
    return rank, arrays, WireLimits(max_part_bytes=part, max_batch_bytes=part * draw(st.integers(1, 4)))


@settings(max_examples=40, deadline=None)
@given(case=_lossless_case(), method=st.sampled_from(LOSSLESS_METHODS))
def test_lossless_deltas_survive_the_wire_bit_for_bit(case, method):
    rank, changes, limits = case
    meta = CardMeta("chat", "tiny", "00ff", rank, 2.0, ("q_proj",))
    old = LoRACard(meta, {name: torch.zeros(v.shape) for name, v in changes.items()})
    delta = encode_delta(old, {name: torch.from_numpy(v) for name, v in changes.items()}, method)
    schema, batches = delta_batches(delta, limits)
    received = decode_delta(old, delta_from_batches(schema, batches))
    for name, values in changes.items():  # -0.0, subnormals and extremes arrive as they were sent
        assert received[name].numpy().view(np.uint32).tolist() == values.view(np.uint32).tolist()
