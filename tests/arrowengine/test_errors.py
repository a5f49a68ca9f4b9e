"""Named errors for what a user can get wrong (issue 17): exact class, builtin parent and message; and checksum
verification at load, off by default."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import xxhash

from arrowengine.converters import ConvertedModel, write_model_dir
from arrowengine.errors import (
    ChecksumMismatchError,
    CorruptFileError,
    EngineError,
    TensorNotFoundError,
    UsageError,
    WeightPathIsDirectoryError,
)
from arrowengine.format import WeightFile, write_weights
from arrowengine.format.schema import schema_v1
from quant.errors import GroupSizeError, QuantOptionError, UnsupportedBitsError


def _raises(cls, message: str):
    return pytest.raises(cls, match="^" + re.escape(message) + "$")


def test_write_weights_into_a_directory(tmp_path):
    with _raises(WeightPathIsDirectoryError, f"cannot write weights to {tmp_path}: it is a directory; pass a file "
                                             f"path such as {tmp_path / 'weights.parquet'}"):
        write_weights(tmp_path, {"a": torch.ones(2)})
    assert issubclass(WeightPathIsDirectoryError, IsADirectoryError)
    assert list(tmp_path.iterdir()) == []


def test_missing_tensor_is_a_readable_key_error(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.ones(2)})
    weights = WeightFile.open(path)
    message = f"{path} has no tensor 'b'; list the names with WeightFile.open(path).keys()"
    with _raises(TensorNotFoundError, message):
        weights["b"]
    with pytest.raises(KeyError) as info:
        weights.info("b")
    assert str(info.value) == message
    assert weights.get("b") is None  # Mapping.get still works: the error is a KeyError


def test_footer_metadata_that_is_not_utf8(tmp_path):
    path = tmp_path / "w.parquet"
    row = {"name": "w", "dtype": "float32", "shape": [2], "chunk": 0, "data_offset": 0, "nbytes": 8, "checksum": 0,
           "data": b"\0" * 8}
    schema = schema_v1({b"arrowengine.schema_version": b"1", b"arrowengine.model_type": b"\xffbert"})
    pq.write_table(pa.Table.from_pylist([row], schema=schema), path)
    with _raises(CorruptFileError, f"{path}: the footer metadata entry b'arrowengine.model_type' is not UTF-8 text "
                                   f"('utf-8' codec can't decode byte 0xff in position 0: invalid start byte); the "
                                   f"file is damaged: restore it or re-convert the model"):
        WeightFile.open(path)


def test_footer_config_that_is_not_json(tmp_path):
    path = tmp_path / "w.parquet"
    write_weights(path, {"a": torch.ones(2)}, metadata={"arrowengine.config": "{oops"})
    with _raises(CorruptFileError, f"{path}: the footer metadata arrowengine.config is not valid JSON (Expecting "
                                   f"property name enclosed in double quotes: line 1 column 2 (char 1)); the file is "
                                   f"damaged: restore it or re-convert the model"):
        WeightFile.open(path)


def _tiny_bert_dir(tmp_path):
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in BertModel(config).state_dict().items()}
    return write_model_dir(ConvertedModel(state, config.to_dict(), source="test"), tmp_path / "tiny-bert")


def _flip_payload_bit(weights_path, name: str) -> str:
    """Flip one bit of tensor ``name``'s stored bytes; the message ``verify=True`` must give for it."""
    weights = WeightFile.open(weights_path)
    info = weights.info(name)
    offset = info.file_offsets[0]
    data = bytearray(weights_path.read_bytes())
    data[offset] ^= 0x01
    weights_path.write_bytes(bytes(data))
    actual = xxhash.xxh64(bytes(data[offset : offset + info.nbytes])).intdigest()
    return (f"{weights_path}: tensor {name}[0] (row group {info.row_group}) hashes to {actual:#018x}, stored "
            f"checksum is {info.checksums[0]:#018x}; the file is damaged: run 'arrowengine verify {weights_path}' "
            f"to list every damaged tensor, then restore the file or re-convert the model")


def test_verify_at_open_and_load_is_opt_in(tmp_path, monkeypatch):
    from arrowengine.runtime.loading import load_model

    model_dir = _tiny_bert_dir(tmp_path)
    path = model_dir / "weights.parquet"
    message = _flip_payload_bit(path, "embeddings.word_embeddings.weight")
    monkeypatch.delenv("ARROWENGINE_RUNTIME_VERIFY_CHECKSUMS", raising=False)
    monkeypatch.chdir(tmp_path)  # no arrowengine.yaml here
    assert WeightFile.open(path).zero_copy  # off by default: opening stays lazy and zero-copy
    load_model(model_dir)
    with _raises(ChecksumMismatchError, message):
        WeightFile.open(model_dir, verify=True)
    with _raises(ChecksumMismatchError, message):
        load_model(model_dir, verify=True)
    monkeypatch.setenv("ARROWENGINE_RUNTIME_VERIFY_CHECKSUMS", "1")
    with _raises(ChecksumMismatchError, message):
        load_model(model_dir)
    load_model(model_dir, verify=False)  # the argument wins over the configuration


def test_verify_accepts_an_intact_file(tmp_path):
    model_dir = _tiny_bert_dir(tmp_path)
    weights = WeightFile.open(model_dir, verify=True)
    assert weights.zero_copy and len(weights) > 0


@pytest.mark.parametrize(("options", "cls", "message"), [
    ({"bits": 3}, UnsupportedBitsError, "bits must be 2, 4 or 8, got 3"),
    ({"group_size": 16}, GroupSizeError, "group_size must be 0 (per channel), 32, 64 or 128, got 16"),
    ({"method": "awq"}, QuantOptionError, "method must be 'rtn' or 'gptq', got 'awq'"),
    ({"clip": "max"}, QuantOptionError, "clip must be 'auto', 'minmax' or 'mse', got 'max'"),
    ({"calib_seq_len": 8}, QuantOptionError, "calib_seq_len must be >= 16 tokens, got 8"),
])
def test_quantize_options(options, cls, message):
    from arrowengine.quantize import QuantizeOptions

    with _raises(cls, message):
        QuantizeOptions(**options)
    assert issubclass(cls, EngineError) and issubclass(cls, ValueError)


def test_quant_package_options():
    from quant import GPTQConfig, quantize

    with _raises(QuantOptionError, "GPTQConfig: percdamp=0.0 must lie in (0, 1]; the usual value is 0.01"):
        GPTQConfig(percdamp=0.0)
    with _raises(QuantOptionError, "GPTQConfig: block_size=0 must be >= 1; the usual value is 128"):
        GPTQConfig(block_size=0)
    with _raises(QuantOptionError, "GPTQConfig: clip='max' is not supported; use 'minmax' or 'mse'"):
        GPTQConfig(clip="max")
    with _raises(QuantOptionError, "clip='max' is not supported; use 'minmax' or 'mse'"):
        quantize(torch.randn(2, 8), bits=8, clip="max")
    from quant import mixed_precision

    with _raises(QuantOptionError, "mixed_precision: search='random' is not supported; use 'greedy' or 'bisect'"):
        mixed_precision(torch.nn.Linear(2, 2), {}, lambda model: 1.0, 0.9, search="random")


def test_bench_unknown_suite():
    from arrowengine.bench.context import BenchOptions
    from arrowengine.bench.runner import SUITES, run_benchmark

    with _raises(UsageError, f"unknown suite(s) ['nope']; choose from {', '.join(SUITES)}"):
        run_benchmark(BenchOptions(suites=("nope",)))


def test_every_new_error_pickles_with_its_message():
    import pickle

    for error in (WeightPathIsDirectoryError("a"), TensorNotFoundError("b"), UsageError("c"), QuantOptionError("d")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
    assert json.dumps(str(TensorNotFoundError("x"))) == '"x"'


def test_encoders_and_llm_take_verify(tmp_path, minilm_dir):
    import inspect

    from arrowengine.runtime.audio_encoder import AudioEncoder
    from arrowengine.runtime.image_encoder import ImageEncoder
    from arrowengine.runtime.llm.engine import LLM
    from arrowengine.runtime.text_encoder import TextEncoder

    for cls in (TextEncoder, AudioEncoder, ImageEncoder, LLM):
        assert inspect.signature(cls).parameters["verify"].default is None, cls
    damaged = tmp_path / "minilm"
    damaged.mkdir()
    for item in minilm_dir.iterdir():
        if item.is_file():
            (damaged / item.name).write_bytes(item.read_bytes())
    message = _flip_payload_bit(damaged / "weights.parquet", "embeddings.word_embeddings.weight")
    with _raises(ChecksumMismatchError, message):
        TextEncoder(damaged, verify=True)
