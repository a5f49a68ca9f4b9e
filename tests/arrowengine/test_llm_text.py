"""Text handling with the real SmolLM2-135M-Instruct: UTF-8 streaming, chat truncation, perplexity."""

from __future__ import annotations

import math

import pytest
import torch

from arrowengine.datasets import chitchat_messages
from arrowengine.runtime.llm import LLM, ContextOverflowError
from arrowengine.runtime.llm.chat import render_chat
from arrowengine.runtime.llm.detokenize import IncrementalDetokenizer
from tests.arrowengine.llm_support import smollm2

MULTIBYTE = "Café naïve — 你好，世界 🙂🚀 Grüße"


@pytest.fixture(scope="module")
def real(pytestconfig: pytest.Config):
    return smollm2(pytestconfig)


@pytest.fixture(scope="module")
def llm(real) -> LLM:
    return LLM.from_model(*real)


def test_incremental_detokenizer_never_emits_partial_characters(real) -> None:
    tokenizer = real[1]
    ids = tokenizer(MULTIBYTE)["input_ids"]
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)  # byte-level BPE really splits characters
    detok = IncrementalDetokenizer(tokenizer)
    pieces = [detok.push(i) for i in ids]
    assert "" in pieces  # a token that only starts a character emits nothing yet
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) + detok.flush() == MULTIBYTE


@pytest.mark.slow
def test_stream_of_multibyte_text_equals_generate(llm) -> None:
    prompt = "Translate to Chinese and add an emoji: good morning, friend. Answer: 早上好"
    pieces = list(llm.stream(prompt, max_new_tokens=24))
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == llm.generate(prompt, max_new_tokens=24)


class _WrapperOnly:
    """The tokenizer seen through transformers' ``decode`` alone (no ``backend_tokenizer``)."""

    def __init__(self, tokenizer) -> None:
        self.decode = tokenizer.decode


def test_incremental_detokenizer_decodes_as_the_transformers_wrapper(real) -> None:
    """The fast tokenizer's own decode (the detokenizer's shortcut) gives the pieces transformers' decode gives."""
    tokenizer = real[1]
    assert tokenizer.backend_tokenizer is not None
    ids = tokenizer(MULTIBYTE + " <|im_end|> and\n\n  spaces , here .")["input_ids"]
    fast, wrapped = IncrementalDetokenizer(tokenizer), IncrementalDetokenizer(_WrapperOnly(tokenizer))
    assert [fast.push(i) for i in ids] == [wrapped.push(i) for i in ids]
    assert fast.flush() == wrapped.flush()


def test_chat_truncation_keeps_system_and_newest_turns(real) -> None:
    tokenizer = real[1]
    texts = chitchat_messages(12)
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts[:11])]
    messages = [{"role": "system", "content": "You answer briefly."}, *turns]
    kept = [messages[0], *turns[-3:]]  # newest three turns start with a user turn (index 8)
    ids, dropped = render_chat(tokenizer, messages, max_prompt_tokens=10_000)
    assert dropped == 0
    expected = tokenizer(tokenizer.apply_chat_template(kept, tokenize=False, add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"]
    with_four = [messages[0], *turns[-4:]]
    four_len = len(tokenizer(tokenizer.apply_chat_template(with_four, tokenize=False, add_generation_prompt=True),
                             add_special_tokens=False)["input_ids"])
    ids, dropped = render_chat(tokenizer, messages, max_prompt_tokens=four_len - 1)
    assert ids == expected and dropped == 8
    assert len(ids) <= four_len - 1


def test_chat_that_cannot_fit_names_the_fix(real) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "word " * 50}]
    with pytest.raises(ContextOverflowError) as info:
        render_chat(real[1], messages, max_prompt_tokens=20)
    assert str(info.value).endswith("more than the 20 the context window leaves for the prompt; shorten them or "
                                    "lower max_new_tokens")


@pytest.mark.slow
def test_perplexity_equals_transformers_on_real_chat_text(real, llm) -> None:
    model, tokenizer = real
    text = " ".join(chitchat_messages(40))[:1200]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = model(ids, labels=ids).loss
    assert llm.perplexity(text) == pytest.approx(math.exp(loss), rel=1e-4)
