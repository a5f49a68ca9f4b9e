"""arrowengine: model weights as memory-mapped Parquet, loaded zero-copy into torch.

The public surface is imported lazily (PEP 562) so that ``import arrowengine.errors`` stays cheap and free of
cycles; ``quant`` relies on that to share the one error hierarchy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "WeightFile": "arrowengine.format.reader",
    "write_weights": "arrowengine.format.writer",
    "verify_weights": "arrowengine.format.integrity",
    "convert": "arrowengine.converters",
    "load_model": "arrowengine.runtime.loading",
    "load_state_dict": "arrowengine.runtime.loading",
    "TextEncoder": "arrowengine.runtime.text_encoder",
    "AudioEncoder": "arrowengine.runtime.audio_encoder",
    "ImageEncoder": "arrowengine.runtime.image_encoder",
    "LLM": "arrowengine.runtime.llm",
    "EngineConfig": "arrowengine.config",
    "load_config": "arrowengine.config",
}

__all__ = [
    "LLM",
    "AudioEncoder",
    "EngineConfig",
    "ImageEncoder",
    "TextEncoder",
    "WeightFile",
    "__version__",
    "convert",
    "load_config",
    "load_model",
    "load_state_dict",
    "verify_weights",
    "write_weights",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from arrowengine.config import EngineConfig, load_config
    from arrowengine.converters import convert
    from arrowengine.format.integrity import verify_weights
    from arrowengine.format.reader import WeightFile
    from arrowengine.format.writer import write_weights
    from arrowengine.runtime.audio_encoder import AudioEncoder
    from arrowengine.runtime.image_encoder import ImageEncoder
    from arrowengine.runtime.llm import LLM
    from arrowengine.runtime.loading import load_model, load_state_dict
    from arrowengine.runtime.text_encoder import TextEncoder


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'arrowengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # cache: the next lookup skips __getattr__
    return value
