"""Speech and image memories: raw inputs embedded into the joint space by :class:`multimodal.JointEncoder`.

The joint space is the store's text space (MiniLM), so text, audio and image memories share one table and one
index: a spoken query finds text and image memories and the other way round. A media memory's ``content`` is a
reference (the file path, or a caption the caller gives); the raw samples or pixels are not stored.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from memory.errors import UnknownModalityError

__all__ = ["MediaEmbedder", "media_content"]

logger = logging.getLogger(__name__)


def media_content(modality: str, data: Any, content: Any) -> str:
    """The stored ``content`` of a media memory: the caller's, else the file path, else a short description."""
    if isinstance(content, str) and content.strip():
        return content
    if isinstance(data, (str, os.PathLike)):
        return str(data)
    if modality == "audio":
        return "audio memory"
    return "image memory"


class MediaEmbedder:
    """Embeds audio and image inputs (and composite queries) with a joint encoder loaded on first use.

    Args:
        joint: a ready :class:`multimodal.JointEncoder`; None loads ``models_dir/model_name``.
        models_dir: the model store (None: :func:`arrowengine.config.resolve_models_dir`).
        model_name: the trained heads' directory name (``joint-fusion``).
    """

    def __init__(self, joint: Any | None, models_dir: Path | None, model_name: str) -> None:
        self._joint = joint
        self.models_dir, self.model_name = models_dir, model_name

    @property
    def joint(self) -> Any:
        """The joint encoder (raises ``JointModelMissingError`` with the fix when none is trained)."""
        if self._joint is None:
            from arrowengine.config import resolve_models_dir
            from multimodal import JointEncoder

            models_dir = self.models_dir if self.models_dir is not None else resolve_models_dir()
            self._joint = JointEncoder(Path(models_dir) / self.model_name, models_dir=models_dir)
        return self._joint

    def embed(self, modality: str, inputs: list[Any], sampling_rate: int = 16_000) -> np.ndarray:
        """Joint embeddings ``[n, dim]`` of audio (WAV paths or 1-D waveforms) or images (paths, arrays, PIL)."""
        if modality == "audio":
            return self.joint.encode_audio(inputs, sampling_rate)
        if modality == "image":
            return self.joint.encode_image(inputs)
        raise UnknownModalityError(f"modality {modality!r} has no media encoder; use 'audio' or 'image'")

    def query(self, text: str | None, audio: Any, image: Any, sampling_rate: int = 16_000) -> np.ndarray:
        """One joint query vector from any non-empty subset of text, audio and image."""
        return self.joint.encode(text=text, audio=audio, image=image, sampling_rate=sampling_rate)
