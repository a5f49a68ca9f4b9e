"""Image embeddings from a converted DINOv2 ViT (Dinov2Model), with its preprocessing in PIL + numpy.

Preprocessing follows the model's ``preprocessor_config.json`` (DINOv2's: shortest edge to 256 with bicubic
resampling, centre crop 224, scale to [0, 1], ImageNet mean/std), which is what ``transformers``'
``BitImageProcessor`` does. Pooling: ``cls`` (the final-norm CLS token, DINOv2's image descriptor), ``mean``
(patch tokens) or ``cls_mean`` (both concatenated, DINOv2's linear-probe feature).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from arrowengine.errors import ConfigError
from arrowengine.runtime.loading import load_config_dict, load_model
from arrowengine.runtime.model_kinds import require_kind
from arrowengine.runtime.precision import select_precision

if TYPE_CHECKING:  # PIL is imported lazily at run time
    from PIL.Image import Image as PILImage

__all__ = ["ImageEncoder", "ImagePreprocessor"]

logger = logging.getLogger(__name__)

ImageInput = Any  # PIL.Image.Image, numpy array (HxW, HxWxC; uint8 or float in [0, 1]) or a file path
_POOLING = ("cls", "mean", "cls_mean")


class ImagePreprocessor:
    """Resize (shortest edge), centre crop, rescale and normalise images into a ``(B, 3, H, W)`` float batch.

    Args:
        config: a ``BitImageProcessor``-style dict (``size.shortest_edge``, ``crop_size``, ``resample``,
            ``rescale_factor``, ``image_mean``, ``image_std``); missing keys take DINOv2's values.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        config = config or {}
        self.shortest_edge = int(config.get("size", {}).get("shortest_edge", 256))
        crop = config.get("crop_size", {"height": 224, "width": 224})
        self.crop = (int(crop["height"]), int(crop["width"]))
        self.resample = int(config.get("resample", 3))  # PIL.Image.BICUBIC
        self.rescale = float(config.get("rescale_factor", 1 / 255))
        self.mean = np.asarray(config.get("image_mean", (0.485, 0.456, 0.406)), dtype=np.float32)
        self.std = np.asarray(config.get("image_std", (0.229, 0.224, 0.225)), dtype=np.float32)

    @staticmethod
    def to_pil(image: ImageInput) -> PILImage:
        """An RGB PIL image from a PIL image, an array (grey, RGB or RGBA; uint8 or float in [0, 1]) or a path."""
        from PIL import Image

        if isinstance(image, (str, os.PathLike)):
            with Image.open(image) as img:
                return img.convert("RGB")
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        arr = np.asarray(image)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise ConfigError(f"an image array must be HxW or HxWxC with C in (1, 3, 4), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[:, :, 0]
        return Image.fromarray(arr).convert("RGB")

    def __call__(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """The normalised batch ``(B, 3, crop_h, crop_w)`` as float32."""
        out = np.empty((len(images), 3, *self.crop), dtype=np.float32)
        for i, image in enumerate(images):
            img = self.to_pil(image)
            w, h = img.size
            scale = self.shortest_edge / min(w, h)
            size = (self.shortest_edge, int(h * scale)) if w <= h else (int(w * scale), self.shortest_edge)
            img = img.resize(size, resample=self.resample)
            arr = np.asarray(img, dtype=np.float32)
            top = (arr.shape[0] - self.crop[0]) // 2
            left = (arr.shape[1] - self.crop[1]) // 2
            arr = arr[top : top + self.crop[0], left : left + self.crop[1]]
            out[i] = ((arr * self.rescale - self.mean) / self.std).transpose(2, 0, 1)
        return torch.from_numpy(out)


class ImageEncoder:
    """Embed images with a converted DINOv2 model from ``models/``.

    Args:
        model_dir: a converted DINOv2 directory (``models/dinov2-small``).
        device: torch device for the forward pass.
        dtype: ``auto`` (default: ``bfloat16`` autocast on a CPU with native bf16, which holds cosine >= 0.99 to
            float32, else ``float32``; see :func:`arrowengine.runtime.precision.select_precision`; logged),
            ``float32`` (``fp32``, exact) or ``bfloat16`` (``bf16``, autocast).
        batch_size: images per forward pass.
        pooling: ``cls`` (default), ``mean`` or ``cls_mean``.
        normalize: L2-normalise the embeddings.

    Raises:
        ModelTypeError: the directory holds a text, speech or causal LM model.
        ConfigError: an unknown dtype or pooling, or a batch size below 1.
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", dtype: str = "auto",
                 batch_size: int = 16, pooling: str = "cls", normalize: bool = True,
                 verify: bool | None = None) -> None:
        self.model_dir = Path(model_dir)
        config = load_config_dict(self.model_dir)
        require_kind(config, self.model_dir, "image")
        if dtype != "auto":  # validate before the model is loaded
            select_precision("image", dtype)
        if pooling not in _POOLING:
            raise ConfigError(f"pooling must be one of {_POOLING}, got {pooling!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.pooling, self.normalize = pooling, normalize
        path = self.model_dir / "preprocessor_config.json"
        self.preprocess = ImagePreprocessor(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None)
        self.model = load_model(self.model_dir, device=device, verify=verify)  # None: runtime.verify_checksums
        # load_model resolves "auto" and falls back to CPU when a device cannot run: follow where it landed
        self.device_choice = self.model.arrowengine_device
        self.device = str(self.device_choice.torch_device)
        if dtype == "auto" and self.device_choice.is_gpu:
            self.dtype = "float32"
            logger.info("ImageEncoder: dtype auto on %s runs in float32", self.device)
        else:
            self.dtype = select_precision("image", dtype, component=f"ImageEncoder({self.model_dir.name})").precision
        hidden = int(config["hidden_size"])
        self.hidden_size = hidden
        self.dim = 2 * hidden if pooling == "cls_mean" else hidden

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=torch.device(self.device).type, dtype=torch.bfloat16)

    def hidden_states(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """The final-norm token states ``[n, 1 + patches, hidden]`` (CLS first), float32."""
        images = self._as_list(images)
        chunks = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.preprocess(images[start : start + self.batch_size]).to(self.device)
            with torch.inference_mode(), self._autocast():
                chunks.append(self.model(pixel_values=pixels).last_hidden_state.float().cpu().numpy())
        return np.concatenate(chunks) if chunks else np.zeros((0, 0, self.hidden_size), np.float32)

    def encode(self, images: ImageInput | Sequence[ImageInput], *, pooling: str | None = None,
               normalize: bool | None = None) -> np.ndarray:
        """Pooled embeddings ``[n, dim]`` (float32) in input order."""
        pooling = pooling or self.pooling
        if pooling not in _POOLING:
            raise ConfigError(f"pooling must be one of {_POOLING}, got {pooling!r}")
        states = self.hidden_states(images)
        if len(states) == 0:
            return np.zeros((0, self.dim), np.float32)
        cls, patches = states[:, 0], states[:, 1:].mean(axis=1)
        out = {"cls": cls, "mean": patches, "cls_mean": np.concatenate([cls, patches], axis=1)}[pooling]
        out = np.ascontiguousarray(out, dtype=np.float32)
        if self.normalize if normalize is None else normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    @staticmethod
    def _as_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        if isinstance(images, (str, os.PathLike)) or hasattr(images, "convert"):
            return [images]
        if isinstance(images, np.ndarray):
            single = images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))
            return [images] if single else list(images)  # (N, H, W) grey or (N, H, W, C) is a batch
        return list(images)
