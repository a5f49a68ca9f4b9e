"""Errors raised by the ``quant`` package.

Every class derives from :class:`arrowengine.errors.EngineError` (through :class:`QuantError`) and from the
builtin a caller would naturally catch, so ``except ValueError`` and ``except EngineError`` both work.
Messages name the tensor or layer and say what to do.
"""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = [
    "CalibrationError",
    "GroupSizeError",
    "NonFiniteWeightError",
    "PackingError",
    "QuantError",
    "QuantModeError",
    "QuantOptionError",
    "QuantShapeError",
    "UnsupportedBitsError",
]


class QuantError(EngineError):
    """Root of every error raised by the ``quant`` package."""


class UnsupportedBitsError(QuantError, ValueError):
    """A bit width other than 2, 4 or 8 was requested."""


class GroupSizeError(QuantError, ValueError):
    """A group size that is not supported (0 = per output channel, 32, 64 or 128)."""


class NonFiniteWeightError(QuantError, ValueError):
    """A tensor to quantize holds NaN or Inf values."""


class PackingError(QuantError, ValueError):
    """Values that cannot be packed (wrong dtype, out of range) or a packed buffer too short to unpack."""


class QuantShapeError(QuantError, ValueError):
    """Packed data, scales or zero points whose shape or dtype disagrees with the tensor they describe."""


class QuantModeError(QuantError, ValueError):
    """An unknown ``QuantLinear`` execution mode, or a mode that cannot run on this input."""


class QuantOptionError(QuantError, ValueError):
    """A quantization option outside its allowed values (method, clip rule, search, damping, block or sequence size)."""


class CalibrationError(QuantError, ValueError):
    """Calibration data is missing, empty or does not fit the layer (GPTQ, mixed precision)."""
