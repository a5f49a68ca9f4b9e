"""Read a Hugging Face model directory (safetensors or ``pytorch_model.bin``, config, tokenizer files)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import ConversionError, ModelConfigError

__all__ = ["detect", "read"]

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".ot", ".onnx", ".gguf", ".ckpt")
_SKIP_DIRS = {"onnx", "openvino", ".git", "__pycache__"}
_MAX_EXTRA_FILE_BYTES = 64 * 1024 * 1024  # tokenizers are a few MB; anything bigger is not a side file


def _weight_files(src: Path) -> list[Path]:
    single = src / "model.safetensors"
    if single.is_file():
        return [single]
    shards = sorted(src.glob("model-*-of-*.safetensors"))
    if shards:
        return shards
    legacy = src / "pytorch_model.bin"
    if legacy.is_file():
        return [legacy]
    return sorted(src.glob("pytorch_model-*-of-*.bin"))


def detect(src: Path) -> bool:
    """True for a directory holding ``config.json`` and safetensors or ``pytorch_model.bin`` weights."""
    return src.is_dir() and (src / "config.json").is_file() and bool(_weight_files(src))


def _license(src: Path) -> str:
    readme = src / "README.md"
    if readme.is_file():
        head = readme.read_text(encoding="utf-8", errors="replace")[:4000]
        match = re.search(r"^license:\s*([\w.\-]+)\s*$", head, flags=re.M)
        if match:
            return match.group(1)
    return "unknown"


def _load_state_dict(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(file)))  # mmap-backed; bytes are read once, by the writer
        else:
            state.update(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return state


def _side_files(src: Path) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {}
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or rel.parts[0] in _SKIP_DIRS or path.suffix in _WEIGHT_SUFFIXES:
            continue
        if rel.name == "config.json" and len(rel.parts) == 1:
            continue  # written from the parsed config
        if path.stat().st_size > _MAX_EXTRA_FILE_BYTES:
            logger.warning("skipping %s: %d bytes is too large for a side file", path, path.stat().st_size)
            continue
        files[rel.as_posix()] = path
    return files


def read(src: Path, *, source: str | None = None, license: str | None = None) -> ConvertedModel:
    """Read the model directory ``src`` into a :class:`ConvertedModel` (weights stay memory-mapped)."""
    src = Path(src)
    config_path = src / "config.json"
    if not config_path.is_file():
        raise ModelConfigError(f"{src} has no config.json; a Hugging Face model directory needs one "
                               f"(save it with model.save_pretrained or copy it from the model's source)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{config_path} is not valid JSON ({exc}); fix or replace the file") from None
    files = _weight_files(src)
    if not files:
        raise ConversionError(f"{src} has no model.safetensors, sharded safetensors or pytorch_model.bin; "
                              f"nothing to convert")
    try:
        state = _load_state_dict(files)
    except Exception as exc:  # safetensors/torch raise assorted types for damaged files
        raise ConversionError(f"{src}: the weights in {', '.join(f.name for f in files)} cannot be read "
                              f"({type(exc).__name__}: {exc}); the download is damaged: fetch it again") from None
    return ConvertedModel(
        state_dict=state,
        config=config,
        files=_side_files(src),
        source=source or str(src.resolve()),
        source_format="huggingface",
        license=license or _license(src),
        card_extra={"source_weight_files": [f.name for f in files]},
    )
