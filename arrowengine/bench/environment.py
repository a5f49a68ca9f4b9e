"""The machine a benchmark ran on: CPU, ISA, cores, memory, OS, Python and library versions, GPU."""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
import sys
from typing import Any

from arrowengine.hardware import cpu_info, torch_info

__all__ = ["describe_environment"]

_LIBRARIES = ("torch", "numpy", "pyarrow", "transformers", "sentence-transformers", "onnxruntime", "onnx",
              "safetensors", "lancedb", "intel-extension-for-pytorch")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, Any] | None:
    """GPU name, memory and driver from torch and ``nvidia-smi`` when a CUDA device is visible."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    gpu: dict[str, Any] = {"name": props.name, "memory_bytes": int(props.total_memory),
                           "count": torch.cuda.device_count(), "cuda": torch.version.cuda, "driver": None}
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20, check=False)
            gpu["driver"] = out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            pass
    return gpu


def describe_environment() -> dict[str, Any]:
    """Everything a reader needs to judge the figures: CPU model and ISA flags, cores, memory, OS, versions."""
    cpu = cpu_info()
    tinfo = torch_info()
    return {
        "cpu_model": cpu.model,
        "architecture": cpu.architecture,
        "cores": cpu.cores,
        "memory_bytes": cpu.memory_bytes,
        "isa": list(cpu.isa),
        "isa_summary": {name: cpu.has(flag) for name, flag in (("AVX2", "AVX2"), ("AVX-512", "AVX-512F"),
                                                                 ("VNNI", "AVX512-VNNI"), ("BF16", "AVX512-BF16"),
                                                                 ("AMX", "AMX-TILE"))},
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "torch_threads": tinfo["threads"],
        "cpu_capability": tinfo["cpu_capability"],
        "onednn_version": tinfo["onednn_version"],
        "libraries": {name: _version(name) for name in _LIBRARIES},
        "gpu": _gpu(),
    }
