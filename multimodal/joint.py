"""``JointEncoder``: text, speech and images (alone or together) into one embedding space.

The space is the text encoder's (MiniLM, 384-d): a text's joint embedding *is* its MiniLM embedding, so text
memories stored before need no re-embedding. Speech and images go through trained projection heads; two or three
modalities at once go through the fusion MLP. The heads are a model directory (``models/joint-fusion/``, schema
V1, memory-mapped zero-copy like any model) trained by ``arrowengine fusion train``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowengine.errors import ModelTypeError
from multimodal.config import JOINT_MODEL_TYPE, MODALITIES, JointConfig
from multimodal.errors import JointModelMissingError, ModalityInputError
from multimodal.features import SAMPLE_RATE, FrozenEncoders
from multimodal.heads import JointHeads

__all__ = ["DEFAULT_MODEL", "JointEncoder", "load_audio"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "joint-fusion"


def load_audio(audio: Any, sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A 16 kHz float32 waveform from a WAV path or a 1-D array at ``sampling_rate``."""
    from arrowengine.runtime.audio_features import as_waveform, load_wav, resample

    if isinstance(audio, (str, os.PathLike)):
        path = Path(audio)
        if not path.is_file():
            raise ModalityInputError(f"audio file {path} does not exist; pass a WAV path or a 1-D waveform array")
        wave, rate = load_wav(path)
        return resample(wave, rate, SAMPLE_RATE)
    wave = np.asarray(audio.detach().cpu() if isinstance(audio, torch.Tensor) else audio)
    if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.number):
        raise ModalityInputError(f"audio must be a WAV path or a non-empty 1-D waveform, got an array of shape "
                                 f"{wave.shape} ({wave.dtype})")
    return resample(as_waveform(wave), sampling_rate, SAMPLE_RATE)


class JointEncoder:
    """Encode text, audio and images, alone or composite, into one unit-norm joint space.

    Args:
        model_dir: the trained heads (default: ``joint-fusion`` in the engine's model store,
            :func:`arrowengine.config.resolve_models_dir`).
        models_dir: where the frozen encoders named in the heads' config live (default: beside ``model_dir``).
        verify: check the weights' checksums at load (default: the engine config's ``runtime.verify_checksums``).

    Raises:
        JointModelMissingError: no trained heads at ``model_dir`` (train them: ``arrowengine fusion train``).
        ModelTypeError: ``model_dir`` holds some other model.
    """

    def __init__(self, model_dir: str | os.PathLike[str] | None = None, *,
                 models_dir: str | os.PathLike[str] | None = None, verify: bool | None = None) -> None:
        from arrowengine.config import resolve_verify_checksums
        from arrowengine.format.reader import WeightFile
        from arrowengine.runtime.loading import load_config_dict

        if model_dir is None:
            from arrowengine.config import resolve_models_dir

            model_dir = resolve_models_dir() / DEFAULT_MODEL
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "weights.parquet").is_file():
            raise JointModelMissingError(
                f"no trained joint-fusion model in {self.model_dir}; train one with: arrowengine fusion train "
                f"--out {self.model_dir} (needs the FSDD digits, espeak-ng and models/ from scripts/fetch_models.py)")
        raw = load_config_dict(self.model_dir)
        if raw.get("model_type") != JOINT_MODEL_TYPE:
            raise ModelTypeError(f"{self.model_dir} holds a {raw.get('model_type')!r} model, not trained joint "
                                 f"heads ({JOINT_MODEL_TYPE!r}); pass the directory arrowengine fusion train wrote")
        self.config = JointConfig.from_dict(raw)
        weights = WeightFile.open(self.model_dir, verify=resolve_verify_checksums(verify))
        self.heads = JointHeads(self.config)
        # the mapped tensors are assigned, not copied: the heads stay zero-copy views of weights.parquet
        self.heads.load_state_dict(weights.state_dict(), strict=True, assign=True)
        self.heads.eval()
        self._weights = weights
        self.encoders = FrozenEncoders(models_dir if models_dir is not None else self.model_dir.parent, self.config)

    @property
    def dim(self) -> int:
        """Width of the joint space (the text encoder's)."""
        return self.config.dim

    # -- one modality, many inputs ---------------------------------------------------------------------

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Joint embeddings ``[n, dim]`` of texts (the text encoder's own unit vectors)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not all(isinstance(t, str) and t.strip() for t in texts):
            raise ModalityInputError("text inputs must be non-empty strings")
        return self.encoders.text(texts)

    def encode_audio(self, audio: Any | Sequence[Any], sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Joint embeddings ``[n, dim]`` of speech: WAV paths or 1-D waveforms at ``sampling_rate``."""
        items = [audio] if _single_audio(audio) else list(audio)
        waves = [load_audio(a, sampling_rate) for a in items]
        return self._project("audio", self.encoders.audio(waves))

    def encode_image(self, images: Any | Sequence[Any]) -> np.ndarray:
        """Joint embeddings ``[n, dim]`` of images: paths, PIL images or arrays (grey, RGB, RGBA)."""
        items = [images] if _single_image(images) else list(images)
        for item in items:
            if isinstance(item, (str, os.PathLike)) and not Path(item).is_file():
                raise ModalityInputError(f"image file {item} does not exist; pass an image path, PIL image or array")
        return self._project("image", self.encoders.image(items))

    def _project(self, modality: str, features: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.heads.project(modality, torch.from_numpy(features)).numpy()

    # -- composite --------------------------------------------------------------------------------------

    def fuse(self, vectors: dict[str, np.ndarray]) -> np.ndarray:
        """Fuse per-modality joint embeddings (``{"audio": [n, dim], ...}``, same n) into ``[n, dim]``.

        One modality is returned as it is; two or three go through the fusion MLP.
        """
        present = {m: np.atleast_2d(np.asarray(v, np.float32)) for m, v in vectors.items() if v is not None}
        unknown = set(present) - set(MODALITIES)
        if unknown:
            raise ModalityInputError(f"unknown modalities {sorted(unknown)}; use {list(MODALITIES)}")
        if not present:
            raise ModalityInputError("nothing to encode: pass text=, audio= and/or image=")
        sizes = {len(v) for v in present.values()}
        if len(sizes) != 1:
            raise ModalityInputError(f"composite inputs need the same number of items per modality, got "
                                     f"{ {m: len(v) for m, v in present.items()} }")
        if len(present) == 1:
            return next(iter(present.values()))
        n = sizes.pop()
        stacked = np.zeros((n, len(MODALITIES), self.dim), np.float32)
        mask = np.zeros((n, len(MODALITIES)), np.float32)
        for j, m in enumerate(MODALITIES):
            if m in present:
                stacked[:, j], mask[:, j] = present[m], 1.0
        with torch.inference_mode():
            return self.heads.fusion(torch.from_numpy(stacked), torch.from_numpy(mask)).numpy()

    def encode(self, *, text: str | None = None, audio: Any = None, image: Any = None,
               sampling_rate: int = SAMPLE_RATE) -> np.ndarray:
        """One joint embedding ``[dim]`` of a perception: any non-empty subset of text, audio and image.

        A single modality gives its own projection (a text's is its text embedding); two or three are fused.
        """
        vectors = {}
        if text is not None:
            if not isinstance(text, str):
                raise ModalityInputError(f"text must be one string, got {type(text).__name__}; use encode_text for "
                                         "many")
            vectors["text"] = self.encode_text(text)
        if audio is not None:
            vectors["audio"] = self.encode_audio(load_audio(audio, sampling_rate))
        if image is not None:
            if not _single_image(image):
                raise ModalityInputError("image must be one image (a path, PIL image, HxW or HxWxC array); use "
                                         "encode_image for many")
            vectors["image"] = self.encode_image(image)
        return self.fuse(vectors)[0]

    def __repr__(self) -> str:
        c = self.config
        return (f"JointEncoder({str(self.model_dir)!r}, dim={c.dim}, text={c.text_model}, audio={c.audio_model}, "
                f"image={c.image_model})")


def _single_audio(audio: Any) -> bool:
    return isinstance(audio, (str, os.PathLike)) or (hasattr(audio, "ndim") and audio.ndim == 1)


def _single_image(image: Any) -> bool:
    if isinstance(image, (str, os.PathLike)) or hasattr(image, "convert"):
        return True
    return hasattr(image, "ndim") and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)))
