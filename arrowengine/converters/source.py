"""What every source reader produces: a state dict in Hugging Face naming plus the files a model dir needs.

Source readers (Hugging Face directories, GGUF, CTranslate2, ONNX) each turn their input into a
:class:`ConvertedModel`; :func:`arrowengine.converters.write_model_dir` turns that into ``models/<name>/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["ConvertedModel"]


@dataclass
class ConvertedModel:
    """A model read from some source, ready to be written as ``models/<name>/``.

    Attributes:
        state_dict: tensors named as the matching ``transformers`` architecture expects them.
        config: the ``config.json`` content (a dict with at least ``model_type``).
        files: extra files for the model dir: relative name -> source path or bytes (tokenizer, processor ...).
        source: a human-readable description of where the weights came from (path, package and version).
        source_format: ``huggingface``, ``gguf``, ``ctranslate2``, ``onnx``.
        license: SPDX id of the weights' license, or ``unknown``.
        card_extra: anything else worth recording in ``model_card.json``.
    """

    state_dict: Mapping[str, torch.Tensor]
    config: dict[str, Any]
    files: dict[str, Path | bytes] = field(default_factory=dict)
    source: str = ""
    source_format: str = "huggingface"
    license: str = "unknown"
    card_extra: dict[str, Any] = field(default_factory=dict)

    @property
    def model_type(self) -> str:
        """The ``model_type`` from the config (``bert``, ``llama``, ``whisper``, ``dinov2`` ...)."""
        return str(self.config.get("model_type", "unknown"))
