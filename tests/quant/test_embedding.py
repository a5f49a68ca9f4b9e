"""QuantEmbedding: lookups equal the dequantized table's rows, only gathered rows are dequantized, errors."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import quant.embedding as embedding_module
from quant import QuantEmbedding, QuantShapeError, dequantize, quantize, quantize_embedding


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 40), dim=st.integers(1, 70), bits=st.sampled_from([8, 4]), seed=st.integers(0, 2**16))
def test_lookup_is_the_dequantized_row_within_half_a_step(rows, dim, bits, seed):
    table = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed)) * 3
    qt = quantize_embedding(table, bits)
    ids = torch.randint(0, rows, (3, 5), generator=torch.Generator().manual_seed(seed + 1))
    out = QuantEmbedding(qt)(ids)
    assert out.shape == (3, 5, dim) and out.dtype == torch.float32
    torch.testing.assert_close(out, dequantize(qt)[ids], rtol=0, atol=0)
    step = qt.scales.float()[ids.reshape(-1)].view(3, 5, 1)  # one scale per row (group_size 0)
    assert bool(((out - table[ids]).abs() <= step / 2 + 1e-6).all())


def test_only_the_gathered_rows_are_dequantized(monkeypatch):
    table = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    layer = QuantEmbedding(quantize_embedding(table))
    seen = []
    original = embedding_module.dequantize

    def spy(qt, dtype=torch.float32):
        seen.append(qt.shape)
        return original(qt, dtype)

    monkeypatch.setattr(embedding_module, "dequantize", spy)
    layer(torch.tensor([[3, 999, 3]]))
    assert seen == [(3, 16)]


def test_from_embedding_matches_nn_embedding_and_keeps_padding_idx():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 24, padding_idx=0).requires_grad_(False)
    layer = QuantEmbedding.from_embedding(emb, name="word")
    ids = torch.tensor([[0, 7, 49]])
    cosine = nn.functional.cosine_similarity(layer(ids)[0, 1:], emb(ids)[0, 1:], dim=-1)
    assert float(cosine.min()) > 0.9999 and layer.padding_idx == 0
    assert repr(layer) == "QuantEmbedding(50, 24, bits=8, group_size=0, padding_idx=0)"
    torch.testing.assert_close(layer.dequantized_weight(), dequantize(quantize_embedding(emb.weight)))


def test_buffers_are_the_given_tensors_not_copies():
    qt = quantize_embedding(torch.randn(10, 8))
    layer = QuantEmbedding(qt)
    assert layer.packed_weight.data_ptr() == qt.packed.data_ptr()
    assert layer.scales.data_ptr() == qt.scales.data_ptr()
    assert sum(b.numel() * b.element_size() for b in layer.buffers()) == qt.nbytes


def test_errors_name_the_table_and_the_fix():
    with pytest.raises(QuantShapeError, match=re.escape("emb: an embedding table is 2-D [num_embeddings, dim], got "
                                                        "shape [2, 3, 4]")):
        quantize_embedding(torch.zeros(2, 3, 4), name="emb")
    with pytest.raises(QuantShapeError, match=re.escape("w: QuantEmbedding needs a 2-D table [num_embeddings, dim] "
                                                        "quantized along axis 1, got shape [4, 6] axis 0")):
        QuantEmbedding(quantize(torch.randn(4, 6), 8, axis=0, name="w"))
    layer = QuantEmbedding(quantize_embedding(torch.randn(5, 4)), name="word")
    with pytest.raises(QuantShapeError, match=re.escape("word: ids must lie in [0, 5), got values in [-1, 5]")):
        layer(torch.tensor([-1, 5]))
