"""Device and dtype selection with explicit fallbacks (R3): auto-detection, mapping onto torch, CPU fallback.

Every decision goes through :func:`select_device` / :func:`select_dtype` with a :class:`DeviceProbe` describing
what this machine offers. Tests simulate machines by building probes (a CUDA machine without bf16, an Apple
machine, ...) and run the same selection code; nothing about the model is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from arrowengine.errors import ConfigError, DeviceUnavailableError

__all__ = [
    "DEVICE_NAMES",
    "DeviceChoice",
    "DeviceFallbackWarning",
    "DeviceProbe",
    "autocast",
    "select_device",
    "select_dtype",
]

logger = logging.getLogger(__name__)

# Preference order for device="auto" (R3.1-3.3).
DEVICE_NAMES = ("cuda", "rocm", "mps", "xpu", "vulkan", "arm", "cpu")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DeviceFallbackWarning(UserWarning):
    """A requested device or dtype cannot run here; a fallback was chosen (the message says which and why)."""


@dataclass(frozen=True)
class DeviceProbe:
    """What the machine offers, as seen by torch. Build one by hand to simulate another machine."""

    cuda: bool = False  # an NVIDIA GPU usable through torch.cuda
    hip: bool = False  # torch is a ROCm build and sees an AMD GPU (exposed as torch "cuda")
    mps: bool = False
    xpu: bool = False
    vulkan: bool = False
    machine: str = "x86_64"
    cuda_bf16: bool = False  # the GPU supports bfloat16 (compute capability >= 8.0)
    cpu_isa: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def detect(cls) -> DeviceProbe:
        """Probe this process's torch build and hardware."""
        from arrowengine.hardware import cpu_info

        gpu = torch.cuda.is_available()
        hip = bool(getattr(torch.version, "hip", None)) and gpu
        mps_backend = getattr(torch.backends, "mps", None)
        xpu = getattr(torch, "xpu", None)
        vulkan = getattr(torch, "is_vulkan_available", None)
        return cls(
            cuda=gpu and not hip,
            hip=hip,
            mps=bool(mps_backend and mps_backend.is_available()),
            xpu=bool(xpu and xpu.is_available()),
            vulkan=bool(vulkan and vulkan()),
            machine=platform.machine().lower(),
            cuda_bf16=bool(gpu and torch.cuda.is_bf16_supported()),
            cpu_isa=cpu_info().isa,
        )

    @property
    def is_arm(self) -> bool:
        """True on an ARM CPU (aarch64 / arm64)."""
        return self.machine in ("aarch64", "arm64") or self.machine.startswith("armv")

    def available(self, name: str) -> bool:
        """Whether device ``name`` (one of :data:`DEVICE_NAMES`) can run here."""
        return {
            "cuda": self.cuda, "rocm": self.hip, "mps": self.mps, "xpu": self.xpu, "vulkan": self.vulkan,
            "arm": self.is_arm, "cpu": True,
        }[name]


@dataclass(frozen=True)
class DeviceChoice:
    """The outcome of device selection: the torch device to use and how it was reached."""

    requested: str
    name: str  # arrowengine's name (cuda, rocm, ..., cpu)
    torch_device: str  # what torch calls it ("cuda" serves both NVIDIA and ROCm builds)
    fell_back: bool = False
    reason: str = ""

    @property
    def is_gpu(self) -> bool:
        """True for any accelerator (everything but cpu and arm)."""
        return self.name not in ("cpu", "arm")


def _torch_name(name: str) -> str:
    return {"rocm": "cuda", "arm": "cpu"}.get(name, name)


def _fallback(requested: str, reason: str, allow_fallback: bool) -> DeviceChoice:
    message = f"device {requested!r} is not available here ({reason}); running on CPU instead"
    if not allow_fallback:
        raise DeviceUnavailableError(f"device {requested!r} is not available here ({reason}); "
                                     f"choose device='cpu' or 'auto', or allow fallback")
    warnings.warn(message, DeviceFallbackWarning, stacklevel=3)
    logger.warning(message)
    return DeviceChoice(requested, "cpu", "cpu", fell_back=True, reason=reason)


def select_device(requested: str = "auto", *, probe: DeviceProbe | None = None,
                  allow_fallback: bool = True) -> DeviceChoice:
    """Map ``requested`` (``auto`` or one of :data:`DEVICE_NAMES`, optionally with an index ``cuda:1``) to torch.

    ``auto`` takes the first available device in :data:`DEVICE_NAMES` order. A named device that cannot run
    falls back to CPU with a :class:`DeviceFallbackWarning` (R3.9), or raises when ``allow_fallback=False``.
    """
    probe = probe or DeviceProbe.detect()
    base, _, index = requested.lower().partition(":")
    if base == "auto":
        for name in DEVICE_NAMES:
            if probe.available(name):
                choice = DeviceChoice(requested, name, _torch_name(name))
                logger.info("device auto -> %s (torch %s)", name, choice.torch_device)
                return choice
    if base not in DEVICE_NAMES:
        raise DeviceUnavailableError(f"unknown device {requested!r}; choose one of auto, {', '.join(DEVICE_NAMES)}")
    if not probe.available(base):
        if base == "arm":
            return _fallback(requested, f"this CPU is {probe.machine}, not ARM", allow_fallback)
        build = "a ROCm build of torch" if base == "rocm" else f"torch with {base} support"
        return _fallback(requested, f"needs {build} and a matching device", allow_fallback)
    torch_device = _torch_name(base) + (f":{index}" if index and base not in ("arm", "cpu") else "")
    return DeviceChoice(requested, base, torch_device)


def select_dtype(requested: str, device: DeviceChoice, *, probe: DeviceProbe | None = None) -> torch.dtype:
    """The dtype to run in on ``device``: ``requested`` when it can run there, else a logged fallback.

    float16 on CPU has no fast kernels and loses range: bfloat16 is used where the CPU has BF16 instructions,
    else float32. bfloat16 on a GPU without it (compute capability < 8.0) becomes float16.
    """
    if requested not in _DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(_DTYPES)}, got {requested!r}")
    probe = probe or DeviceProbe.detect()
    dtype = _DTYPES[requested]
    if not device.is_gpu and dtype == torch.float16:
        native_bf16 = any(isa in probe.cpu_isa for isa in ("AVX512-BF16", "AMX-BF16"))
        fallback = torch.bfloat16 if native_bf16 else torch.float32
        message = f"float16 is slow and lossy on this CPU; using {str(fallback).removeprefix('torch.')}"
        warnings.warn(message, DeviceFallbackWarning, stacklevel=2)
        logger.warning(message)
        return fallback
    if device.name in ("cuda", "rocm") and dtype == torch.bfloat16 and not probe.cuda_bf16:
        message = "this GPU has no bfloat16 support (compute capability < 8.0); using float16"
        warnings.warn(message, DeviceFallbackWarning, stacklevel=2)
        logger.warning(message)
        return torch.float16
    return dtype


@contextlib.contextmanager
def autocast(device: DeviceChoice, dtype: torch.dtype) -> Iterator[None]:
    """Automatic mixed precision (R3.7) for ``dtype`` on ``device``; a no-op for float32."""
    if dtype == torch.float32:
        yield
        return
    device_type = "cuda" if device.torch_device.startswith("cuda") else device.torch_device.split(":")[0]
    with torch.autocast(device_type=device_type, dtype=dtype):
        yield
