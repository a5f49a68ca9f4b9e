"""Benchmark result rows, ratios to a named baseline, and the targets the issues set.

Every speed figure is a :class:`Result` in a *group* (one model, one case such as ``batch=32``) that names its
baseline strategy; ``ratio`` is the speed-up over that baseline measured in the same run (> 1 is faster), whatever
the unit (throughput or latency). Every result carries its fidelity (cosine, token agreement, relative error), so
no speed is shown without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Fidelity", "Result", "ResultSet", "Target"]


@dataclass
class Fidelity:
    """How close a strategy's output is to the float32 reference: ``metric`` (e.g. ``cosine_min``) and value.

    ``extra`` holds companion figures (``cosine_mean``, ``perplexity``...). ``threshold`` is the bar the issue
    sets for this kind of output, when it sets one.
    """

    metric: str
    value: float | None
    threshold: float | None = None
    higher_is_better: bool = True
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool | None:
        """Whether ``value`` meets ``threshold`` (None when either is missing)."""
        if self.value is None or self.threshold is None:
            return None
        return self.value >= self.threshold if self.higher_is_better else self.value <= self.threshold


@dataclass
class Result:
    """One measured figure of one strategy in one comparison group."""

    suite: str  # ops | text | audio | vision | llm | load
    group: str  # e.g. "all-MiniLM-L6-v2 batch=32"
    strategy: str  # e.g. "arrowengine bf16"
    role: str  # baseline | peer | ours
    metric: str  # e.g. "throughput", "latency", "decode"
    unit: str  # e.g. "sentences/s", "ms", "tokens/s"
    value: float | None
    higher_is_better: bool
    spread: dict[str, float] | None = None
    fidelity: Fidelity | None = None
    params: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    ratio: float | None = None
    status: str = "ok"  # ok | skipped | failed
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON); non-finite floats become None."""
        data = asdict(self)
        return _finite(data)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


@dataclass
class Target:
    """A target from an issue, evaluated on this run's results; ``met`` is None when it could not be measured."""

    name: str
    description: str
    value: float | None
    threshold: float
    comparison: str  # ">=" or "<=": how value must compare with threshold
    evidence: str = ""

    @property
    def met(self) -> bool | None:
        """True / False once measured; None when the run could not measure it."""
        if self.value is None:
            return None
        return self.value >= self.threshold if self.comparison == ">=" else self.value <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (JSON), with ``met``."""
        return _finite(asdict(self) | {"met": self.met})


class ResultSet:
    """Results in run order, with ratios filled in per group once the group's baseline is known."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    def add(self, result: Result) -> Result:
        """Record ``result`` (a skipped or failed one too, so the report says what did not run and why)."""
        self.results.append(result)
        return result

    def skipped(self, suite: str, group: str, strategy: str, role: str, metric: str, unit: str,
                reason: str, *, status: str = "skipped", higher_is_better: bool = True) -> Result:
        """Record a strategy that could not run here, with the reason."""
        return self.add(Result(suite, group, strategy, role, metric, unit, None, higher_is_better,
                               status=status, note=reason))

    def fill_ratios(self) -> None:
        """Set ``baseline`` and ``ratio`` on every result of a group (and metric) that has a baseline row."""
        baselines: dict[tuple[str, str, str], Result] = {}
        for r in self.results:
            if r.role == "baseline" and r.value:
                baselines[(r.suite, r.group, r.metric)] = r
        for r in self.results:
            base = baselines.get((r.suite, r.group, r.metric))
            if base is None or not r.value:
                continue
            r.baseline = base.strategy
            r.ratio = r.value / base.value if r.higher_is_better else base.value / r.value

    def find(self, *, suite: str | None = None, group: str | None = None, strategy: str | None = None,
             metric: str | None = None, role: str | None = None) -> list[Result]:
        """Results matching every given field (``group`` / ``strategy`` match as substrings)."""
        out = []
        for r in self.results:
            if (suite and r.suite != suite) or (metric and r.metric != metric) or (role and r.role != role):
                continue
            if (group and group not in r.group) or (strategy and strategy not in r.strategy):
                continue
            out.append(r)
        return out

    def best(self, candidates: list[Result], *, require_fidelity: bool = True) -> Result | None:
        """The highest-ratio measured result among ``candidates`` whose fidelity meets its threshold."""
        usable = [r for r in candidates if r.ratio is not None and r.status == "ok"
                  and (not require_fidelity or r.fidelity is None or r.fidelity.ok is not False)]
        return max(usable, key=lambda r: r.ratio, default=None)
