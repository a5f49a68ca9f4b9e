"""Model loading from converted directories: zero-copy, parity with the usual loaders, tied weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from arrowengine.converters import ConvertedModel, read_model_card, write_model_dir
from arrowengine.datasets import chitchat_messages
from arrowengine.runtime.loading import load_model

EXTRA_SENTENCES = [
    "Zero-copy loading maps the file instead of reading it.",
    "¿Dónde está la biblioteca?",
    "東京は日本の首都です。",
    "1234 5678 90",
    "a",
    "The quick brown fox jumps over the lazy dog " * 40,  # longer than max_seq_length: truncated
    "😀 emoji and accents: café, naïve, façade",
]


def test_opening_minilm_reads_no_weights_and_maps_every_tensor(minilm_dir):
    # A fresh interpreter, so that nothing else in this process has touched the file's pages.
    script = textwrap.dedent(f"""
        import json, os, psutil, torch, pyarrow.parquet
        from arrowengine.format import WeightFile
        from arrowengine.format import write_weights
        path = {str(minilm_dir / "weights.parquet")!r}
        # pyarrow's first use allocates ~10 MiB of library state (memory pool, compute kernels): warm it up on
        # a tiny file so that what is measured next is only what opening the model costs.
        write_weights({str(minilm_dir.parent / "warmup.parquet")!r}, {{"x": torch.ones(4)}})
        WeightFile.open({str(minilm_dir.parent / "warmup.parquet")!r})
        proc = psutil.Process()
        before = proc.memory_info().rss
        weights = WeightFile.open(path)
        growth = proc.memory_info().rss - before
        tensors = {{name: weights[name] for name in weights.keys()}}
        real = os.path.realpath(path)
        ranges, resident, current = [], 0, False
        for line in open("/proc/self/smaps"):  # resident pages of the file mapping, before any tensor is used
            parts = line.split()
            if "-" in parts[0] and len(parts[0]) > 8 and not parts[0].endswith(":"):
                current = len(parts) >= 6 and parts[5] == real
                if current:
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((lo, hi))
            elif current and parts[0] == "Rss:":
                resident += int(parts[1]) * 1024
        inside = sum(any(lo <= t.data_ptr() and t.data_ptr() + t.nbytes <= hi for lo, hi in ranges)
                     for t in tensors.values() if t.numel())
        print(json.dumps({{"growth": growth, "size": os.path.getsize(path), "inside": inside,
                           "tensors": sum(1 for t in tensors.values() if t.numel()), "zero_copy": weights.zero_copy,
                           "resident": resident}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["zero_copy"]
    assert result["inside"] == result["tensors"] == 104
    assert result["growth"] < 0.05 * result["size"], result
    assert result["resident"] < 0.05 * result["size"], result  # only footer and page headers were touched


def test_load_model_assigns_mapped_tensors(minilm_dir):
    model = load_model(minilm_dir)
    lo, hi = model.arrowengine_weights.mapping_range()
    params = list(model.parameters())
    assert len(params) == 103
    assert all(lo <= p.data_ptr() < hi for p in params)
    assert not any(p.requires_grad for p in params)
    assert not model.training


@pytest.mark.slow
def test_text_encoder_matches_sentence_transformers(text_encoder, minilm_source):
    from sentence_transformers import SentenceTransformer

    messages = chitchat_messages(limit=4000)
    sentences = messages[::40][:100] + EXTRA_SENTENCES  # varied: short chat lines to long truncated text
    assert len(sentences) >= 100
    reference = SentenceTransformer(str(minilm_source), device="cpu").encode(
        sentences, normalize_embeddings=True, batch_size=32, convert_to_numpy=True)
    ours = text_encoder.encode(sentences)
    assert ours.shape == reference.shape == (len(sentences), 384)
    cosine = np.sum(ours * reference, axis=1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999, (cosine.min(), sentences[int(cosine.argmin())])


def test_text_encoder_order_and_edge_cases(text_encoder):
    texts = ["short", "a much longer sentence that needs more tokens than the first one", "mid length text"]
    together = text_encoder.encode(texts, batch_size=2)
    alone = np.stack([text_encoder.encode(t)[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    assert text_encoder.encode([]).shape == (0, 384)
    with pytest.raises(TypeError, match=r"^texts\[1\] is a int, expected str$"):
        text_encoder.encode(["ok", 3])


def test_tied_weights_are_retied_after_loading(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                         architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    reference = LlamaForCausalLM(config).eval()
    assert reference.lm_head.weight.data_ptr() == reference.model.embed_tokens.weight.data_ptr()
    model = ConvertedModel(state_dict=reference.state_dict(), config=config.to_dict(), source="test")
    model_dir = write_model_dir(model, tmp_path / "tiny-llama")
    assert read_model_card(model_dir)["tied_weights"] == {"lm_head.weight": "model.embed_tokens.weight"}
    loaded = load_model(model_dir)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 2]])
    with torch.inference_mode():
        torch.testing.assert_close(loaded(ids).logits, reference(ids).logits, rtol=0, atol=0)


def test_model_card_records_the_conversion(minilm_dir):
    card = read_model_card(minilm_dir)
    assert card["source_format"] == "huggingface"
    assert card["license"] == "apache-2.0"
    assert card["schema_version"] == 1
    assert card["num_parameters"] == 22713728
    assert card["num_tensors"] == 104
    assert (minilm_dir / "tokenizer.json").is_file() and (minilm_dir / "1_Pooling" / "config.json").is_file()
