"""Schema V2 (quantized): round trips map zero-copy, golden layout, bad scales, model loading with QuantLinear."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from arrowengine.errors import TensorSizeError
from arrowengine.format import WeightFile, verify_weights, write_weights
from arrowengine.format.schema import ALIGNMENT, schema_v2
from quant import QuantLinear, dequantize, quantize


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bits=st.sampled_from([2, 4, 8]), group=st.sampled_from([0, 32, 64, 128]), rows=st.integers(1, 9),
       cols=st.integers(1, 200), seed=st.integers(0, 2**31 - 1))
def test_v2_round_trip_maps_every_blob(tmp_path, bits, group, rows, cols, seed):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    qt = quantize(w, bits=bits, group_size=group)
    norm = torch.randn(cols).half()
    path = tmp_path / "w.parquet"
    write_weights(path, {"layers.0.proj.weight": qt, "layers.0.norm.weight": norm},
                  quant_recipe={"method": "rtn", "bits": bits, "group_size": group})
    weights = WeightFile.open(path)
    assert weights.schema_version == 2 and weights.zero_copy
    loaded = weights.quantized("layers.0.proj.weight")
    lo, hi = weights.mapping_range()
    for tensor in (loaded.packed, loaded.scales, loaded.zero_points):
        assert lo <= tensor.data_ptr() < hi and (tensor.data_ptr() - lo) % ALIGNMENT == 0
    assert torch.equal(loaded.packed, qt.packed)
    assert torch.equal(loaded.scales.view(-1), qt.scales.reshape(-1))
    assert torch.equal(loaded.zero_points.view(-1), qt.zero_points.reshape(-1))
    assert torch.equal(dequantize(loaded), dequantize(qt))
    assert torch.equal(weights["layers.0.norm.weight"], norm)
    assert verify_weights(path).ok
    assert weights.quant_recipe == {"bits": bits, "group_size": group, "method": "rtn"}


# Golden layout of a tiny V2 file: name -> {blob column: (file offset, bytes)}.
GOLDEN_V2 = {
    "layers.0.w": {"data": (1152, "206498db2064b9fd"), "scales": (768, "4530782f"), "zero_points": (960, "0f00")},
    "layers.0.b": {"data": (1216, "003e00c0")},
}
GOLDEN_V2_INDEX = (
    b'{"name":["layers.0.w","layers.0.b"],"dtype":["float32","float16"],"shape":[[2,8],[2]],"chunk":[0,0],'
    b'"data_offset":[103,52],"nbytes":[8,4],"checksum":[10754429388135760127,14623537952582928471],'
    b'"quant_type":["int4","none"],"bits":[4,0],"group_size":[0,0],"axis":[1,0],"symmetric":[false,false],'
    b'"scales_dtype":["float16","none"],"scales_offset":[91,56],"scales_nbytes":[4,0],'
    b'"zero_points_offset":[103,58],"zero_points_nbytes":[2,0],"packed_shape":[[2,4],[2]]}'
)


def test_v2_golden_layout(tmp_path):
    w = torch.arange(-8, 8, dtype=torch.float32).reshape(2, 8) / 4
    state = {"layers.0.w": quantize(w, bits=4, group_size=0),
             "layers.0.b": torch.tensor([1.5, -2.0], dtype=torch.float16)}
    path = tmp_path / "golden_v2.parquet"
    write_weights(path, state, quant_recipe={"method": "rtn", "bits": 4, "group_size": 0})
    raw = path.read_bytes()
    assert len(raw) == 5848
    weights = WeightFile.open(path)
    for name, blobs in GOLDEN_V2.items():
        info = weights.info(name)
        for column, (offset, payload) in blobs.items():
            actual = info.file_offsets[0] if column == "data" else info.blob_offsets[column]
            assert actual == offset and offset % ALIGNMENT == 0
            assert raw[offset : offset + len(payload) // 2].hex() == payload
    meta = pq.ParquetFile(path).metadata.metadata
    assert meta[b"arrowengine.schema_version"] == b"2"
    assert meta[b"arrowengine.quant_recipe"] == b'{"bits": 4, "group_size": 0, "method": "rtn"}'
    assert meta[b"arrowengine.index"] == GOLDEN_V2_INDEX


def test_v2_scales_that_do_not_match_the_shape(tmp_path):
    path = tmp_path / "w.parquet"
    row = {"name": "layers.0.w", "dtype": "float32", "shape": [4, 64], "chunk": 0, "data_offset": 0, "nbytes": 128,
           "checksum": 0, "quant_type": "int4", "bits": 4, "group_size": 32, "axis": 1, "symmetric": False,
           "scales_dtype": "float16", "scales_offset": 0, "scales_nbytes": 6, "zero_points_offset": 0,
           "zero_points_nbytes": 8, "packed_shape": [4, 32], "scales": b"\0" * 6, "zero_points": b"\0" * 8,
           "data": b"\0" * 128}
    pq.write_table(pa.Table.from_pylist([row], schema=schema_v2({"arrowengine.schema_version": "2"})), path,
                   compression="none", use_dictionary=False)
    message = (f"{path}: quantized tensor 'layers.0.w' stores 6 bytes of scales and 8 of zero points, but shape "
               f"[4, 64] with group_size=32 needs 16 and 8; the file is damaged: re-quantize the model")
    with pytest.raises(TensorSizeError, match="^" + re.escape(message) + "$"):
        WeightFile.open(path)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dequant-on-the-fly", "int8-kernel", "dequant-on-load"])
def test_int8_minilm_loads_as_quantlinear(tmp_path, minilm_dir, text_encoder, mode):
    from arrowengine.converters import ConvertedModel, write_model_dir
    from arrowengine.runtime.loading import load_config_dict, load_model
    from arrowengine.runtime.text_encoder import TextEncoder

    float_weights = WeightFile.open(minilm_dir)
    state = {}
    for name in float_weights.keys():
        tensor = float_weights[name]
        is_linear = tensor.dim() == 2 and ".layer." in name and name.endswith(".weight")
        state[name] = quantize(tensor, bits=8, group_size=0, name=name) if is_linear else tensor
    model = ConvertedModel(state_dict=state, config=load_config_dict(minilm_dir),
                           files={f: minilm_dir / f for f in ("tokenizer.json", "modules.json",
                                                              "sentence_bert_config.json", "1_Pooling/config.json")})
    dst = write_model_dir(model, tmp_path / "minilm-int8", quant_recipe={"method": "rtn", "bits": 8})
    loaded = load_model(dst, quant_mode=mode)
    layers = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 36 and {m.mode for m in layers} == {mode}
    if mode == "dequant-on-the-fly":
        lo, hi = loaded.arrowengine_weights.mapping_range()
        assert all(lo <= m.packed_weight.data_ptr() < hi for m in layers)
    encoder = TextEncoder(dst, quant_mode=mode)
    sentences = ["The meeting moved to Tuesday.", "I love hiking in the mountains on weekends!", "ok"]
    cosine = np.sum(encoder.encode(sentences) * text_encoder.encode(sentences), axis=1)
    assert cosine.min() >= 0.99
