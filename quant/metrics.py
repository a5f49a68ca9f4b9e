"""Accuracy metrics for quantized models: embedding cosine statistics, perplexity, relative error."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from quant.errors import QuantShapeError

__all__ = ["CosineStats", "cosine_stats", "perplexity", "relative_error", "windowed_perplexity"]


@dataclass(frozen=True)
class CosineStats:
    """Row-wise cosine similarity between two embedding matrices: mean, min and percentiles."""

    mean: float
    min: float
    p01: float
    p05: float
    p50: float
    count: int

    def as_dict(self) -> dict[str, float]:
        """The figures as a plain dict (for JSON reports)."""
        return asdict(self)


def _check_pair(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise QuantShapeError(f"{what}: shapes differ, {list(a.shape)} vs {list(b.shape)}; compare matching rows")
    if a.numel() == 0:
        raise QuantShapeError(f"{what}: empty inputs; pass at least one row")


def cosine_stats(embeddings: torch.Tensor, reference: torch.Tensor) -> CosineStats:
    """Cosine similarity of each row of ``embeddings`` with the same row of ``reference`` ``[n, d]``."""
    a, b = torch.as_tensor(embeddings).double(), torch.as_tensor(reference).double()
    _check_pair(a, b, "cosine_stats")
    if a.dim() == 1:
        a, b = a[None], b[None]
    cos = torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]), dim=-1)
    q = torch.quantile(cos, torch.tensor([0.01, 0.05, 0.5], dtype=cos.dtype))
    return CosineStats(
        mean=float(cos.mean()),
        min=float(cos.min()),
        p01=float(q[0]),
        p05=float(q[1]),
        p50=float(q[2]),
        count=int(cos.numel()),
    )


def perplexity(logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, shift: bool = True) -> float:
    """``exp`` of the mean cross-entropy of ``logits`` ``[..., seq, vocab]`` vs ``labels`` ``[..., seq]``.

    With ``shift=True`` (causal LMs) position ``t`` predicts label ``t + 1``. Labels equal to ``ignore_index``
    do not count.
    """
    if logits.shape[:-1] != labels.shape:
        raise QuantShapeError(
            f"perplexity: logits {list(logits.shape)} do not match labels {list(labels.shape)}; expected "
            f"logits [..., seq, vocab] and labels [..., seq]"
        )
    if shift:
        logits, labels = logits[..., :-1, :], labels[..., 1:]
    flat_labels = labels.reshape(-1)
    if int((flat_labels != ignore_index).sum()) == 0:
        raise QuantShapeError("perplexity: no labelled tokens to score; pass longer texts")
    nll = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), flat_labels, ignore_index=ignore_index, reduction="mean"
    )
    return math.exp(float(nll))


def windowed_perplexity(model: torch.nn.Module, ids: torch.Tensor, window: int) -> float:
    """Perplexity of the token stream ``ids`` ``[seq]`` under a causal LM called as ``model(ids [1, n],
    use_cache=False).logits`` (a transformers model), in consecutive windows of ``window`` scored tokens: each
    window starts at the last token the previous one scored, without its earlier context; every token after the
    first is scored once (float32 logits)."""
    if ids.dim() != 1 or ids.numel() < 2:
        raise QuantShapeError(f"windowed_perplexity: ids {list(ids.shape)}; expected a 1-D stream of >= 2 tokens")
    nll, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start : start + window + 1].unsqueeze(0)
            logits = model(chunk[:, :-1], use_cache=False).logits.float()
            nll += float(torch.nn.functional.cross_entropy(logits[0], chunk[0, 1:], reduction="sum"))
            count += chunk.shape[1] - 1
    return math.exp(nll / count)


def relative_error(approx: torch.Tensor, reference: torch.Tensor) -> float:
    """``||approx - reference|| / ||reference||`` (Frobenius), computed in float64."""
    a, b = approx.double(), reference.double()
    _check_pair(a, b, "relative_error")
    denom = float(b.norm())
    if denom == 0.0:
        raise QuantShapeError("relative_error: the reference is all zeros, so a relative error is undefined")
    return float((a - b).norm()) / denom
