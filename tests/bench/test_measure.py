"""Timing helpers: warm-up, repeats, round-robin order and the time cap."""

from __future__ import annotations

import time

from arrowengine.bench.measure import time_call, time_interleaved


def test_time_call_warms_up_then_times_each_repeat():
    calls = []
    spread, result = time_call(lambda: calls.append(len(calls)) or len(calls), warmup=2, repeats=3)
    assert len(calls) == 5 and result == 5
    assert spread.runs == 3


def test_interleaved_runs_one_call_of_each_per_round():
    order: list[str] = []
    fns = {name: (lambda name=name: order.append(name) or name) for name in ("a", "b", "c")}
    timed = time_interleaved(fns, warmup=1, repeats=3)
    assert all(spread.runs == 3 for spread, _ in timed.values())
    assert order == ["a", "b", "c"] + ["a", "b", "c"] * 3  # warm-ups first, then round-robin rounds
    assert {name: result for name, (_, result) in timed.items()} == {"a": "a", "b": "b", "c": "c"}


def test_interleaved_cap_stops_after_two_rounds():
    calls = {"slow": 0, "fast": 0}

    def slow() -> None:
        calls["slow"] += 1
        time.sleep(0.02)

    def fast() -> None:
        calls["fast"] += 1

    time_interleaved({"slow": slow, "fast": fast}, warmup=0, repeats=50, max_seconds=0.01)
    assert calls == {"slow": 2, "fast": 2}  # the cap is checked once at least 2 full rounds ran
