"""Fuzzing the reader: every mutant of a small weight file (V1, V2, V3) either opens and reads, or raises an
``EngineError`` subclass; never a raw ``UnicodeDecodeError``, ``struct.error``, ``IndexError``, ``MemoryError`` ...

Mutations are truncations, bit flips (biased towards the footer and the page headers, where the parsers are)
and extreme 4-byte integers written over the footer length, the footer and the page headers. Derandomized, so CI
sees the same mutants on every run.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrowengine.errors import EngineError
from arrowengine.format import WeightFile, verify_weights, write_weights
from quant import quantize
from quant.gguf import GGUFBlocks

_EXTREME_INTS = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x40000000)


def _state(version: int) -> dict[str, object]:
    g = torch.Generator().manual_seed(version)
    state: dict[str, object] = {
        "embed.weight": torch.randn(6, 4, generator=g),
        "layers.0.norm.weight": torch.randn(4, generator=g).half(),
        "layers.1.proj.bias": torch.arange(3, dtype=torch.int64),
    }
    if version >= 2:
        state["layers.0.proj.weight"] = quantize(torch.randn(5, 64, generator=g), bits=4, group_size=32)
        state["layers.1.proj.weight"] = quantize(torch.randn(3, 8, generator=g), bits=8, group_size=0)
    if version == 3:  # llama.cpp blocks kept as they are (q4_1: 20 bytes per 32 weights, q8_0: 34)
        state["layers.0.up.weight"] = GGUFBlocks("gguf_q4_1", (2, 64), torch.randint(0, 256, (2, 40), generator=g,
                                                                                     dtype=torch.uint8))
        state["layers.1.up.weight"] = GGUFBlocks("gguf_q8_0", (3, 32), torch.randint(0, 256, (3, 34), generator=g,
                                                                                     dtype=torch.uint8))
    return state


class _Sample:
    """A small weight file's bytes and the offsets where its parsers look (footer, page headers)."""

    def __init__(self, version: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "w.parquet"
            write_weights(path, _state(version), config={"model_type": "bert", "hidden_size": 4},
                          quant_recipe={"method": "rtn"} if version == 2 else None)
            self.data = path.read_bytes()
            meta = pq.ParquetFile(path).metadata
        footer_length = struct.unpack("<I", self.data[-8:-4])[0]
        self.footer = range(len(self.data) - 8 - footer_length, len(self.data))
        headers: list[int] = []
        for g in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                start = meta.row_group(g).column(c).data_page_offset
                headers.extend(range(start, min(start + 32, len(self.data))))
        self.headers = headers


SAMPLES = {1: _Sample(1), 2: _Sample(2), 3: _Sample(3)}


@st.composite
def _mutant(draw: st.DrawFn, version: int) -> bytes:
    sample = SAMPLES[version]
    data = bytearray(sample.data)
    size = len(data)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "flip", "flip", "int", "int", "truncate"]))
        region = draw(st.sampled_from(["footer", "footer", "headers", "anywhere"]))
        positions = {"footer": sample.footer, "headers": sample.headers, "anywhere": range(size)}[region]
        pos = draw(st.sampled_from(positions))
        if kind == "truncate":
            del data[draw(st.integers(0, len(data) - 1)) :]
            break
        if pos >= len(data):
            continue
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        else:
            where = min(pos, len(data) - 4)
            if draw(st.booleans()):
                where = len(data) - 8  # the footer length itself
            value = draw(st.sampled_from(_EXTREME_INTS))
            data[where : where + 4] = struct.pack("<I", value)
    return bytes(data)


def _read_everything(path: Path) -> None:
    weights = WeightFile.open(path)
    _ = weights.config, weights.quant_recipe, weights.aliases, weights.zero_copy
    for name in list(weights.keys()):
        tensor = weights[name]
        _ = tensor.sum() if tensor.dtype != torch.bool else tensor.any()
        if weights.is_quantized(name):
            qt = weights.quantized(name)
            _ = (qt.scales.float().sum(), qt.zero_points.sum()) if hasattr(qt, "scales") else qt.data.sum()
    verify_weights(path)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_samples_are_valid(tmp_path, version):
    path = tmp_path / "w.parquet"
    path.write_bytes(SAMPLES[version].data)
    _read_everything(path)
    assert verify_weights(path).ok


def _check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.parquet"
        path.write_bytes(data)
        try:
            _read_everything(path)
        except EngineError:
            pass


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=_mutant(1))
def test_mutants_of_v1_raise_only_engine_errors(data):
    _check(data)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=_mutant(2))
def test_mutants_of_v2_raise_only_engine_errors(data):
    _check(data)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=_mutant(3))
def test_mutants_of_v3_raise_only_engine_errors(data):
    _check(data)
