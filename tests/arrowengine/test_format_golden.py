"""Golden bytes: the on-disk layout of a tiny fixed state dict is pinned.

If this test fails, the file layout changed (a pyarrow upgrade or a writer change). Files written before the
change still load (the reader derives every offset from the file), but the change must be deliberate.
"""

from __future__ import annotations

import pyarrow.parquet as pq
import torch

from arrowengine.format import WeightFile, write_weights
from arrowengine.format.thrift import parse_page_header

STATE = {
    "embed.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3),
    "layers.0.w": torch.tensor([1, -2, 3], dtype=torch.int8),
    "layers.0.b": torch.tensor([0.5, -1.0], dtype=torch.bfloat16),
}
# name -> (row group, payload file offset, leading pad, payload bytes)
LAYOUT = {
    "embed.weight": (0, 384, 111, "000000000000803f0000004000004040000080400000a040"),
    "layers.0.w": (1, 832, 114, "01fe03"),
    "layers.0.b": (1, 896, 57, "003f80bf"),
}
# The single PLAIN data page header of column "data" in each row group: (offset, bytes).
PAGE_HEADERS = [
    (248, "15001596021596022c15021500150615061c000000"),
    (693, "150015f40215f4022c15041500150615061c000000"),
]
METADATA_KEYS = {
    b"ARROW:schema", b"arrowengine.checksum", b"arrowengine.config", b"arrowengine.created_by",
    b"arrowengine.index", b"arrowengine.model_type", b"arrowengine.schema_version",
}
# The footer copy of the small columns (xxh64 checksums of the payload bytes above).
INDEX = (b'{"name":["embed.weight","layers.0.w","layers.0.b"],"dtype":["float32","int8","bfloat16"],'
         b'"shape":[[2,3],[3],[2]],"chunk":[0,0,0],"data_offset":[111,114,57],"nbytes":[24,3,4],'
         b'"checksum":[14318584094891001958,7712852026633679908,10644706558649508554]}')


def test_golden_layout(tmp_path):
    path = tmp_path / "golden.parquet"
    write_weights(path, STATE, config={"model_type": "golden"})
    raw = path.read_bytes()
    assert raw[:4] == raw[-4:] == b"PAR1"
    assert len(raw) == 3602
    weights = WeightFile.open(path)
    pads = {r["name"]: r["data_offset"] for r in pq.read_table(path, columns=["name", "data_offset"]).to_pylist()}
    for name, (group, offset, pad, payload) in LAYOUT.items():
        info = weights.info(name)
        assert (info.row_group, info.file_offsets[0], pads[name]) == (group, offset, pad)
        assert offset % 64 == 0
        assert raw[offset : offset + info.nbytes].hex() == payload
        # PLAIN BYTE_ARRAY: a little-endian u32 length (pad + payload) right before the zero pad
        prefix = offset - pad - 4
        assert int.from_bytes(raw[prefix : prefix + 4], "little") == pad + info.nbytes
        assert raw[prefix + 4 : offset] == b"\0" * pad
    meta = pq.ParquetFile(path).metadata
    for group, (offset, header_hex) in enumerate(PAGE_HEADERS):
        assert meta.row_group(group).column(7).data_page_offset == offset
        assert raw[offset : offset + len(header_hex) // 2].hex() == header_hex
        header = parse_page_header(memoryview(raw)[offset:])
        assert (header.page_type_name, header.encoding_name, header.header_length) == ("DATA_PAGE", "PLAIN", 21)
    metadata = pq.ParquetFile(path).metadata.metadata
    assert set(metadata) == METADATA_KEYS
    assert metadata[b"arrowengine.index"] == INDEX
    assert metadata[b"arrowengine.schema_version"] == b"1"
    assert metadata[b"arrowengine.checksum"] == b"xxh64"
