"""Greedy tokens of the real SmolLM2-135M-Instruct equal ``transformers.generate`` (20 real prompts).

CI budget: 20 prompts x 16 new tokens, batched; ``scripts/bench_llm.py`` checks the GGUF-block default against
its dequantized float reference on the same 20 prompts x 64 tokens, one by one.
"""

from __future__ import annotations

import pytest
import torch

from arrowengine.bench.datasets import chat_prompts
from arrowengine.runtime.llm import LLM
from tests.arrowengine.llm_support import smollm2


@pytest.mark.slow
def test_greedy_tokens_equal_transformers_on_20_real_prompts(pytestconfig: pytest.Config) -> None:
    model, tokenizer = smollm2(pytestconfig)
    prompts = chat_prompts(tokenizer)
    assert len(prompts) == 20 and len({len(p) for p in prompts}) > 1
    rows = LLM.from_model(model, tokenizer).generate_ids(prompts, max_new_tokens=16)
    width = max(map(len, prompts))
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(p) for p in prompts])[:, None]).long()
    ref = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                         pad_token_id=2)[:, width:].tolist()
    ref = [r[:r.index(2)] if 2 in r else r for r in ref]
    assert [r.token_ids for r in rows] == ref
