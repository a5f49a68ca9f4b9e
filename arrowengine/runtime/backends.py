"""CPU execution backends (R1): eager, torch.compile, onnxruntime, IPEX, each with a logged fallback to eager.

A backend turns a loaded encoder module into a callable with the same keyword interface
(``input_ids``, ``attention_mask``, ``token_type_ids`` -> object with ``last_hidden_state``). When a backend
cannot run (package missing, export or compilation failing) the reason is logged as a warning and eager is
used (R1.7); the chosen backend is always reported.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from arrowengine.errors import ConfigError

__all__ = ["BACKENDS", "BackendChoice", "BackendFallbackWarning", "configure_threads", "onnx_session",
           "prepare_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("eager", "compile", "onnxruntime", "ipex")


class BackendFallbackWarning(UserWarning):
    """A requested backend cannot run here; eager PyTorch is used instead."""


@dataclass
class BackendChoice:
    """The callable to run and which backend it really is."""

    forward: Callable[..., Any]
    name: str
    requested: str
    reason: str = ""

    @property
    def fell_back(self) -> bool:
        """True when the requested backend was replaced by eager."""
        return self.name != self.requested


def configure_threads(threads: int) -> int:
    """Set torch's intra-op threads (0 keeps torch's default, one per core); returns the count in effect."""
    if threads < 0:
        raise ConfigError(f"threads must be >= 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    logger.info("torch intra-op threads: %d", torch.get_num_threads())
    return torch.get_num_threads()


def _eager(model: nn.Module) -> Callable[..., Any]:
    return model


def _fallback(model: nn.Module, requested: str, reason: str) -> BackendChoice:
    message = f"backend {requested!r} unavailable ({reason}); using eager PyTorch"
    warnings.warn(message, BackendFallbackWarning, stacklevel=3)
    logger.warning(message)
    return BackendChoice(_eager(model), "eager", requested, reason)


class _CompiledWithFallback:
    """``torch.compile`` is lazy: compilation errors surface at the first call, so fall back there."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = torch.compile(model, dynamic=True)
        self.failure = ""

    def __call__(self, **inputs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(**inputs)
            except Exception as exc:  # inductor raises many types (compiler missing, lowering errors)
                self.failure = f"{type(exc).__name__}: {str(exc)[:200]}"
                message = f"torch.compile failed ({self.failure}); using eager PyTorch from now on"
                warnings.warn(message, BackendFallbackWarning, stacklevel=2)
                logger.warning(message)
                self.compiled = None
        return self.model(**inputs)


class _OnnxRuntimeEncoder:
    """An encoder exported to ONNX once and run by onnxruntime's CPU provider."""

    def __init__(self, model: nn.Module, session: Any, input_names: list[str], path: Path | None = None) -> None:
        self.model = model
        self.path = path  # the exported .onnx file (e.g. for onnxruntime.quantization)
        self.session = session
        self.input_names = input_names

    def __call__(self, **inputs: Any) -> Any:
        feed = {name: inputs[name].cpu().numpy() for name in self.input_names}
        (hidden,) = self.session.run(["last_hidden_state"], feed)
        return SimpleNamespace(last_hidden_state=torch.from_numpy(hidden))


def onnx_session(path: Path) -> Any:
    """An onnxruntime CPU session on ``path`` using torch's intra-op thread count."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _export_onnx(model: nn.Module, directory: Path) -> tuple[Any, list[str]]:
    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = {n: torch.ones(2, 8, dtype=torch.long) for n in names}

    class _Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    path = directory / "model.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"last_hidden_state": {0: "batch", 1: "sequence"}}
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(_Wrapper(model), tuple(example[n] for n in names), str(path), input_names=names,
                          output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
    return onnx_session(path), names


def prepare_backend(model: nn.Module, backend: str = "eager") -> BackendChoice:
    """Wrap ``model`` for ``backend`` (one of :data:`BACKENDS`), falling back to eager with a warning."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "eager":
        return BackendChoice(_eager(model), "eager", "eager")
    if backend == "compile":
        return BackendChoice(_CompiledWithFallback(model), "compile", "compile")
    if backend == "ipex":
        try:
            import intel_extension_for_pytorch as ipex
        except ImportError:
            return _fallback(model, backend, "intel_extension_for_pytorch is not installed (pip install "
                             "arrowengine[ipex]; its last release supports only torch <= 2.8)")
        return BackendChoice(ipex.optimize(model), "ipex", "ipex")
    try:
        import onnxruntime  # noqa: F401 - presence check; used in _export_onnx
    except ImportError:
        return _fallback(model, backend, "onnxruntime is not installed (pip install arrowengine[onnx])")
    directory = Path(tempfile.mkdtemp(prefix="arrowengine-onnx-"))
    try:
        session, names = _export_onnx(model, directory)
    except Exception as exc:  # the exporter raises many types for unsupported graphs
        shutil.rmtree(directory, ignore_errors=True)
        return _fallback(model, backend, f"ONNX export failed: {type(exc).__name__}: {str(exc)[:200]}")
    logger.info("exported %s to ONNX at %s", type(model).__name__, directory)
    encoder = _OnnxRuntimeEncoder(model, session, names, directory / "model.onnx")
    # the export (~90 MB for MiniLM) lives as long as the encoder, not forever in the temp dir
    weakref.finalize(encoder, shutil.rmtree, directory, True)
    return BackendChoice(encoder, "onnxruntime", "onnxruntime")
