"""Deltas between two versions of a LoRA card: ``encode_delta(old, new, method=...)`` / ``apply_delta(card, delta)``.

A :class:`Delta` names the adapter and the exact base it was made against (version and card checksum), so it is
never applied to anything else. ``ErrorFeedback`` keeps, per tensor, what a lossy encoding left out and adds it
to the next delta, so nothing is lost, only sent later. ``auto`` picks the smallest encoding whose relative L2
error (against what was to be sent) stays within ``DeltaConfig.max_error``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from federation.card import LoRACard
from federation.encoding import METHODS, EncodedTensor, decode_tensor, encode_tensor
from federation.errors import BaseVersionMismatchError, DeltaError

__all__ = ["Delta", "DeltaConfig", "ErrorFeedback", "apply_delta", "decode_delta", "encode_delta"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaConfig:
    """How deltas are encoded: ``method`` (one of ``encoding.METHODS`` or ``auto``), the kept fraction of
    ``topk_int8``, and ``auto``'s error bound (relative L2 per tensor; error feedback sends the rest later)."""

    method: str = "auto"
    density: float = 0.05
    max_error: float = 0.5
    auto_densities: tuple[float, ...] = (0.01, 0.02, 0.05, 0.1, 0.25)

    def __post_init__(self) -> None:
        if self.method not in (*METHODS, "auto"):
            raise DeltaError(f"unknown delta method {self.method!r}; use one of {[*METHODS, 'auto']}")
        if not 0 < self.density <= 1 or not 0 <= self.max_error:
            raise DeltaError(f"density must be in (0, 1] (got {self.density}) and max_error >= 0 "
                             f"(got {self.max_error})")


@dataclass(frozen=True)
class Delta:
    """The change from card version ``base_version`` (checksum ``base_checksum``) of ``adapter``."""

    adapter: str
    base_version: int
    base_checksum: str
    tensors: Mapping[str, EncodedTensor] = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Payload bytes of all encoded tensors."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def methods(self) -> dict[str, int]:
        """How many tensors each encoding carries."""
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.method] = out.get(t.method, 0) + 1
        return out


class ErrorFeedback:
    """Per-tensor residuals of lossy encodings, added to the next delta of the same tensor (one per sender)."""

    def __init__(self) -> None:
        self.residuals: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget the residuals (after a full sync the base they belong to is gone)."""
        self.residuals.clear()


def _relative_error(target: torch.Tensor, encoded: EncodedTensor) -> float:
    norm = float(target.norm())
    return 0.0 if norm == 0 else float((target - decode_tensor(encoded)).norm()) / norm


def _auto(target: torch.Tensor, config: DeltaConfig, name: str) -> EncodedTensor:
    candidates = [encode_tensor(target, "topk_int8", density=d, name=name) for d in config.auto_densities]
    candidates += [encode_tensor(target, m, name=name) for m in ("sign1", "int4", "int8", "fp16", "sparse", "dense")]
    for enc in sorted(candidates, key=lambda e: e.nbytes):
        if enc.method in ("dense", "sparse") or _relative_error(target, enc) <= config.max_error:
            return enc
    raise AssertionError("dense is always within bound")  # pragma: no cover


def encode_delta(old: LoRACard, new: LoRACard | Mapping[str, torch.Tensor], method: str | None = None, *,
                 config: DeltaConfig | None = None, feedback: ErrorFeedback | None = None) -> Delta:
    """The delta taking ``old`` to ``new`` (a card or its tensors), encoded with ``method`` (default
    ``config.method``). With ``feedback``, earlier residuals are added first and the new residuals kept."""
    config = config or DeltaConfig()
    method = method or config.method
    if method not in (*METHODS, "auto"):
        raise DeltaError(f"unknown delta method {method!r}; use one of {[*METHODS, 'auto']}")
    tensors = new.tensors if isinstance(new, LoRACard) else new
    if set(tensors) != set(old.tensors):
        missing, extra = sorted(set(old.tensors) - set(tensors)), sorted(set(tensors) - set(old.tensors))
        raise DeltaError(f"adapter {old.meta.adapter!r}: the new tensors differ from the base (missing {missing[:3]},"
                         f" extra {extra[:3]}); a changed LoRA layout needs a full sync")
    encoded: dict[str, EncodedTensor] = {}
    for name in sorted(tensors):
        base, value = old.tensors[name], tensors[name]
        if value.shape != base.shape:
            raise DeltaError(f"{name}: new shape {list(value.shape)} != base shape {list(base.shape)}; a changed "
                             f"rank needs a full sync")
        target = value.detach().float() - base.float()
        if feedback is not None and name in feedback.residuals:
            target = target + feedback.residuals[name]
        enc = _auto(target, config, name) if method == "auto" else encode_tensor(target, method,
                                                                                  density=config.density, name=name)
        if feedback is not None:
            feedback.residuals[name] = target - decode_tensor(enc)
        encoded[name] = enc
    return Delta(old.meta.adapter, old.meta.version, old.checksum, encoded)


def decode_delta(card: LoRACard, delta: Delta) -> dict[str, torch.Tensor]:
    """The float32 change of every tensor, checked against ``card`` (adapter, version, checksum, shapes)."""
    if delta.adapter != card.meta.adapter:
        raise DeltaError(f"a delta of adapter {delta.adapter!r} cannot apply to card {card.meta.adapter!r}")
    if delta.base_version != card.meta.version or delta.base_checksum != card.checksum:
        raise BaseVersionMismatchError(
            f"adapter {card.meta.adapter!r}: the delta was made against version {delta.base_version} "
            f"({delta.base_checksum}), the card is version {card.meta.version} ({card.checksum}); do a full sync")
    if set(delta.tensors) != set(card.tensors):
        raise DeltaError(f"adapter {card.meta.adapter!r}: the delta's tensors do not match the card's "
                         f"({len(delta.tensors)} vs {len(card.tensors)}); do a full sync")
    out = {}
    for name, enc in delta.tensors.items():
        if enc.shape != tuple(card.tensors[name].shape):
            raise DeltaError(f"{name}: delta shape {list(enc.shape)} != card shape {list(card.tensors[name].shape)}")
        out[name] = decode_tensor(enc)
    return out


def apply_delta(card: LoRACard, delta: Delta, *, version: int | None = None) -> LoRACard:
    """``card`` plus ``delta``: a new card at ``version`` (default ``card.meta.version + 1``); ``card`` is unchanged.

    Every check runs before any arithmetic, so a bad delta raises and changes nothing.
    """
    changes = decode_delta(card, delta)
    tensors = {n: (card.tensors[n].float() + changes[n]).to(card.tensors[n].dtype) for n in card.tensors}
    return card.with_tensors(tensors, card.meta.version + 1 if version is None else version)
