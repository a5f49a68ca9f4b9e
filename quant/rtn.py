"""Round-to-nearest (RTN) quantization: INT8 per output channel, INT4 / INT2 per group.

Format (shared by RTN and GPTQ, and stored as-is in schema V2):

* The tensor is seen as ``rows x k`` where ``k`` is the size of ``axis`` (the reduction dimension: the input
  dimension, i.e. the last dimension, of a Linear weight ``[out, in]``) and ``rows`` all other dimensions
  flattened in order after moving ``axis`` last.
* Each row is split into groups of ``group_size`` consecutive elements along ``k`` (``group_size=0``: one
  group per row, i.e. per output channel). When ``group_size`` does not divide ``k`` the last group is padded
  with zeros up to ``group_size``; padded positions store the code of 0.0 and
  are dropped by :func:`dequantize`.
* Each group has a float16 ``scale`` and a uint8 ``zero_point``; ``w ~= scale * (code - zero_point)`` with
  ``code`` in ``[0, 2**bits - 1]``. Symmetric quantization fixes ``zero_point = 2**(bits-1)``.
* ``scales`` and ``zero_points`` have shape ``[rows, groups]``; codes are packed per row with
  :func:`quant.packing.pack` into ``packed`` of shape ``[rows, ceil(padded_k * bits / 8)]``.

Scales are rounded *up* to the next float16 value before codes are computed, so the min-max error bound
``|w - dequantize(quantize(w))| <= scale / 2`` holds with the stored float16 scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from quant.errors import GroupSizeError, NonFiniteWeightError, QuantOptionError, QuantShapeError, UnsupportedBitsError
from quant.packing import SUPPORTED_BITS, pack, packed_size, unpack

__all__ = [
    "SUPPORTED_GROUP_SIZES",
    "QuantizedTensor",
    "compute_qparams",
    "dequantize",
    "quantize",
    "quantize_codes",
]

SUPPORTED_GROUP_SIZES = (0, 32, 64, 128)
_MSE_GRID = 20  # clip ratios tried by clip="mse": 1.0 down to 1 - _MSE_MAX_SHRINK
_MSE_MAX_SHRINK = 0.8


def _check_bits_group(bits: int, group_size: int, name: str) -> None:
    if bits not in SUPPORTED_BITS:
        raise UnsupportedBitsError(f"{name}: bits={bits!r} is not supported; use one of 2, 4 or 8")
    if group_size not in SUPPORTED_GROUP_SIZES:
        raise GroupSizeError(
            f"{name}: group_size={group_size!r} is not supported; use 0 (per output channel), 32, 64 or 128"
        )


@dataclass(frozen=True)
class QuantizedTensor:
    """A quantized tensor in the RTN/GPTQ format described in the module docstring.

    ``packed``, ``scales`` and ``zero_points`` are kept as given (no copy), so they may be zero-copy views
    of a memory-mapped file; ``scales`` and ``zero_points`` may be flat and are viewed as ``[rows, groups]``.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zero_points: torch.Tensor
    bits: int
    group_size: int
    shape: tuple[int, ...]
    axis: int = -1
    symmetric: bool = False
    name: str = field(default="tensor", compare=False)

    def __post_init__(self) -> None:
        _check_bits_group(self.bits, self.group_size, self.name)
        shape = tuple(int(s) for s in self.shape)
        object.__setattr__(self, "shape", shape)
        if not shape:
            raise QuantShapeError(f"{self.name}: a quantized tensor needs at least one dimension")
        axis = self.axis % len(shape) if -len(shape) <= self.axis < len(shape) else None
        if axis is None:
            raise QuantShapeError(f"{self.name}: axis={self.axis} is out of range for shape {list(shape)}")
        object.__setattr__(self, "axis", axis)
        expect = (self.rows, self.num_groups)
        for label, t, dtypes in (
            ("scales", self.scales, (torch.float16, torch.float32)),
            ("zero_points", self.zero_points, (torch.uint8,)),
        ):
            if t.dtype not in dtypes:
                raise QuantShapeError(f"{self.name}: {label} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
            if t.numel() != expect[0] * expect[1]:
                raise QuantShapeError(
                    f"{self.name}: {label} holds {t.numel()} values but shape {list(shape)} with group_size="
                    f"{self.group_size} needs {expect[0]} x {expect[1]} = {expect[0] * expect[1]}; "
                    f"the file or the caller paired this tensor with the wrong {label}"
                )
            if tuple(t.shape) != expect:
                object.__setattr__(self, label, t.view(expect))
        if self.packed.dtype != torch.uint8 or tuple(self.packed.shape) != self.packed_shape:
            if self.packed.dtype == torch.uint8 and self.packed.numel() == math.prod(self.packed_shape):
                object.__setattr__(self, "packed", self.packed.view(self.packed_shape))
            else:
                raise QuantShapeError(
                    f"{self.name}: packed data is {self.packed.dtype} {list(self.packed.shape)} but "
                    f"{self.bits}-bit codes of shape {list(shape)} need uint8 {list(self.packed_shape)}"
                )

    @property
    def k(self) -> int:
        """Size of the quantized (reduction) dimension."""
        return self.shape[self.axis]

    @property
    def rows(self) -> int:
        """Number of rows: the product of all dimensions except ``axis``."""
        return math.prod(self.shape) // self.k if self.k else 0

    @property
    def group_len(self) -> int:
        """Elements per group: ``group_size``, or ``k`` for per-channel quantization."""
        return self.group_size or self.k

    @property
    def num_groups(self) -> int:
        """Groups per row (the last one padded when ``group_size`` does not divide ``k``)."""
        return -(-self.k // self.group_len) if self.k else 0

    @property
    def padded_k(self) -> int:
        """``k`` rounded up to whole groups: the number of codes stored per row."""
        return self.num_groups * self.group_len

    @property
    def packed_shape(self) -> tuple[int, int]:
        """Shape of ``packed``: ``[rows, ceil(padded_k * bits / 8)]``."""
        return (self.rows, packed_size(self.padded_k, self.bits))

    @property
    def nbytes(self) -> int:
        """Bytes of packed codes, scales and zero points together."""
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zero_points))

    def codes(self) -> torch.Tensor:
        """Unpacked uint8 codes, ``[rows, padded_k]``."""
        return unpack(self.packed, self.bits, self.padded_k)


def _round_up_fp16(scale: torch.Tensor) -> torch.Tensor:
    """Smallest float16 value >= ``scale`` (as float32), so codes never fall short of the range."""
    s16 = scale.to(torch.float16)
    low = s16.float() < scale
    s16 = torch.where(low, torch.nextafter(s16, torch.full_like(s16, math.inf)), s16)
    return s16.float()


def _params_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    qmax = (1 << bits) - 1
    if symmetric:
        half = 1 << (bits - 1)
        scale = torch.maximum(hi.abs(), lo.abs()) / (half - 1 if bits > 1 else 1)
        scale = _round_up_fp16(torch.where(scale > 0, scale, torch.ones_like(scale)))
        return scale, torch.full_like(scale, float(half))
    lo, hi = (
        torch.clamp(lo, max=0.0),
        torch.clamp(hi, min=0.0),
    )  # 0.0 must be representable (zero point is uint8)
    scale = (hi - lo) / qmax
    scale = _round_up_fp16(torch.where(scale > 0, scale, torch.ones_like(scale)))
    zero = torch.clamp(torch.round(-lo / scale), 0, qmax)
    return scale, zero


def quantize_codes(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes ``clamp(round(w / scale) + zero, 0, 2**bits - 1)`` as float32 (``scale``/``zero`` broadcast)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, (1 << bits) - 1)


def compute_qparams(
    w: torch.Tensor, bits: int, *, symmetric: bool = False, clip: str = "minmax"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float16-exact float32) and zero point (float) for each row of ``w`` ``[..., n]``.

    ``clip="mse"`` grid-searches a shrink ratio of the range per row that minimises the squared reconstruction
    error (ratio 1.0, the min-max choice, is always a candidate, so it is never worse than min-max).
    """
    w = w.float()
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    scale, zero = _params_from_range(lo, hi, bits, symmetric)
    if clip == "minmax":
        return scale, zero
    if clip != "mse":
        raise QuantOptionError(f"clip={clip!r} is not supported; use 'minmax' or 'mse'")
    best_err = torch.full_like(scale, math.inf)
    best_scale, best_zero = scale, zero
    for i in range(_MSE_GRID):
        ratio = 1.0 - _MSE_MAX_SHRINK * i / _MSE_GRID
        s, z = _params_from_range(lo * ratio, hi * ratio, bits, symmetric)
        deq = (quantize_codes(w, s[..., None], z[..., None], bits) - z[..., None]) * s[..., None]
        err = (deq - w).pow(2).sum(dim=-1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, s, best_scale)
        best_zero = torch.where(better, z, best_zero)
    return best_scale, best_zero


def _as_rows(w: torch.Tensor, axis: int) -> torch.Tensor:
    return w.movedim(axis, -1).reshape(-1, w.shape[axis])


def quantize(
    w: torch.Tensor,
    bits: int,
    group_size: int = 0,
    *,
    symmetric: bool = False,
    clip: str = "minmax",
    axis: int = -1,
    name: str = "tensor",
) -> QuantizedTensor:
    """Quantize ``w`` with round-to-nearest into a :class:`QuantizedTensor`.

    ``bits`` is 8, 4 or 2; ``group_size`` 0 (per output channel: one scale per row), 32, 64 or 128 elements
    along ``axis`` (default: the last dimension, the input dimension of a Linear weight). ``name`` is used in
    error messages.
    """
    _check_bits_group(bits, group_size, name)
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise QuantShapeError(
            f"{name}: only floating-point tensors can be quantized, got {type(w).__name__}"
            f"{'' if not isinstance(w, torch.Tensor) else ' of ' + str(w.dtype)}"
        )
    if w.dim() == 0 or w.numel() == 0:
        raise QuantShapeError(f"{name}: cannot quantize an empty or 0-d tensor of shape {list(w.shape)}")
    if not -w.dim() <= axis < w.dim():
        raise QuantShapeError(f"{name}: axis={axis} is out of range for shape {list(w.shape)}")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise NonFiniteWeightError(f"{name}: {bad} NaN/Inf values; fix or drop the tensor before quantizing")
    rows = _as_rows(w.float(), axis)
    k = rows.shape[1]
    glen = group_size or k
    groups = -(-k // glen)
    pad = groups * glen - k
    if pad:  # zeros never widen a range that already includes 0.0, so padding changes no scale
        rows = torch.nn.functional.pad(rows, (0, pad))
    g = rows.view(rows.shape[0], groups, glen)
    scale, zero = compute_qparams(g, bits, symmetric=symmetric, clip=clip)
    codes = quantize_codes(g, scale[..., None], zero[..., None], bits).to(torch.uint8)
    return QuantizedTensor(
        packed=pack(codes.view(rows.shape[0], -1), bits),
        scales=scale.to(torch.float16),
        zero_points=zero.to(torch.uint8),
        bits=bits,
        group_size=group_size,
        shape=tuple(w.shape),
        axis=axis,
        symmetric=symmetric,
        name=name,
    )


def dequantize(qt: QuantizedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Float tensor of ``qt.shape``: ``scale * (code - zero_point)``, padding dropped, ``axis`` restored."""
    rows, groups, glen = qt.rows, qt.num_groups, qt.group_len
    codes = qt.codes().view(rows, groups, glen)
    # compute in float32: float16/bfloat16 products would add rounding on top of the quantization error
    w = (codes.float() - qt.zero_points.float()[..., None]) * qt.scales.float()[..., None]
    w = w.view(rows, groups * glen)[:, : qt.k]
    moved = [s for i, s in enumerate(qt.shape) if i != qt.axis] + [qt.k]
    return w.reshape(moved).movedim(-1, qt.axis).to(dtype)
