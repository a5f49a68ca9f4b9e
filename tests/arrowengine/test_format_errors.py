"""Every kind of bad input raises a specific EngineError whose message names the file, the tensor and the fix."""

from __future__ import annotations

import re
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from arrowengine.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    EngineError,
    MissingColumnError,
    ModelConfigError,
    NotParquetError,
    SchemaError,
    TensorSizeError,
    UnknownDtypeError,
    UnsupportedSchemaVersionError,
    WeightFileNotFoundError,
)
from arrowengine.format import WeightFile, ZeroCopyFallbackWarning, verify_weights, write_weights
from arrowengine.format.schema import SUPPORTED_SCHEMA_VERSIONS, schema_v1
from arrowengine.runtime.loading import load_model


def _raises(cls, message: str):
    return pytest.raises(cls, match="^" + re.escape(message) + "$")


def _write_rows(path, rows: list[dict], *, version: str = "1", drop: str | None = None, **options) -> None:
    """Write rows with pyarrow directly (as another tool would), optionally corrupting the schema."""
    schema = schema_v1({"arrowengine.schema_version": version})
    table = pa.Table.from_pylist(rows, schema=schema)
    if drop:
        table = table.drop_columns([drop])
    pq.write_table(table, path, **options)


def _row(name="w", dtype="float32", shape=(2,), data=b"\0" * 8, pad=0):
    return {"name": name, "dtype": dtype, "shape": list(shape), "chunk": 0, "data_offset": pad,
            "nbytes": len(data), "checksum": 0, "data": b"\0" * pad + data}


def test_missing_path(tmp_path):
    path = tmp_path / "nope.parquet"
    with _raises(WeightFileNotFoundError, f"weight file {path} does not exist; convert a model first "
                 f"(arrowengine convert SRC models/NAME) or check the path"):
        WeightFile.open(path)
    assert issubclass(WeightFileNotFoundError, FileNotFoundError)


def test_not_a_parquet_file(tmp_path):
    path = tmp_path / "w.parquet"
    path.write_bytes(b"this is not parquet at all")
    with _raises(NotParquetError, f"{path} is not a Parquet file (it does not start with the PAR1 magic); point "
                 f"at a weights.parquet written by arrowengine, or convert the model with 'arrowengine convert'"):
        WeightFile.open(path)


def test_truncated_file(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.randn(1000)})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with _raises(CorruptFileError, f"{path} is truncated: the Parquet footer is missing ({len(data) // 2} bytes "
                 f"on disk); the copy is incomplete: copy the file again or re-run 'arrowengine convert'"):
        WeightFile.open(path)


def test_corrupted_page_header(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.randn(100), "layers.0.b": torch.randn(10)})
    offset = pq.ParquetFile(path).metadata.row_group(1).column(7).data_page_offset
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(data))
    with _raises(CorruptFileError, f"{path}: row group 1, column 'data': the page header at offset {offset} does "
                 f"not parse (unknown compact type id 15); the file is damaged: re-convert the model or restore "
                 f"it from its source"):
        WeightFile.open(path)


def test_missing_column(tmp_path):
    path = tmp_path / "w.parquet"
    _write_rows(path, [_row()], drop="checksum")
    with _raises(MissingColumnError, f"{path} lacks the required column 'checksum'; the file was not written by "
                 f"arrowengine.write_weights: re-convert the model"):
        WeightFile.open(path)
    assert issubclass(MissingColumnError, KeyError)


def test_bytes_do_not_match_shape_and_dtype(tmp_path):
    path = tmp_path / "w.parquet"
    _write_rows(path, [_row(name="layer.w", shape=(2, 2), data=b"\0" * 12)], compression="none",
                use_dictionary=False)
    with _raises(TensorSizeError, f"{path}: tensor 'layer.w' (row group 0) stores 12 bytes but shape [2, 2] x "
                 f"torch.float32 needs 16; the file is damaged or was written by another tool: re-convert the model"):
        WeightFile.open(path)


def test_unknown_schema_version(tmp_path):
    path = tmp_path / "w.parquet"
    _write_rows(path, [_row()], version="99")
    with _raises(UnsupportedSchemaVersionError, f"{path} declares schema version '99'; this build reads versions "
                 f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}. Upgrade arrowengine or re-convert the model."):
        WeightFile.open(path)


def test_not_a_weight_file(tmp_path):
    path = tmp_path / "w.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), path)
    with _raises(SchemaError, f"{path} is Parquet but not an arrowengine weight file (no "
                 f"arrowengine.schema_version metadata); convert the model with 'arrowengine convert'"):
        WeightFile.open(path)


def test_unknown_dtype(tmp_path):
    path = tmp_path / "w.parquet"
    _write_rows(path, [_row(name="odd", dtype="float128")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ZeroCopyFallbackWarning)
        with pytest.raises(UnknownDtypeError) as excinfo:
            WeightFile.open(path)
    assert str(excinfo.value).startswith(f"{path}: tensor 'odd' has unknown dtype 'float128'; this build knows ")
    assert str(excinfo.value).endswith("Upgrade arrowengine or rewrite the file with a supported dtype.")


def test_model_dir_without_config(tmp_path):
    write_weights(tmp_path / "weights.parquet", {"a": torch.ones(1)})
    with _raises(ModelConfigError, f"{tmp_path} has no config.json, so no architecture can be built; re-convert "
                 f"the model (arrowengine convert SRC {tmp_path})"):
        load_model(tmp_path)


def test_checksum_mismatch_is_reported(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.zeros(16)})
    offset = WeightFile.open(path).info("a").file_offsets[0]
    data = bytearray(path.read_bytes())
    data[offset] = 1
    path.write_bytes(bytes(data))
    report = verify_weights(path)
    assert report.mismatches == ["a[0]"] and not report.ok
    with pytest.raises(ChecksumMismatchError, match=r"tensor a\[0\] \(row group 0\) hashes to"):
        verify_weights(path, strict=True)


@pytest.mark.parametrize("options, reason", [
    ({"compression": "snappy"}, "compressed with SNAPPY"),
    ({"compression": "none", "use_dictionary": True}, "dictionary-encoded"),
    ({"compression": "none", "use_dictionary": False, "data_page_size": 64, "write_batch_size": 1},
     "the column chunk holds more than one page"),
])
def test_other_writers_files_load_through_pyarrow_with_one_warning(tmp_path, options, reason):
    path = tmp_path / "w.parquet"
    values = [torch.arange(n, dtype=torch.float32) for n in (3, 40, 7)]
    rows = [_row(name=f"t{i}", shape=(v.numel(),), data=v.numpy().tobytes()) for i, v in enumerate(values)]
    rows.append(rows[0] | {"name": "t3"})  # a repeated value makes the dictionary encoder worth it
    _write_rows(path, rows, **options)
    with pytest.warns(ZeroCopyFallbackWarning, match=re.escape(reason)) as record:
        weights = WeightFile.open(path)
    assert len(record) == 1
    assert not weights.zero_copy
    for i, v in enumerate(values):
        assert torch.equal(weights[f"t{i}"], v)


def test_every_error_is_an_engine_error():
    for cls in (WeightFileNotFoundError, NotParquetError, CorruptFileError, MissingColumnError, TensorSizeError,
                UnsupportedSchemaVersionError, UnknownDtypeError, ModelConfigError, ChecksumMismatchError):
        assert issubclass(cls, EngineError)
