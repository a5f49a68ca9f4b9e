"""The generation loop on a tiny random Llama (real config) with the real SmolLM2 byte-level BPE tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from arrowengine.runtime.llm import LLM, ContextOverflowError, SamplingParams
from tests.arrowengine.llm_support import smollm2, tiny_llama

TEXTS = ["Hi there", "The weather today is sunny and warm,",
         "Alice and Bob met at a cafe on a Monday to plan a long trip to Paris in June with friends"]


@pytest.fixture(scope="module")
def tokenizer(pytestconfig: pytest.Config):
    return smollm2(pytestconfig)[1]


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def tiny(tokenizer) -> tuple[object, LLM]:
    # the tokenizer's full vocabulary, so any text round-trips through the tiny model
    model = tiny_llama(11, vocab_size=len(tokenizer))
    return model, LLM.from_model(model, tokenizer)


def _hf_greedy(model, prompts: list[list[int]], new: int) -> list[list[int]]:
    width = max(map(len, prompts))
    ids = torch.tensor([[2] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                         pad_token_id=2, eos_token_id=2)[:, width:].tolist()
    return [row[:row.index(2)] if 2 in row else row for row in out]


def test_batched_greedy_equals_transformers_generate(tiny, prompts) -> None:
    model, llm = tiny
    rows = llm.generate_ids(prompts, max_new_tokens=16)
    assert [r.token_ids for r in rows] == _hf_greedy(model, prompts, 16)
    assert all(r.finish_reason in ("length", "stop_token") for r in rows)


def test_batch_rows_equal_their_single_runs(tiny, prompts) -> None:
    _, llm = tiny
    batch = llm.generate_ids(prompts, max_new_tokens=10)
    for prompt, row in zip(prompts, batch, strict=True):
        assert llm.generate_ids([prompt], max_new_tokens=10)[0].token_ids == row.token_ids


def test_max_new_tokens_and_text_is_decoded_tokens(tiny, prompts, tokenizer) -> None:
    _, llm = tiny
    row = llm.generate_ids([prompts[1]], max_new_tokens=7, ignore_eos=True)[0]
    assert len(row.token_ids) == 7 and row.finish_reason == "length"
    assert row.text == tokenizer.decode(row.token_ids, skip_special_tokens=True)


def test_seeded_sampling_is_deterministic(tiny, prompts) -> None:
    _, llm = tiny
    params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=123, ignore_eos=True)
    first = llm.generate_ids(prompts, params)
    again = llm.generate_ids(prompts, params)
    assert [r.token_ids for r in first] == [r.token_ids for r in again]
    others = {tuple(llm.generate_ids([prompts[0]], params, seed=s)[0].token_ids) for s in range(4)}
    assert len(others) > 1


def test_stop_string_cuts_output_exactly(tiny, prompts) -> None:
    _, llm = tiny
    full = llm.generate_ids([prompts[2]], max_new_tokens=24, ignore_eos=True)[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    cut = full[:full.find(stop)]
    row = llm.generate_ids([prompts[2]], max_new_tokens=24, ignore_eos=True, stop=["\x00never", stop])[0]
    assert row.text == cut and row.finish_reason == "stop_string"
    pieces = list(llm.stream(TEXTS[2], max_new_tokens=24, ignore_eos=True, stop=stop))
    assert "".join(pieces) == cut


def test_stop_token_ids_end_each_row_on_its_own(tiny, prompts) -> None:
    _, llm = tiny
    free = llm.generate_ids(prompts, max_new_tokens=12, ignore_eos=True)
    stop_id = free[1].token_ids[4]
    rows = llm.generate_ids(prompts, max_new_tokens=12, ignore_eos=True, stop_token_ids=[stop_id])
    for f, r in zip(free, rows, strict=True):
        expected = f.token_ids[:f.token_ids.index(stop_id)] if stop_id in f.token_ids else f.token_ids
        assert r.token_ids == expected
        assert r.finish_reason == ("stop_token" if stop_id in f.token_ids else "length")


@pytest.mark.parametrize("penalty", ["presence_penalty", "frequency_penalty"])
def test_large_presence_or_frequency_penalty_forbids_repeats(tiny, prompts, penalty: str) -> None:
    _, llm = tiny
    plain = llm.generate_ids([prompts[0]], max_new_tokens=30, ignore_eos=True)[0].token_ids
    assert len(set(plain)) < len(plain)  # the random model repeats itself without a penalty
    row = llm.generate_ids([prompts[0]], max_new_tokens=30, ignore_eos=True, **{penalty: 1e4})[0]
    assert len(set(row.token_ids)) == len(row.token_ids) == 30


def test_prompt_longer_than_context_is_refused(tokenizer) -> None:
    llm = LLM.from_model(tiny_llama(12, vocab_size=600, max_positions=32), tokenizer)
    with pytest.raises(ContextOverflowError) as info:
        llm.generate_ids([list(range(3, 40))])
    assert str(info.value) == ("a prompt of 37 tokens leaves no room in the 32-token context window; shorten it "
                               "(or use chat(), which drops old turns)")
    row = llm.generate_ids([list(range(3, 30))], max_new_tokens=50, ignore_eos=True)[0]
    assert len(row.token_ids) == 5  # capped by the context window


def test_perplexity_equals_transformers(tiny, tokenizer) -> None:
    model, llm = tiny
    text = "The quick brown fox jumps over the lazy dog near the river bank, twice."
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    llm_ids = ids[0].tolist()
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    from arrowengine.runtime.llm.perplexity import perplexity_of_ids

    assert perplexity_of_ids(llm.forward, llm_ids, 256, 256) == pytest.approx(math.exp(loss), rel=1e-5)
    # strided: windows of 8 advancing by 4, each scoring only its new tokens, computed with HF logits
    nll, count, prev = 0.0, 0, 1
    for begin in range(0, len(llm_ids), 4):
        end = min(begin + 8, len(llm_ids))
        with torch.no_grad():
            logits = model(ids[:, begin:end]).logits[0]
        for t in range(prev, end):
            nll -= float(logits[t - begin - 1].log_softmax(-1)[llm_ids[t]])
            count += 1
        prev = end
        if end == len(llm_ids):
            break
    assert perplexity_of_ids(llm.forward, llm_ids, 8, 4) == pytest.approx(math.exp(nll / count), rel=1e-5)
