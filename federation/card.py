"""``LoRACard``: a LoRA adapter's tensors in the arrowengine weight format plus the metadata a node needs to trust it.

On disk a card is an ordinary schema-V1 weight file (``arrowengine.write_weights``: aligned, zero-copy mapped
by ``WeightFile``) whose key-value metadata ``federation.card`` holds :class:`CardMeta` as JSON. Tensor names
are peft's (``base_model.model.<module>.lora_A.weight`` ``[r, in]`` / ``lora_B.weight`` ``[out, r]``), so a
card loads straight into a peft model; the effective update of a module is ``alpha / r * B @ A``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from federation.checksum import tensors_checksum
from federation.errors import CardError

__all__ = ["CARD_FORMAT", "META_CARD", "CardMeta", "LoRACard"]

logger = logging.getLogger(__name__)

CARD_FORMAT = 1  # bumped when the meaning of the metadata or the tensor naming changes
META_CARD = "federation.card"
MODEL_TYPE = "lora_card"
_SUFFIX_A, _SUFFIX_B = ".lora_A.weight", ".lora_B.weight"
_PEFT_PREFIX = "base_model.model."


@dataclass(frozen=True)
class CardMeta:
    """What a card is: which adapter, on which base (id and weights checksum), its LoRA shape and its version.

    ``version`` counts merged updates on the sync server (0 = the initial adapter); ``parent_version`` is the
    version it was made from (None for the first).
    """

    adapter: str
    base_model: str
    base_checksum: str
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    version: int = 0
    parent_version: int | None = None
    format: int = CARD_FORMAT

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(sorted(self.target_modules)))
        if not self.adapter or "/" in self.adapter or self.adapter.startswith("."):
            raise CardError(f"adapter name {self.adapter!r} must be non-empty, without '/' and not start with '.'")
        if self.rank <= 0 or self.alpha <= 0 or self.version < 0:
            raise CardError(f"card {self.adapter!r}: rank ({self.rank}) and alpha ({self.alpha}) must be positive "
                            f"and version ({self.version}) >= 0")
        if self.format != CARD_FORMAT:
            raise CardError(f"card {self.adapter!r} has card format {self.format}; this build reads {CARD_FORMAT}: "
                            f"upgrade arrowengine")

    @property
    def scale(self) -> float:
        """LoRA scaling ``alpha / rank``."""
        return self.alpha / self.rank

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): the bytes stored in the file and sent on the wire."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes) -> CardMeta:
        """Parse :meth:`to_json` output; unknown keys (from a newer writer) are ignored."""
        try:
            raw = json.loads(text)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (TypeError, ValueError) as exc:
            if isinstance(exc, CardError):
                raise
            raise CardError(f"card metadata is not valid: {exc}; expected the JSON of federation.CardMeta") from exc

    def successor(self, version: int) -> CardMeta:
        """This metadata at ``version``, made from this one."""
        return dataclasses.replace(self, version=version, parent_version=self.version)


@dataclass(frozen=True)
class LoRACard:
    """A LoRA adapter: ``tensors`` (peft names, float) and :class:`CardMeta`. Immutable: updates make new cards."""

    meta: CardMeta
    tensors: Mapping[str, torch.Tensor] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.tensors:
            raise CardError(f"card {self.meta.adapter!r} has no tensors")
        for name, t in self.tensors.items():
            if not name.endswith((_SUFFIX_A, _SUFFIX_B)):
                raise CardError(f"card {self.meta.adapter!r}: tensor {name!r} is not a LoRA matrix "
                                f"(names end in {_SUFFIX_A!r} or {_SUFFIX_B!r}, as peft writes them)")
            if not t.is_floating_point() or t.dim() != 2:
                raise CardError(f"card {self.meta.adapter!r}: tensor {name!r} must be a 2-D float tensor, got "
                                f"{t.dtype} {list(t.shape)}")
        for module, (a, b) in self.modules().items():
            if a.shape[0] != self.meta.rank or b.shape[1] != self.meta.rank:
                raise CardError(f"card {self.meta.adapter!r}: {module} has A {list(a.shape)} / B {list(b.shape)}, "
                                f"not rank {self.meta.rank}")

    # ------------------------------------------------------------------ identity
    @property
    def checksum(self) -> str:
        """Hex xxh64 of the tensors: two cards are bitwise equal iff their checksums are."""
        return tensors_checksum(self.tensors)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def modules(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{module name: (A [r, in], B [out, r])}``, module names as in the base model (``model.layers.0...``)."""
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in sorted(self.tensors):
            if not name.endswith(_SUFFIX_A):
                continue
            stem = name[: -len(_SUFFIX_A)]
            b = self.tensors.get(stem + _SUFFIX_B)
            if b is None:
                raise CardError(f"card {self.meta.adapter!r}: {name!r} has no matching {stem + _SUFFIX_B!r}")
            module = stem[len(_PEFT_PREFIX):] if stem.startswith(_PEFT_PREFIX) else stem
            out[module] = (self.tensors[name], b)
        return out

    def with_tensors(self, tensors: Mapping[str, torch.Tensor], version: int) -> LoRACard:
        """A new card holding ``tensors`` at ``version``, made from this one."""
        return LoRACard(self.meta.successor(version), dict(tensors))

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the card as a weight file (atomically: temp file + rename); returns the path."""
        from arrowengine.format.writer import write_weights

        path = Path(path)
        write_weights(path, {n: t.detach().contiguous() for n, t in self.tensors.items()},
                      {META_CARD: self.meta.to_json()}, model_type=MODEL_TYPE)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, verify: bool = False) -> LoRACard:
        """Map a card written by :meth:`save` (zero-copy; ``verify`` hashes every tensor against its checksum)."""
        from arrowengine.format.reader import WeightFile

        weights = WeightFile.open(path, verify=verify)
        raw = weights.metadata.get(META_CARD)
        if raw is None:
            raise CardError(f"{path} is a weight file but not a LoRA card (no {META_CARD!r} metadata); "
                            f"write cards with LoRACard.save")
        return cls(CardMeta.from_json(raw), {name: weights[name] for name in weights})

    # ------------------------------------------------------------------ peft
    @classmethod
    def from_peft(cls, model: Any, *, adapter: str, base_model: str, base_checksum: str, version: int = 0,
                  parent_version: int | None = None) -> LoRACard:
        """The adapter of a peft ``PeftModel`` (its active LoRA config) as a card (tensors copied, fp32)."""
        from peft import get_peft_model_state_dict

        config = model.peft_config[model.active_adapter]
        targets = config.target_modules
        meta = CardMeta(adapter=adapter, base_model=base_model, base_checksum=base_checksum, rank=int(config.r),
                        alpha=float(config.lora_alpha), version=version, parent_version=parent_version,
                        target_modules=tuple([targets] if isinstance(targets, str) else targets))
        state = get_peft_model_state_dict(model)
        return cls(meta, {n: t.detach().float().clone() for n, t in state.items()})

    def load_into_peft(self, model: Any) -> None:
        """Copy the card's tensors into the LoRA parameters of peft ``model`` (every one must match)."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, {n: t.clone() for n, t in self.tensors.items()})
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CardError(f"card {self.meta.adapter!r} does not fit this peft model: {unexpected[:3]} ... have no "
                            f"parameter; build the peft model with rank {self.meta.rank} on "
                            f"{list(self.meta.target_modules)}")
