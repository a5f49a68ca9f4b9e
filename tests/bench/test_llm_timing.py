"""The LLM suite's shared timing rounds: a strategy failing mid-run costs only its own row."""

from __future__ import annotations

import pytest

from arrowengine.bench.context import BenchContext, BenchOptions
from arrowengine.bench.llm import Measured, time_together


def _ctx() -> BenchContext:
    return BenchContext(BenchOptions(suites=("llm",), models=(), repeats=3, warmup=1))


def _counting(tokens_from: int):
    def generate(ids: list[int], n: int) -> list[int]:
        return list(range(tokens_from, tokens_from + n))
    return generate


def test_time_together_times_every_entry_in_the_same_rounds():
    ctx = _ctx()
    order: list[str] = []

    def tracked(name: str):
        def generate(ids: list[int], n: int) -> list[int]:
            order.append(f"{name} {n}")
            return [0] * n
        return generate

    entries = [Measured("ours", "ours", tracked("ours"), 1.0, None),
               Measured("peer", "peer", tracked("peer"), 1.0, None)]
    out = time_together(ctx, "g", entries, [1, 2, 3], 4)
    assert [entry.strategy for entry, *_ in out] == ["ours", "peer"]
    assert all(first.runs == 3 and full.runs == 3 and tokens == [0] * 4 for _, first, full, tokens in out)
    # warm-up round, then 3 timed rounds, each calling every entry's first token and full run in turn
    assert order == ["ours 1", "ours 4", "peer 1", "peer 4"] * 4
    assert ctx.results.results == []


def test_a_strategy_failing_in_the_shared_rounds_gets_its_own_failed_row_and_the_other_its_figures():
    ctx = _ctx()
    calls = {"peer": 0}

    def fails_after_two_calls(ids: list[int], n: int) -> list[int]:
        calls["peer"] += 1
        if calls["peer"] > 2:
            raise RuntimeError("llama_decode returned -1")
        return [7] * n

    entries = [Measured("ours", "ours", _counting(5), 1.0, None),
               Measured("peer", "peer", fails_after_two_calls, 1.0, None)]
    out = time_together(ctx, "smollm2 prompt=32", entries, [1, 2, 3], 4)
    assert [(entry.strategy, tokens) for entry, _, _, tokens in out] == [("ours", [5, 6, 7, 8])]
    assert out[0][1].runs == 3 and out[0][2].runs == 3  # timed alone, with the full repeats
    [failed] = ctx.results.results
    assert (failed.strategy, failed.role, failed.metric, failed.status, failed.value) == (
        "peer", "peer", "decode", "failed", None)
    assert failed.note == "RuntimeError: llama_decode returned -1"


def test_a_lone_entry_failure_propagates_to_the_callers_attempt():
    def broken(ids: list[int], n: int) -> list[int]:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match=r"^out of memory$"):
        time_together(_ctx(), "g", [Measured("ours", "ours", broken, 1.0, None)], [1], 4)
