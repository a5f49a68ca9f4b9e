"""Putting a model on its device: VRAM threshold check (R3.6), one-pass copy (R11.6), CPU retry (R3.10)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from arrowengine.errors import ConfigError
from arrowengine.runtime.devices import DeviceChoice, DeviceFallbackWarning

__all__ = ["VramMonitor", "model_bytes", "move_to_device", "run_with_cpu_retry"]

logger = logging.getLogger(__name__)
T = TypeVar("T")


def model_bytes(model: nn.Module) -> int:
    """Bytes of all parameters and buffers (shared tensors counted once)."""
    seen: set[int] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        total += tensor.numel() * tensor.element_size()
    return total


@dataclass
class VramMonitor:
    """Tracks GPU memory use against a threshold (a fraction of total VRAM).

    ``mem_get_info`` returns ``(free, total)`` bytes for a device; it defaults to ``torch.cuda.mem_get_info``
    and can be replaced to describe another GPU.
    """

    threshold: float = 0.9
    mem_get_info: Callable[[str], tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")

    def _info(self, device: str) -> tuple[int, int]:
        if self.mem_get_info is not None:
            return self.mem_get_info(device)
        return torch.cuda.mem_get_info(torch.device(device))

    def usage(self, device: str) -> float:
        """Fraction of the device's memory in use now."""
        free, total = self._info(device)
        return 1.0 - free / total

    def fits(self, device: str, extra_bytes: int) -> bool:
        """Whether allocating ``extra_bytes`` more keeps usage under the threshold."""
        free, total = self._info(device)
        return (total - free + extra_bytes) / total <= self.threshold


def move_to_device(model: nn.Module, choice: DeviceChoice, *, monitor: VramMonitor | None = None,
                   dtype: torch.dtype | None = None) -> tuple[nn.Module, DeviceChoice]:
    """Move ``model`` to ``choice``'s device, or keep it on CPU (with a warning) if VRAM would pass the threshold.

    Each mapped tensor is copied once, straight from the file mapping to the device (no intermediate CPU copy).
    """
    if not choice.is_gpu:
        return (model.to(dtype) if dtype is not None else model), choice
    needed = model_bytes(model)
    if dtype is not None:
        needed = needed * torch.tensor([], dtype=dtype).element_size() // 4
    if monitor is not None and not monitor.fits(choice.torch_device, needed):
        message = (f"{needed / 2**20:.0f} MiB of weights would push {choice.torch_device} over "
                   f"{monitor.threshold:.0%} of its memory; running on CPU instead")
        warnings.warn(message, DeviceFallbackWarning, stacklevel=2)
        logger.warning(message)
        cpu = DeviceChoice(choice.requested, "cpu", "cpu", fell_back=True, reason="VRAM threshold")
        return (model.to(dtype) if dtype is not None else model), cpu
    model = model.to(device=choice.torch_device, dtype=dtype)
    logger.info("moved %.0f MiB of weights to %s", needed / 2**20, choice.torch_device)
    return model, choice


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def run_with_cpu_retry(forward: Callable[..., T], model: nn.Module, choice: DeviceChoice, *args: Any,
                       **kwargs: Any) -> tuple[T, DeviceChoice]:
    """Run ``forward(model, *args, **kwargs)``; if it fails on a GPU, move everything to CPU and retry once.

    Returns the result and the device that produced it. CPU failures are raised unchanged.
    """
    try:
        return forward(model, *args, **kwargs), choice
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not choice.is_gpu:
            raise
        message = f"forward pass failed on {choice.torch_device} ({type(exc).__name__}: {exc}); retrying on CPU"
        warnings.warn(message, DeviceFallbackWarning, stacklevel=2)
        logger.warning(message)
        model.to("cpu")
        cpu = DeviceChoice(choice.requested, "cpu", "cpu", fell_back=True, reason=f"GPU failure: {exc}")
        return forward(model, *_to_cpu(args), **_to_cpu(kwargs)), cpu
