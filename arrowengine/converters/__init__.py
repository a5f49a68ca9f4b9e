"""Convert models from their source formats into the arrowengine model store (``models/<name>/``)."""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path
from typing import Any

from arrowengine.converters.destination import check_destination
from arrowengine.converters.model_dir import MODEL_CARD, WEIGHTS_FILE, read_model_card, write_model_dir
from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import ConversionError, WeightFileNotFoundError

__all__ = [
    "MODEL_CARD",
    "WEIGHTS_FILE",
    "ConvertedModel",
    "convert",
    "detect_source",
    "read_model_card",
    "write_model_dir",
]

logger = logging.getLogger(__name__)

# Source readers, tried in order; each module has detect(Path) -> bool and read(Path, **options).
_READERS: tuple[str, ...] = (
    "arrowengine.converters.huggingface",
    "arrowengine.converters.gguf", "arrowengine.converters.ctranslate2", "arrowengine.converters.onnx_dinov2",
)


def detect_source(src: str | os.PathLike[str]) -> str:
    """The module name of the reader that recognises ``src``; ``ConversionError`` if none does."""
    path = Path(src)
    if not path.exists():
        raise WeightFileNotFoundError(f"conversion source {path} does not exist")
    for name in _READERS:
        if importlib.import_module(name).detect(path):
            return name
    kinds = ", ".join(n.rsplit(".", 1)[-1] for n in _READERS)
    raise ConversionError(f"{path} is not a model source this build can convert (known kinds: {kinds}); "
                          f"point at a Hugging Face model directory or a supported model file")


def convert(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, progress: bool = False,
            force: bool = False, **options: Any) -> Path:
    """Convert the model at ``src`` (kind detected) into the model directory ``dst``; returns ``dst``.

    ``dst`` is checked before any work: an existing destination is refused unless ``force`` (then it is
    replaced only once the new model is complete), and it may never be ``src`` or contain or lie inside it.

    Raises:
        DestinationExistsError: ``dst`` exists and ``force`` is false (or it is a file).
        DestinationIsSourceError: ``dst`` and ``src`` overlap, even with ``force``.
    """
    check_destination(dst, sources=(src,), force=force)
    reader = importlib.import_module(detect_source(src))
    logger.info("converting %s with %s", src, reader.__name__)
    model = reader.read(Path(src), **options)
    if not isinstance(model, ConvertedModel):
        raise ConversionError(f"reader {reader.__name__} returned {type(model).__name__}, not ConvertedModel")
    return write_model_dir(model, dst, progress=progress, force=force)
