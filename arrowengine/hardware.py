"""What this machine offers: CPU model and ISA extensions, torch build, oneDNN, accelerators."""

from __future__ import annotations

import functools
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CpuInfo", "cpu_info", "torch_info"]

# /proc/cpuinfo flag -> the name users know
_ISA_FLAGS = {
    "sse4_2": "SSE4.2",
    "avx": "AVX",
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512bw": "AVX-512BW",
    "avx512vl": "AVX-512VL",
    "avx512_vnni": "AVX512-VNNI",
    "avx512_bf16": "AVX512-BF16",
    "avx512_fp16": "AVX512-FP16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX-TILE",
    "amx_bf16": "AMX-BF16",
    "amx_int8": "AMX-INT8",
    "asimd": "NEON",
    "sve": "SVE",
}


@dataclass(frozen=True)
class CpuInfo:
    """CPU model, logical cores usable by this process, memory, and the ISA extensions present."""

    model: str
    architecture: str
    cores: int
    memory_bytes: int
    isa: tuple[str, ...] = field(default_factory=tuple)

    def has(self, name: str) -> bool:
        """True when the ISA extension ``name`` (as listed in :data:`isa`, e.g. ``AMX-BF16``) is present."""
        return name in self.isa

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON reports."""
        return asdict(self)


def _parse_cpuinfo(text: str) -> tuple[str, set[str]]:
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "processor") and not model and not value.strip().isdigit():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """Read once per process from ``/proc/cpuinfo`` (Linux); other systems report what ``platform`` knows."""
    import psutil

    path = Path("/proc/cpuinfo")
    model, flags = _parse_cpuinfo(path.read_text()) if path.is_file() else (platform.processor(), set())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    isa = tuple(name for flag, name in _ISA_FLAGS.items() if flag in flags)
    return CpuInfo(model or platform.processor() or "unknown", platform.machine(), cores,
                   psutil.virtual_memory().total, isa)


def torch_info() -> dict[str, Any]:
    """torch version, CPU capability it dispatches to, oneDNN status and version, threads, accelerators."""
    import torch

    config = torch.__config__.show()
    onednn = re.search(r"oneDNN v([\d.]+)", config) or re.search(r"MKL-DNN v([\d.]+)", config)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_available": torch.backends.mkldnn.is_available(),
        "onednn_version": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "rocm": bool(getattr(torch.version, "hip", None)),
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "xpu_available": bool(getattr(torch, "xpu", None) and torch.xpu.is_available()),
    }
    return info
