"""Continuous batching: the batched step over rows of different lengths, rows joining and leaving mid-run."""

from __future__ import annotations

import asyncio

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from arrowengine.runtime.llm.sampling import SamplingParams
from arrowengine.serve.batch import BatchedDecoder
from arrowengine.serve.scheduler import GenerationRequest, Scheduler


def _solo_logits(llm, prompt: list[int], fed: list[int]) -> torch.Tensor:
    """Logits after ``prompt + fed`` through LLM's own single-sequence path."""
    return llm.logits(prompt + fed)[-1]


def test_batched_step_equals_each_row_alone(tiny_llm):
    dec = BatchedDecoder(tiny_llm, rows=4, max_len=64)
    prompts = {0: [1, 5, 9, 200, 31], 2: [7, 8], 3: list(range(40, 52))}  # row 1 stays idle (a hole)
    for row, ids in prompts.items():
        dec.prefill(row, ids[:3])
        if len(ids) > 3:
            dec.prefill(row, ids[3:])  # chunked prefill
    fed: dict[int, list[int]] = {r: [] for r in prompts}
    for step in range(3):
        rows = sorted(prompts)
        tokens = [100 + 7 * r + step for r in rows]
        logits = dec.step(rows, tokens)
        for i, row in enumerate(rows):
            fed[row].append(tokens[i])
            torch.testing.assert_close(logits[i], _solo_logits(tiny_llm, prompts[row], fed[row]), atol=1e-4,
                                       rtol=1e-4)
    assert dec.lengths == [5 + 3, 0, 2 + 3, 12 + 3]


@settings(max_examples=3, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=2, max_size=4))
def test_rows_of_any_lengths(tiny_llm, lengths):
    dec = BatchedDecoder(tiny_llm, rows=len(lengths), max_len=32)
    prompts = [[(13 * r + i) % 500 + 3 for i in range(n)] for r, n in enumerate(lengths)]
    for row, ids in enumerate(prompts):
        dec.prefill(row, ids)
    logits = dec.step(list(range(len(prompts))), [42] * len(prompts))
    for row, ids in enumerate(prompts):
        torch.testing.assert_close(logits[row], _solo_logits(tiny_llm, ids, [42]), atol=1e-4, rtol=1e-4)


def test_requests_join_and_leave_between_steps(tiny_llm):
    sched = Scheduler(tiny_llm, name="t", max_batch=2, max_queue=8, context=256, prefill_chunk=4)
    prompts = [tiny_llm.tokenizer(t)["input_ids"] for t in ("a long story", "hello there", "x", "numbers: 1 2 3")]
    lengths = [20, 3, 9, 5]

    async def run() -> list[GenerationRequest]:
        loop = asyncio.get_running_loop()
        reqs = []
        for ids, n in zip(prompts, lengths, strict=True):
            req = GenerationRequest(list(ids), SamplingParams(max_new_tokens=n, ignore_eos=True))
            req.bind(loop)
            sched.submit(req)  # 4 requests, 2 rows: two wait and join as rows free up
            reqs.append(req)
        texts = await asyncio.gather(*[_collect(r) for r in reqs])
        for req, text in zip(reqs, texts, strict=True):
            req.text = text
        return reqs

    try:
        reqs = asyncio.run(run())
    finally:
        sched.stop()
    for req, ids, n in zip(reqs, prompts, lengths, strict=True):
        assert req.completion_tokens == n and req.finish_reason == "length"
        expected = tiny_llm.generate_ids([ids], max_new_tokens=n, ignore_eos=True)[0].text
        assert req.text == expected
    assert reqs[2].admitted_at >= reqs[1].finished_at  # the third joined when the short second one left


async def _collect(req: GenerationRequest) -> str:
    return "".join([piece async for piece in req.events()])


async def _generate(sched: Scheduler, ids: list[int], n: int) -> GenerationRequest:
    """Submit ``ids`` for ``n`` greedy tokens and wait for them; the request comes back with its text."""
    req = GenerationRequest(list(ids), SamplingParams(max_new_tokens=n, ignore_eos=True))
    req.bind(asyncio.get_running_loop())
    sched.submit(req)
    req.text = await _collect(req)
    return req


def test_a_row_keeps_a_shared_prefix_and_prefills_only_the_rest(tiny_llm):
    dec = BatchedDecoder(tiny_llm, rows=2, max_len=64)
    first = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    dec.prefill(1, first)
    dec.step([1], [300])  # a generated token is held too
    assert dec.tokens[1] == [*first, 300] and dec.lengths[1] == 10
    second = [11, 12, 13, 14, 15, 16, 77, 78]
    assert dec.common_prefix(1, second) == 6 and dec.common_prefix(0, second) == 0
    dec.reset(1, keep=6)
    logits = dec.prefill(1, second[6:])
    torch.testing.assert_close(logits[0], _solo_logits(tiny_llm, second, []), atol=1e-4, rtol=1e-4)
    assert dec.tokens[1] == second and dec.lengths[1] == len(second)
    with pytest.raises(ValueError, match=r"^row 1 holds 8 tokens; cannot keep 9$"):
        dec.reset(1, keep=9)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_scheduler_reuses_the_longest_cached_prefix(tiny_llm, prefix_cache):
    """A second request sharing a system prompt with a finished one takes its row and prefills only its own tail;
    the greedy text equals a fresh generation either way."""
    sched = Scheduler(tiny_llm, name="t", max_batch=3, max_queue=8, context=256, prefill_chunk=64,
                      prefix_cache=prefix_cache)
    system = tiny_llm.tokenizer("You are a helpful assistant who answers briefly and kindly.")["input_ids"]
    prompts = [system + tiny_llm.tokenizer(t)["input_ids"] for t in (" Where is Rome?", " Name a red fruit.")]

    async def run() -> list[GenerationRequest]:
        return [await _generate(sched, ids, 6) for ids in prompts]  # one after the other

    try:
        first, second = asyncio.run(run())
    finally:
        sched.stop()
    assert first.cached_tokens == 0
    common = next(i for i, (a, b) in enumerate(zip(*prompts, strict=False)) if a != b)
    assert second.cached_tokens == (common if prefix_cache else 0) and common >= len(system) - 1
    for req, ids in zip((first, second), prompts, strict=True):
        assert req.text == tiny_llm.generate_ids([ids], max_new_tokens=6, ignore_eos=True)[0].text


def test_a_repeated_prompt_feeds_its_last_token_in_the_batched_step(tiny_llm):
    """A prompt whose row holds all of it but the last token runs no prefill of its own: that token rides in the
    decode step (here beside a running stream), and the greedy text still equals a fresh generation."""
    sched = Scheduler(tiny_llm, name="t", max_batch=2, max_queue=8, context=256, prefill_chunk=64)
    prompt = tiny_llm.tokenizer("You are a helpful assistant. Name three colours of the rainbow.")["input_ids"]
    other = tiny_llm.tokenizer("Count from one to ten, please, slowly.")["input_ids"]
    prefills: list[int] = []
    original = sched.decoder.prefill

    def counting(row: int, ids: list[int]) -> torch.Tensor:
        prefills.append(len(ids))
        return original(row, ids)

    sched.decoder.prefill = counting

    async def run() -> list[GenerationRequest]:
        first = await _generate(sched, prompt, 5)
        return [first, *await asyncio.gather(_generate(sched, other, 12), _generate(sched, prompt, 5))]

    try:
        first, running, again = asyncio.run(run())
    finally:
        sched.stop()
    assert again.cached_tokens == len(prompt) - 1
    assert sorted(prefills) == sorted([len(prompt), len(other)])  # nothing prefilled for the repeat
    for req, ids in ((first, prompt), (running, other), (again, prompt)):
        assert req.text == tiny_llm.generate_ids([ids], max_new_tokens=req.completion_tokens, ignore_eos=True)[0].text


def test_a_prefix_shared_with_a_longer_history_is_copied_not_taken(tiny_llm):
    """B shares only the system prompt with A's finished chat: B starts from a copy of that prefix in another row,
    so A's whole history stays cached and A's repeat prefills nothing; every text equals a fresh generation."""
    sched = Scheduler(tiny_llm, name="t", max_batch=3, max_queue=8, context=256, prefill_chunk=64)
    system = tiny_llm.tokenizer("You are a helpful assistant who answers briefly and kindly.")["input_ids"]
    a, b = (system + tiny_llm.tokenizer(t)["input_ids"] for t in (" Where is Rome?", " Name a red fruit."))

    async def run() -> list[GenerationRequest]:
        return [await _generate(sched, ids, 6) for ids in (a, b, a)]

    rows: list[int] = []
    original = sched.decoder.reset, sched.decoder.copy_prefix
    sched.decoder.reset = lambda row, keep=0: (rows.append(row), original[0](row, keep))[1]
    sched.decoder.copy_prefix = lambda src, dst, keep: (rows.append(dst), original[1](src, dst, keep))[1]
    try:
        first, second, again = asyncio.run(run())
    finally:
        sched.stop()
    common = next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)
    assert rows[0] != rows[1]  # B got a copy elsewhere, so A's repeat still finds A's whole prompt cached
    assert (second.cached_tokens, again.cached_tokens) == (common, len(a) - 1)
    for req, ids in ((first, a), (second, b), (again, a)):
        assert req.text == tiny_llm.generate_ids([ids], max_new_tokens=6, ignore_eos=True)[0].text


def test_repeated_chats_sent_together_all_find_their_prompts_cached(tiny_llm):
    """Two chats sharing a system prompt, served one after the other, then both repeated at once with every row
    holding something: each repeat finds its whole prompt cached and nothing is prefilled. (Taking the emptiest
    free row, the longer chat's repeat copied its prompt over the shorter chat's row, which then prefilled again.)"""
    sched = Scheduler(tiny_llm, name="t", max_batch=2, max_queue=8, context=256, prefill_chunk=64)
    system = tiny_llm.tokenizer("You are a helpful assistant who answers briefly and kindly.")["input_ids"]
    long_chat, short_chat = (system + tiny_llm.tokenizer(t)["input_ids"]
                             for t in (" Name three red fruits and one green vegetable, please.", " Hi."))
    prefills: list[int] = []
    original = sched.decoder.prefill
    sched.decoder.prefill = lambda row, ids: (prefills.append(len(ids)), original(row, ids))[1]

    async def run() -> list[GenerationRequest]:
        for ids in (long_chat, short_chat):
            await _generate(sched, ids, 6)
        prefills.clear()
        return list(await asyncio.gather(_generate(sched, long_chat, 6), _generate(sched, short_chat, 6)))

    try:
        again_long, again_short = asyncio.run(run())
    finally:
        sched.stop()
    assert (again_long.cached_tokens, again_short.cached_tokens) == (len(long_chat) - 1, len(short_chat) - 1)
    assert prefills == []
    for req, ids in ((again_long, long_chat), (again_short, short_chat)):
        assert req.text == tiny_llm.generate_ids([ids], max_new_tokens=6, ignore_eos=True)[0].text


def test_copy_prefix_gives_the_logits_of_a_fresh_prefill(tiny_llm):
    dec = BatchedDecoder(tiny_llm, rows=2, max_len=64)
    history = [11, 12, 13, 14, 15, 16, 17, 18, 19]
    dec.prefill(0, history)
    dec.copy_prefix(0, 1, keep=6)
    assert dec.tokens[1] == history[:6] and dec.lengths == [9, 6] and dec.tokens[0] == history
    logits = dec.prefill(1, [77, 78])
    torch.testing.assert_close(logits[0], _solo_logits(tiny_llm, [*history[:6], 77, 78], []), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match=r"^row 0 holds 9 tokens; cannot copy 10$"):
        dec.copy_prefix(0, 1, keep=10)
