"""Mixed precision: measure each quantized Linear's sensitivity, keep the most sensitive ones in FP16.

The caller supplies ``evaluate(model) -> float``, a score of the whole model's output on calibration
data where higher is better (e.g. the mean cosine of sentence embeddings against the float model's, see
:func:`embedding_cosine_evaluator`), and the quantized weights of the candidate layers (from RTN or GPTQ).
A layer's sensitivity is the score lost when that layer alone is quantized. :func:`mixed_precision` then
starts from every layer quantized and moves layers back to FP16 in order of decreasing sensitivity until the
score reaches the target.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from quant.errors import CalibrationError, QuantOptionError, QuantShapeError
from quant.rtn import QuantizedTensor, dequantize

__all__ = ["MixedRecipe", "embedding_cosine_evaluator", "layer_sensitivity", "mixed_precision"]

logger = logging.getLogger(__name__)


@dataclass
class MixedRecipe:
    """The outcome of :func:`mixed_precision`: which layers stay FP16, the scores and the sizes in bytes.

    ``quantized_bytes`` counts packed codes + scales + zero points of the quantized layers, ``fp16_bytes`` the
    FP16 weights of the kept layers, ``float32_bytes`` all candidate layers' weights in float32.
    """

    fp16_layers: list[str]
    quantized_layers: list[str]
    sensitivity: dict[str, float]
    score: float
    quantized_score: float
    target: float
    target_met: bool
    quantized_bytes: int
    fp16_bytes: int
    float32_bytes: int
    history: list[tuple[str, float]] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        """Bytes of all candidate layers' weights under this recipe."""
        return self.quantized_bytes + self.fp16_bytes


def _linears(model: nn.Module, paths: Iterable[str]) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` of each path; one walk over the modules (a walk per path took ~9 s of a SmolLM2 mixed
    search: ~5,000 lookups over ~400 modules)."""
    modules = dict(model.named_modules())
    out = {}
    for path in paths:
        module = modules.get(path)
        if not isinstance(module, nn.Linear):
            raise QuantShapeError(f"{path}: no nn.Linear with this name in the model; check the layer names")
        out[path] = module
    return out


@contextmanager
def _weights_swapped(model: nn.Module, new: Mapping[str, torch.Tensor]) -> Iterator[None]:
    linears = _linears(model, new)
    old = {}
    try:
        for path, w in new.items():
            old[path] = linears[path].weight.data
            linears[path].weight.data = w
        yield
    finally:
        for path, w in old.items():
            linears[path].weight.data = w


def _dequantized(model: nn.Module, qweights: Mapping[str, QuantizedTensor]) -> dict[str, torch.Tensor]:
    linears = _linears(model, qweights)
    out = {}
    for path, qt in qweights.items():
        w = linears[path].weight
        if tuple(qt.shape) != tuple(w.shape):
            raise QuantShapeError(f"{path}: quantized shape {list(qt.shape)} != Linear weight {list(w.shape)}")
        out[path] = dequantize(qt, w.dtype).to(w.device)
    return out


def layer_sensitivity(
    model: nn.Module, qweights: Mapping[str, QuantizedTensor], evaluate: Callable[[nn.Module], float]
) -> dict[str, float]:
    """Score lost by quantizing each layer alone: ``evaluate(float) - evaluate(that layer quantized)``."""
    if not qweights:
        raise CalibrationError("layer_sensitivity: no quantized layers given")
    base = float(evaluate(model))
    deq = _dequantized(model, qweights)
    out = {}
    for path, w in deq.items():
        with _weights_swapped(model, {path: w}):
            out[path] = base - float(evaluate(model))
        logger.debug("sensitivity %s: %.6f", path, out[path])
    return out


def mixed_precision(
    model: nn.Module,
    qweights: Mapping[str, QuantizedTensor],
    evaluate: Callable[[nn.Module], float],
    target: float,
    *,
    sensitivity: Mapping[str, float] | None = None,
    search: str = "greedy",
) -> MixedRecipe:
    """Keep the most sensitive layers in FP16 until ``evaluate(model) >= target``.

    ``search="greedy"`` moves layers to FP16 one at a time in order of decreasing sensitivity, evaluating after
    each (one evaluation per kept layer). ``search="bisect"`` finds the shortest prefix of that order that
    meets the target by bisection (about ``log2(layers)`` evaluations; assumes the score grows with the prefix,
    for models with many layers). FP16 layers are evaluated with their weights rounded to float16 (what would be
    stored). The model is left unchanged. If even all layers in FP16 miss the target, ``target_met`` is False
    and a warning is logged.
    """
    if search not in ("greedy", "bisect"):
        raise QuantOptionError(f"mixed_precision: search={search!r} is not supported; use 'greedy' or 'bisect'")
    sens = dict(sensitivity) if sensitivity is not None else layer_sensitivity(model, qweights, evaluate)
    deq = _dequantized(model, qweights)
    linears = _linears(model, qweights)
    fp16 = {p: linears[p].weight.data.to(torch.float16).to(linears[p].weight.dtype) for p in qweights}
    order = sorted(qweights, key=lambda p: sens.get(p, 0.0), reverse=True)
    current = dict(deq)
    with _weights_swapped(model, current):
        score = quantized_score = float(evaluate(model))
    history: list[tuple[str, float]] = []
    kept: list[str] = []
    if search == "bisect":
        kept, score, history = _bisect(model, order, deq, fp16, evaluate, target, score)
    for path in order if search == "greedy" else ():
        if score >= target:
            break
        current[path] = fp16[path]
        kept.append(path)
        with _weights_swapped(model, current):
            score = float(evaluate(model))
        history.append((path, score))
        logger.info("mixed precision: %s kept in FP16 -> score %.5f (target %.5f)", path, score, target)
    met = score >= target
    if not met:
        logger.warning("mixed precision: target %.5f not reached (best %.5f with every layer in FP16)", target, score)
    quantized = [p for p in qweights if p not in kept]
    return MixedRecipe(
        fp16_layers=kept,
        quantized_layers=quantized,
        sensitivity=sens,
        score=score,
        quantized_score=quantized_score,
        target=target,
        target_met=met,
        quantized_bytes=sum(qweights[p].nbytes for p in quantized),
        fp16_bytes=sum(fp16[p].numel() * 2 for p in kept),
        float32_bytes=sum(fp16[p].numel() * 4 for p in qweights),
        history=history,
    )


def _bisect(
    model: nn.Module,
    order: list[str],
    deq: Mapping[str, torch.Tensor],
    fp16: Mapping[str, torch.Tensor],
    evaluate: Callable[[nn.Module], float],
    target: float,
    quantized_score: float,
) -> tuple[list[str], float, list[tuple[str, float]]]:
    """Shortest prefix of ``order`` kept in FP16 whose score meets ``target`` (or all of it, if none does)."""
    history: list[tuple[str, float]] = []
    if quantized_score >= target:
        return [], quantized_score, history
    scores: dict[int, float] = {0: quantized_score}

    def score_of(n: int) -> float:
        if n not in scores:
            weights = {p: (fp16[p] if i < n else deq[p]) for i, p in enumerate(order)}
            with _weights_swapped(model, weights):
                scores[n] = float(evaluate(model))
            history.append((order[n - 1], scores[n]))
            logger.info("mixed precision: %d most sensitive layers in FP16 -> score %.5f (target %.5f)", n,
                        scores[n], target)
        return scores[n]

    lo, hi = 0, len(order)  # score(lo) misses the target; find the smallest hi that meets it
    if score_of(hi) < target:
        return list(order), scores[hi], history
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if score_of(mid) >= target:
            hi = mid
        else:
            lo = mid
    return list(order[:hi]), scores[hi], history


def embedding_cosine_evaluator(
    embed: Callable[[nn.Module], torch.Tensor], reference: torch.Tensor
) -> Callable[[nn.Module], float]:
    """An ``evaluate`` for encoders: mean row-wise cosine of ``embed(model)`` vs ``reference`` ``[n, d]``."""

    def evaluate(model: nn.Module) -> float:
        with torch.no_grad():
            emb = embed(model)
        return float(torch.nn.functional.cosine_similarity(emb.double(), reference.double(), dim=-1).mean())

    return evaluate
