"""Text, speech and images in one embedding space (DESIGN section 8, seed 002 R4).

:class:`JointEncoder` maps any subset of text, audio and image into the text encoder's space (trained projection
heads plus a fusion MLP in ``models/joint-fusion``, written by ``arrowengine fusion train``);
:class:`CognitiveLoop` perceives, recalls across modalities, answers and remembers. Depends on ``arrowengine``
only; ``memory`` builds on it. Public names are imported lazily so ``import multimodal`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "JointEncoder": "multimodal.joint",
    "JointConfig": "multimodal.config",
    "TrainConfig": "multimodal.config",
    "DataConfig": "multimodal.data",
    "CognitiveLoop": "multimodal.loop",
    "LoopConfig": "multimodal.loop",
    "OllamaResponder": "multimodal.loop",
    "train": "multimodal.train",
}

__all__ = ["CognitiveLoop", "DataConfig", "JointConfig", "JointEncoder", "LoopConfig", "OllamaResponder",
           "TrainConfig", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from multimodal.config import JointConfig, TrainConfig
    from multimodal.data import DataConfig
    from multimodal.joint import JointEncoder
    from multimodal.loop import CognitiveLoop, LoopConfig, OllamaResponder
    from multimodal.train import train


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'multimodal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
