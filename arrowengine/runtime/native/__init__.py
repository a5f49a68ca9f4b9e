"""Small native CPU kernels, compiled on first use with the system C compiler and called through ctypes.

Eager PyTorch has no faster softmax than ``torch.softmax``, and in the lean Whisper encoder's blocked attention
that softmax is a third of the attention time. :func:`softmax_bf16_` runs ``softmax_bf16.c`` instead: plain C
with AVX-512 intrinsics and OpenMP (no torch headers, so it builds in under a second), compiled once per
source/flags/compiler into ``~/.cache/arrowengine/native`` and shared by later
processes. OpenMP resolves to the ``libgomp`` torch already loaded, so both use one thread runtime.

Nothing here is required: without AVX-512F/BW/VL, without a compiler, with ``runtime.native_kernels: false``
(``ARROWENGINE_RUNTIME_NATIVE_KERNELS=0``), or when the build fails, :func:`softmax_kernel` returns ``None``
(the reason logged once) and callers use torch. ``runtime.cache_dir`` moves the build cache.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from arrowengine.config import load_config
from arrowengine.errors import EngineError
from arrowengine.hardware import cpu_info

__all__ = ["NativeBuildError", "native_cache_dir", "softmax_bf16_", "softmax_kernel"]

logger = logging.getLogger(__name__)

_SOFTMAX_SOURCE = Path(__file__).with_name("softmax_bf16.c")
_SOFTMAX_INCLUDED = (Path(__file__).with_name("exp2_poly.h"),)
_FLAGS = ("-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-fopenmp", "-shared", "-fPIC")
_REQUIRED_ISA = ("AVX-512F", "AVX-512BW", "AVX-512VL", "FMA")
_BUILD_TIMEOUT_S = 120


class NativeBuildError(EngineError, OSError):
    """A native kernel could not be built here (no C compiler, or the compiler failed); callers fall back to torch."""


def native_cache_dir(cache_dir: str | None = None) -> Path:
    """Where compiled kernels are kept: ``<runtime.cache_dir>/native``, by default ``~/.cache/arrowengine/native``.

    ``cache_dir`` is that setting when the caller already read the configuration.
    """
    if cache_dir is None:
        cache_dir = load_config().runtime.cache_dir
    return Path(cache_dir or Path.home() / ".cache" / "arrowengine") / "native"


def _compiler() -> str:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise NativeBuildError("no C compiler: set CC or install gcc (e.g. apt-get install gcc)")
    return compiler


def _build(source: Path, flags: tuple[str, ...], cache: Path, included: tuple[Path, ...] = ()) -> Path:
    """Compile ``source`` into a shared library in ``cache`` (atomically: concurrent builders do not clash).

    The library is keyed by the bytes of ``source`` and of the files it ``#include``s from this package
    (``included``), the flags, the compiler and the machine, so editing any of them builds anew.
    """
    compiler = _compiler()
    sources = b"".join(path.read_bytes() for path in (source, *included))
    key = hashlib.sha256(sources + " ".join((compiler, *flags, platform.machine())).encode())
    target = cache / f"{source.stem}-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        done = subprocess.run([compiler, *flags, str(source), "-o", str(built)], capture_output=True, text=True,
                              timeout=_BUILD_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise NativeBuildError(f"{compiler} failed on {source.name}: {done.stderr.strip()[-500:]}")
        os.replace(built, target)
    logger.info("built %s", target)
    return target


@functools.cache
def softmax_kernel() -> Callable[[int, int, int, int], int] | None:
    """``kernel(data_ptr, rows, cols, threads) -> 0`` (in-place bf16 row softmax), or None where it cannot run."""
    runtime = load_config().runtime
    if not runtime.native_kernels:
        logger.info("native kernels disabled (runtime.native_kernels is false): torch.softmax is used")
        return None
    missing = [isa for isa in _REQUIRED_ISA if isa not in cpu_info().isa]
    if missing:
        logger.info("native softmax needs %s, which this CPU lacks: torch.softmax is used", ", ".join(missing))
        return None
    try:
        path = _build(_SOFTMAX_SOURCE, _FLAGS, native_cache_dir(runtime.cache_dir), _SOFTMAX_INCLUDED)
        library = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("native softmax unavailable, torch.softmax is used instead: %s", exc)
        return None
    kernel = library.arrowengine_softmax_bf16
    kernel.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    kernel.restype = ctypes.c_int
    return kernel


def softmax_bf16_(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension, in place when the native kernel takes ``x`` (contiguous bf16 on CPU).

    Returns the result: ``x`` itself, or a new tensor from ``torch.softmax`` for other tensors or when the
    kernel is unavailable. Agrees with ``torch.softmax`` to bf16 rounding (one step of 2^-8 relative, at most).
    """
    kernel = softmax_kernel()
    usable = (kernel is not None and x.dtype == torch.bfloat16 and x.device.type == "cpu" and x.is_contiguous()
              and x.dim() >= 1 and x.numel() > 0 and not x.requires_grad)
    if not usable:
        return torch.softmax(x, dim=-1)
    if kernel(x.data_ptr(), x.numel() // x.shape[-1], x.shape[-1], torch.get_num_threads()) != 0:
        return torch.softmax(x, dim=-1)  # scratch allocation failed in C: x is untouched
    return x
