"""Build a ``transformers`` architecture from a model directory and fill it with zero-copy mapped weights.

The module is built with its parameters on the ``meta`` device (no memory allocated, no init work), then
``load_state_dict(..., assign=True)`` puts the mapped tensors in place: no byte of the weights is copied.
Buffers (position ids, rotary tables) are built normally, since they are computed rather than stored.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arrowengine.errors import ConfigError, ModelConfigError, SchemaError, WeightFileNotFoundError
from arrowengine.format.reader import WeightFile
from arrowengine.runtime.devices import select_device
from arrowengine.runtime.placement import VramMonitor, move_to_device

__all__ = ["load_config_dict", "load_model", "load_state_dict"]

logger = logging.getLogger(__name__)


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of a weight file (or model directory) as a dict; mapped, not copied."""
    return WeightFile.open(path).state_dict()


def load_config_dict(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``config.json`` of a model directory; ``ModelConfigError`` naming the fix if absent."""
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise WeightFileNotFoundError(f"model directory {model_dir} does not exist; convert a model into it "
                                      f"first (python scripts/fetch_models.py or arrowengine convert)")
    path = model_dir / "config.json"
    if not path.is_file():
        raise ModelConfigError(f"{model_dir} has no config.json, so no architecture can be built; re-convert "
                               f"the model (arrowengine convert SRC {model_dir})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{path} is not valid JSON ({exc}); re-convert the model") from None


def _architecture(config: Any, architecture: str | None) -> type[nn.Module]:
    import transformers

    names = [architecture] if architecture else list(getattr(config, "architectures", None) or [])
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    if architecture:
        raise ModelConfigError(f"transformers has no architecture {architecture!r}; check the name")
    mapping = transformers.AutoModel._model_mapping
    try:
        return mapping[type(config)]
    except KeyError:
        raise ModelConfigError(f"no transformers architecture for model_type {config.model_type!r}; "
                               f"set 'architectures' in config.json") from None


def _match_prefix(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add or strip the base-model prefix (``bert.``, ``model.``) when the stored names and the module disagree."""
    expected = set(model.state_dict().keys())
    if not state or expected & state.keys():
        return state
    prefix = getattr(model, "base_model_prefix", "") or ""
    if not prefix:
        return state
    stripped = {k.removeprefix(prefix + "."): v for k, v in state.items()}
    if expected & stripped.keys():
        return stripped
    added = {f"{prefix}.{k}": v for k, v in state.items()}
    return added if expected & added.keys() else state


def _install_quantized(model: nn.Module, quantized: dict[str, Any], mode: str) -> None:
    """Swap each Linear (Embedding) whose weight is stored quantized for a ``QuantLinear`` (``QuantEmbedding``)
    over the mapped blobs."""
    from quant import QuantEmbedding, QuantLinear, replace_linears

    targets = {}
    for name, qt in quantized.items():
        if not name.endswith(".weight"):
            raise SchemaError(f"quantized tensor {name!r} is not a Linear or Embedding weight; only those layers "
                              "can be quantized")
        targets[name.removesuffix(".weight")] = qt
    modules = dict(model.named_modules())
    for path in [p for p in targets if isinstance(modules.get(p), nn.Embedding)]:
        parent, _, child = path.rpartition(".")
        setattr(modules[parent] if parent else model, child,
                QuantEmbedding(targets.pop(path), padding_idx=modules[path].padding_idx, name=path))
    replace_linears(model, targets, mode=mode)
    count = sum(isinstance(m, QuantLinear) for m in model.modules())
    logger.info("built %d QuantLinear layers in mode %s", count, mode)


def _upcast_fp16_linears(model: nn.Module) -> None:
    """A mixed-precision file stores its most sensitive Linears in FP16 next to float32 tensors; a float32
    forward cannot multiply them, so they are cast to float32 once (a copy of those layers only, logged)."""
    if not any(p.dtype == torch.float32 for p in model.parameters()):
        return
    cast = 0
    for module in model.modules():
        if type(module) is nn.Linear and module.weight.dtype == torch.float16:
            module.weight = nn.Parameter(module.weight.float(), requires_grad=False)
            if module.bias is not None and module.bias.dtype == torch.float16:
                module.bias = nn.Parameter(module.bias.float(), requires_grad=False)
            cast += 1
    if cast:
        logger.info("cast %d FP16 Linears of a mixed-precision file to float32 (copies of those layers)", cast)


def _is_blocks(value: Any) -> bool:
    return type(value).__name__ == "GGUFBlocks"


def _dequantize_gguf_blocks(state: dict[str, Any]) -> dict[str, Any]:
    """GGUF block tensors (schema V3) as the float32 tensors they encode (exact)."""
    return {name: value.dequantize() if _is_blocks(value) else value for name, value in state.items()}


def _linear_blocks(model: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """``{module path: GGUFBlocks}`` of the ``nn.Linear`` layers whose weight ``state`` holds as GGUF blocks."""
    linears = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    return {name.removesuffix(".weight"): value for name, value in state.items()
            if _is_blocks(value) and name.endswith(".weight") and name.removesuffix(".weight") in linears}


def _install_block_linears(model: nn.Module, blocks: dict[str, Any]) -> None:
    """Swap each Linear of ``blocks`` for a :class:`BlockLinear` over its mapped blocks (bias kept)."""
    from arrowengine.runtime.block_linear import BlockLinear

    for path, value in blocks.items():
        parent_path, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        linear = getattr(parent, child)
        bias = None if linear.bias is None or linear.bias.device.type == "meta" else linear.bias
        setattr(parent, child, BlockLinear(value, bias, name=path))
    if blocks:
        logger.info("built %d BlockLinear layers over the file's GGUF blocks (zero-copy)", len(blocks))


def load_model(
    model_dir: str | os.PathLike[str],
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    *,
    architecture: str | None = None,
    quant_mode: str = "dequant-on-the-fly",
    verify: bool | None = None,
    gguf_linears: str = "auto",
) -> nn.Module:
    """Build the model of ``model_dir`` (its ``config.json`` architecture) with zero-copy mapped weights.

    Args:
        model_dir: a directory written by :func:`arrowengine.convert`.
        device: ``cpu`` keeps the weights in the file mapping; ``auto`` or a GPU name copies them to that device
            (once per tensor) unless it is unavailable or short of memory, then CPU is used with a warning.
        dtype: cast the weights (a copy) when given and different from the stored dtype.
        architecture: a ``transformers`` class name overriding ``config.json``'s ``architectures``.
        quant_mode: for a quantized (schema V2) model, how its ``QuantLinear`` layers run:
            ``dequant-on-the-fly`` (zero-copy, least memory), ``int8-kernel`` (one int8 copy, fastest int8
            matmul available) or ``dequant-on-load`` (one float copy, fastest float path).
        verify: hash every tensor against its stored checksum before building (reads the whole file, so it is
            off by default); ``None`` takes ``runtime.verify_checksums`` (``ARROWENGINE_RUNTIME_VERIFY_CHECKSUMS``)
            from the configuration. A damaged tensor raises :class:`ChecksumMismatchError` naming it.
        gguf_linears: Linears stored as GGUF blocks (schema V3): ``blocks`` runs them as
            :class:`arrowengine.runtime.block_linear.BlockLinear` over the mapped blocks (a quarter of the float
            bytes for Q8_0), ``dequantize`` makes exact float32 copies (what training and peft need); ``auto`` is
            ``blocks`` for encoders and ``dequantize`` for causal LMs (``arrowengine.LLM`` runs their blocks
            itself). Other GGUF tensors (embedding tables) are always dequantized.

    Returns:
        The module in eval mode with ``requires_grad`` off; ``model.arrowengine_weights`` is its ``WeightFile``
        and ``model.arrowengine_device`` the :class:`DeviceChoice` it runs on.
    """
    from transformers import AutoConfig

    start = time.perf_counter()
    model_dir = Path(model_dir)
    load_config_dict(model_dir)  # clear errors for a missing dir / config before transformers sees it
    from arrowengine.config import resolve_verify_checksums

    weights = WeightFile.open(model_dir, verify=resolve_verify_checksums(verify))
    config = AutoConfig.from_pretrained(str(model_dir), local_files_only=True)
    cls = _architecture(config, architecture)
    from accelerate import init_empty_weights

    # parameters on the meta device (no float copy is allocated, the mapped tensors are assigned below);
    # buffers stay real because non-persistent ones (position ids, rotary frequencies) are not in the file
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    state = _match_prefix(model, weights.state_dict())
    if gguf_linears not in ("auto", "blocks", "dequantize"):
        raise ConfigError(f"gguf_linears must be 'auto', 'blocks' or 'dequantize', got {gguf_linears!r}")
    if gguf_linears == "auto":
        gguf_linears = "dequantize" if any(a.endswith("ForCausalLM") for a in config.architectures or []) else "blocks"
    blocks = _linear_blocks(model, state) if gguf_linears == "blocks" else {}
    state = _dequantize_gguf_blocks({name: value for name, value in state.items()
                                     if name.removesuffix(".weight") not in blocks})
    quantized = {name: value for name, value in state.items() if not isinstance(value, torch.Tensor)}
    plain = {name: value for name, value in state.items() if isinstance(value, torch.Tensor)}
    result = model.load_state_dict(plain, strict=False, assign=True)
    _install_block_linears(model, blocks)
    if quantized:
        _install_quantized(model, quantized, quant_mode)
        _upcast_fp16_linears(model)
    if hasattr(model, "tie_weights") and not quantized:
        model.tie_weights()
    missing = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    if missing:
        raise SchemaError(
            f"{weights.path} lacks {len(missing)} parameters of {cls.__name__} (first: {missing[:3]}); the "
            f"weights do not match {model_dir / 'config.json'}: re-convert the model"
        )
    unexpected = [k for k in result.unexpected_keys if k not in quantized]
    if unexpected:
        logger.debug("ignored %d stored tensors the architecture does not use: %s", len(unexpected), unexpected[:5])
    model.eval()
    model.requires_grad_(False)
    if dtype is not None:
        target = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        if any(p.dtype != target for p in model.parameters()):
            logger.info("casting %s to %s (copies the weights out of the mapping)", model_dir.name, target)
            model.to(target)
    choice = select_device(device)
    if choice.is_gpu:
        model, choice = move_to_device(model, choice, monitor=VramMonitor())
    model.arrowengine_weights = weights  # keeps the file's zero-copy status and metadata at hand
    model.arrowengine_device = choice  # where the weights ended up (after any fallback)
    logger.info("loaded %s (%s) from %s in %.3f s, zero_copy=%s", cls.__name__, config.model_type, model_dir,
                time.perf_counter() - start, weights.zero_copy)
    return model
