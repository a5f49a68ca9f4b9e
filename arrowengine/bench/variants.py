"""Model variants the benchmark needs besides ``models/<name>``: a V2 INT8 copy, made once and cached."""

from __future__ import annotations

import logging
from pathlib import Path

from arrowengine.bench.datasets import BenchInputError

__all__ = ["float_model_dir", "int8_model_dir"]

logger = logging.getLogger(__name__)


def float_model_dir(models_dir: Path, name: str) -> Path:
    """``models_dir/name``, or :class:`BenchInputError` naming the command that creates it."""
    path = Path(models_dir) / name
    if not (path / "weights.parquet").is_file():
        raise BenchInputError(f"{path} is missing; run python scripts/fetch_models.py")
    return path


def int8_model_dir(models_dir: Path, name: str) -> Path:
    """A V2 INT8 (RTN, per output channel) copy of ``name`` under ``models_dir/.bench/``, quantized on first use.

    ``arrowengine quantize`` runs its accuracy check as always; a refusal propagates as ``AccuracyError``.
    """
    from arrowengine.quantize import QuantizeOptions, quantize_model

    src = float_model_dir(models_dir, name)
    dst = Path(models_dir) / ".bench" / f"{name}-int8"
    if not (dst / "weights.parquet").is_file():
        logger.info("quantizing %s to INT8 for the benchmark (cached in %s)", name, dst)
        quantize_model(src, dst, QuantizeOptions(bits=8))
    return dst
