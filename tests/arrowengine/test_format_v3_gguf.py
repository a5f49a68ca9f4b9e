"""Schema V3: GGUF block rows kept byte for byte: golden layout, mapped blocks, V2 readers refuse, damaged rows."""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from arrowengine.errors import TensorSizeError, UnsupportedSchemaVersionError
from arrowengine.format import WeightFile, write_weights
from arrowengine.format import index as format_index
from arrowengine.format.schema import ALIGNMENT, schema_v2
from quant.gguf import GGUFBlocks

# Golden V3 file: one Q4_1 tensor [2, 32] (blocks of 20 bytes: d = 1.0, m = -0.5, then 16 nibble bytes).
GOLDEN_V3_INDEX = (
    b'{"name":["layers.0.w","layers.0.b"],"dtype":["float32","float16"],"shape":[[2,32],[2]],"chunk":[0,0],'
    b'"data_offset":[103,20],"nbytes":[40,4],"checksum":[9728001335667614746,14623537952582928471],'
    b'"quant_type":["gguf_q4_1","none"],"bits":[4,0],"group_size":[32,0],"axis":[1,0],"symmetric":[false,false],'
    b'"scales_dtype":["float16","none"],"scales_offset":[86,60],"scales_nbytes":[0,0],'
    b'"zero_points_offset":[103,60],"zero_points_nbytes":[0,0],"packed_shape":[[2,20],[2]]}'
)


def golden_state() -> dict[str, object]:
    data = torch.arange(40, dtype=torch.uint8).reshape(2, 20)
    data[:, 0:4] = torch.tensor([0x00, 0x3C, 0x00, 0xB8], dtype=torch.uint8)  # float16 1.0 and -0.5
    return {"layers.0.w": GGUFBlocks("gguf_q4_1", (2, 32), data),
            "layers.0.b": torch.tensor([1.5, -2.0], dtype=torch.float16)}


def test_v3_golden_layout(tmp_path):
    state = golden_state()
    path = tmp_path / "golden_v3.parquet"
    report = write_weights(path, state)
    raw = path.read_bytes()
    assert report.schema_version == 3 and len(raw) == 5749
    weights = WeightFile.open(path)
    assert weights.schema_version == 3 and weights.zero_copy
    assert weights.info("layers.0.w").file_offsets == (1152,) and weights.info("layers.0.b").file_offsets == (1216,)
    assert raw[1152:1192] == bytes(state["layers.0.w"].data.flatten().tolist())
    assert raw[1216:1220].hex() == "003e00c0"
    meta = pq.ParquetFile(path).metadata.metadata
    assert meta[b"arrowengine.schema_version"] == b"3"
    assert meta[b"arrowengine.index"] == GOLDEN_V3_INDEX
    blocks = weights.quantized("layers.0.w")
    lo, hi = weights.mapping_range()
    assert isinstance(blocks, GGUFBlocks) and lo <= blocks.data.data_ptr() < hi
    assert (blocks.data.data_ptr() - lo) % ALIGNMENT == 0
    assert blocks.dequantize()[0, :4].tolist() == [3.5, 4.5, 5.5, 6.5]  # low nibbles 4, 5, 6, 7: 1.0 * q - 0.5
    assert blocks.dequantize()[0, 16:20].tolist() == [-0.5] * 4  # high nibbles of bytes 4..7: 0


def test_a_v2_only_reader_refuses_v3_by_version(tmp_path, monkeypatch):
    path = tmp_path / "w.parquet"
    write_weights(path, golden_state())
    monkeypatch.setattr(format_index, "SUPPORTED_SCHEMA_VERSIONS", (1, 2))
    message = (f"{path} declares schema version '3'; this build reads versions 1, 2. Upgrade arrowengine or "
               f"re-convert the model.")
    with pytest.raises(UnsupportedSchemaVersionError, match="^" + re.escape(message) + "$"):
        WeightFile.open(path)


def test_v3_blocks_that_do_not_match_the_shape(tmp_path):
    path = tmp_path / "w.parquet"
    row = {"name": "layers.0.w", "dtype": "float32", "shape": [2, 64], "chunk": 0, "data_offset": 0, "nbytes": 40,
           "checksum": 0, "quant_type": "gguf_q4_1", "bits": 4, "group_size": 32, "axis": 1, "symmetric": False,
           "scales_dtype": "float16", "scales_offset": 0, "scales_nbytes": 0, "zero_points_offset": 0,
           "zero_points_nbytes": 0, "packed_shape": [2, 20], "scales": b"", "zero_points": b"", "data": b"\0" * 40}
    pq.write_table(pa.Table.from_pylist([row], schema=schema_v2({"arrowengine.schema_version": "3"})), path,
                   compression="none", use_dictionary=False)
    message = (f"{path}: GGUF tensor 'layers.0.w' (gguf_q4_1) of shape [2, 64] stores blocks [2, 20] with 0 + 0 "
               f"bytes of separate scales / zero points, but needs blocks [2, 40] and none; the file is damaged: "
               f"re-convert the model")
    with pytest.raises(TensorSizeError, match="^" + re.escape(message) + "$"):
        WeightFile.open(path)
