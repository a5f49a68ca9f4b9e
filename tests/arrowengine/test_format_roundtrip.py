"""Round trips through the weight format: every dtype and shape, aliases, chunks, pyarrow interop."""

from __future__ import annotations

import gc
import math

import numpy as np
import pyarrow.parquet as pq
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrowengine.format import WeightFile, write_weights
from arrowengine.format.schema import ALIGNMENT
from arrowengine.format.writer import layer_group

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32, torch.int64,
          torch.bool]


def _random_tensor(draw, dtype: torch.dtype) -> torch.Tensor:
    ndim = draw(st.integers(0, 3))
    shape = [draw(st.integers(0, 7)) for _ in range(ndim)]
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=g).bool()
    if dtype.is_floating_point:
        return torch.randn(shape, generator=g).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -1000), min(info.max, 1000), shape, generator=g, dtype=torch.int64).to(dtype)


@st.composite
def state_dicts(draw) -> dict[str, torch.Tensor]:
    count = draw(st.integers(1, 6))
    result = {}
    for i in range(count):
        dtype = draw(st.sampled_from(DTYPES))
        name = draw(st.sampled_from([f"model.layers.{i % 3}.w{i}", f"embed{i}.weight", f"head.{i}"]))
        result[name] = _random_tensor(draw, dtype)
    return result


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=state_dicts())
def test_round_trip_any_dtype_and_shape(tmp_path, state):
    path = tmp_path / "w.parquet"
    write_weights(path, state)
    weights = WeightFile.open(path)
    assert weights.zero_copy
    assert set(weights.keys()) == set(state)
    lo, hi = weights.mapping_range()
    for name, tensor in state.items():
        loaded = weights[name]
        assert loaded.dtype == tensor.dtype and loaded.shape == tensor.shape
        assert torch.equal(loaded, tensor)
        if tensor.numel():
            assert lo <= loaded.data_ptr() < hi
            assert (loaded.data_ptr() - lo) % ALIGNMENT == 0


def test_pyarrow_reads_identical_bytes(tmp_path):
    state = {f"encoder.layer.{i}.w": torch.randn(17, 5 + i) for i in range(3)}
    state["embeddings.weight"] = torch.randn(11, 3).bfloat16()
    write_weights(tmp_path / "w.parquet", state)
    table = pq.read_table(tmp_path / "w.parquet")
    assert table.num_rows == len(state)
    for row in table.to_pylist():
        raw = row["data"][row["data_offset"]:]
        expected = state[row["name"]].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        assert raw == expected
        assert row["nbytes"] == len(expected)
        assert row["data"][: row["data_offset"]] == b"\0" * row["data_offset"]


def test_one_row_group_per_layer(tmp_path):
    names = ["embed.weight", "model.layers.0.q", "model.layers.0.k", "model.layers.1.q", "norm.weight",
             "model.layers.1.k"]
    write_weights(tmp_path / "w.parquet", {n: torch.ones(2) for n in names})
    meta = pq.ParquetFile(tmp_path / "w.parquet").metadata
    groups = [pq.ParquetFile(tmp_path / "w.parquet").read_row_group(i, columns=["name"]).column(0).to_pylist()
              for i in range(meta.num_row_groups)]
    assert groups == [["embed.weight", "norm.weight"], ["model.layers.0.q", "model.layers.0.k"],
                      ["model.layers.1.q", "model.layers.1.k"]]
    assert layer_group("model.layers.12.mlp.up.weight") == "model.layers.12"
    assert layer_group("lm_head.weight") == ""


def test_tied_tensors_are_stored_once_and_share_memory(tmp_path):
    embed = torch.randn(10, 4)
    write_weights(tmp_path / "w.parquet", {"embed.weight": embed, "lm_head.weight": embed})
    weights = WeightFile.open(tmp_path / "w.parquet")
    assert weights.aliases == {"lm_head.weight": "embed.weight"}
    assert pq.read_table(tmp_path / "w.parquet").num_rows == 1
    assert weights["lm_head.weight"].data_ptr() == weights["embed.weight"].data_ptr()
    assert torch.equal(weights["lm_head.weight"], embed)


def test_large_tensor_is_split_into_chunks(tmp_path):
    big = torch.arange(1000, dtype=torch.float32).reshape(10, 100)
    write_weights(tmp_path / "w.parquet", {"big": big, "small": torch.ones(3)}, max_chunk_bytes=1024)
    table = pq.read_table(tmp_path / "w.parquet", columns=["name", "chunk", "nbytes"])
    chunks = [r for r in table.to_pylist() if r["name"] == "big"]
    assert [c["chunk"] for c in chunks] == list(range(math.ceil(4000 / 1024)))
    assert sum(c["nbytes"] for c in chunks) == 4000
    weights = WeightFile.open(tmp_path / "w.parquet")
    assert torch.equal(weights["big"], big)


def test_tensors_outlive_the_weight_file_object(tmp_path):
    write_weights(tmp_path / "w.parquet", {"a": torch.arange(100, dtype=torch.float32)})
    tensor = WeightFile.open(tmp_path / "w.parquet")["a"]
    gc.collect()
    assert float(tensor.sum()) == float(np.arange(100).sum())


def test_in_place_edits_never_reach_the_file(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.zeros(64)})
    before = path.read_bytes()
    tensor = WeightFile.open(path)["a"]
    tensor.fill_(7.0)
    assert path.read_bytes() == before
    assert torch.equal(WeightFile.open(path)["a"], torch.zeros(64))


def test_metadata_round_trip(tmp_path):
    write_weights(tmp_path / "w.parquet", {"a": torch.ones(1)}, {"recipe": {"bits": 8}, "note": "x"},
                  config={"model_type": "bert", "hidden_size": 4})
    weights = WeightFile.open(tmp_path / "w.parquet")
    assert weights.schema_version == 1
    assert weights.model_type == "bert"
    assert weights.config == {"hidden_size": 4, "model_type": "bert"}
    assert weights.metadata["recipe"] == '{"bits": 8}'
    assert weights.metadata["note"] == "x"
