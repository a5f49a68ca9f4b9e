"""Which component runs a model directory: text, speech and image encoders, or a causal LM.

Each encoder checks its model's ``config.json`` at construction (:func:`require_kind`), so a Whisper model given
to ``TextEncoder`` fails at once with a :class:`ModelTypeError` naming the encoder to use, instead of an
``AttributeError`` from inside ``transformers`` at the first ``encode``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from arrowengine.errors import ModelTypeError

__all__ = ["COMPONENTS", "model_kind", "require_kind"]

# kind -> the component that runs it
COMPONENTS = {"text": "arrowengine.TextEncoder", "audio": "arrowengine.AudioEncoder",
              "image": "arrowengine.ImageEncoder", "causal_lm": "arrowengine.LLM", "joint": "multimodal.JointEncoder"}
_AUDIO_TYPES = ("whisper",)
_IMAGE_TYPES = ("dinov2",)
_JOINT_TYPES = ("arrowengine-joint",)  # trained projection heads of multimodal (no encoder of their own)


def model_kind(config: dict[str, Any]) -> str:
    """``audio`` (Whisper), ``image`` (DINOv2), ``joint`` (multimodal heads), ``causal_lm`` (a
    ``*ForCausalLM`` architecture) or ``text``."""
    model_type = str(config.get("model_type", ""))
    if model_type in _JOINT_TYPES:
        return "joint"
    if model_type in _AUDIO_TYPES:
        return "audio"
    if model_type in _IMAGE_TYPES:
        return "image"
    if any(str(a).endswith("ForCausalLM") for a in config.get("architectures") or []):
        return "causal_lm"
    return "text"


def require_kind(config: dict[str, Any], model_dir: Path, kind: str) -> None:
    """Raise :class:`ModelTypeError` unless ``config`` (of ``model_dir``) is a model of ``kind``."""
    found = model_kind(config)
    if found == kind:
        return
    wanted, use = COMPONENTS[kind].rsplit(".", 1)[-1], COMPONENTS[found]
    raise ModelTypeError(f"{model_dir} holds a {config.get('model_type')!r} model ({found.replace('_', ' ')}), "
                         f"which {wanted} cannot run; use {use}({str(model_dir)!r}) instead")
