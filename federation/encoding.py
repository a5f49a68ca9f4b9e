"""Encodings of one delta tensor: dense fp32 / fp16, int8 with a per-tensor scale, sparse, top-k sparse + int8.

``EncodedTensor`` is the unit a delta is made of and the payload of one wire row (``federation.wire``).
Lossless: ``dense`` (the fp32 values) and ``sparse`` (the exact non-zero values and their positions). Lossy:
``fp16``; ``int8`` (symmetric, one float16 scale per tensor, quantized by :func:`quant.quantize`); ``topk_int8``
(the largest ``density`` fraction by magnitude, int8 with one scale). Positions are gap-coded: the first is
the index itself, each next the distance from the one before, as uint16 when every gap fits, else uint32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from federation.errors import DeltaError

__all__ = ["LOSSLESS_METHODS", "METHODS", "VALUE_DTYPES", "EncodedTensor", "decode_tensor", "encode_tensor"]

METHODS = ("dense", "sparse", "fp16", "int8", "topk_int8")
LOSSLESS_METHODS = ("dense", "sparse")
VALUE_DTYPES = {"dense": np.float32, "sparse": np.float32, "fp16": np.float16, "int8": np.uint8,
                 "topk_int8": np.uint8}
_INT8_ZERO = 128  # quant's symmetric 8-bit zero point: code - 128 is the signed value


@dataclass(frozen=True)
class EncodedTensor:
    """One encoded delta tensor. ``values`` and ``indices`` are flat numpy arrays (``indices`` gap-coded,
    empty for the dense methods); ``scale`` is the int8 step (float16-exact), 0 for the float methods."""

    method: str
    shape: tuple[int, ...]
    values: np.ndarray
    indices: np.ndarray
    scale: float = 0.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DeltaError(f"unknown delta encoding {self.method!r}; use one of {list(METHODS)}")
        numel = math.prod(self.shape)
        expected = VALUE_DTYPES[self.method]
        if self.values.dtype != expected or self.values.ndim != 1:
            raise DeltaError(f"{self.method} values must be flat {np.dtype(expected).name}, got "
                             f"{self.values.dtype} {list(self.values.shape)}")
        sparse = self.method in ("sparse", "topk_int8")
        if not sparse and (self.values.size != numel or self.indices.size):
            raise DeltaError(f"{self.method} needs {numel} values for shape {list(self.shape)} and no positions, "
                             f"got {self.values.size} values and {self.indices.size} positions")
        if sparse and (self.indices.size != self.values.size or self.indices.dtype not in (np.uint16, np.uint32)):
            raise DeltaError(f"{self.method}: {self.values.size} values need as many uint16/uint32 positions, got "
                             f"{self.indices.size} {self.indices.dtype}")
        if not math.isfinite(self.scale) or self.scale < 0:
            raise DeltaError(f"{self.method}: the int8 scale {self.scale} is not a finite non-negative number")

    @property
    def nbytes(self) -> int:
        """Payload bytes (values and positions; the scale and shape are a few bytes of row metadata)."""
        return int(self.values.nbytes + self.indices.nbytes)

    def positions(self) -> np.ndarray:
        """Flat int64 positions of a sparse encoding (decoded gaps), checked to lie inside the tensor."""
        pos = np.cumsum(self.indices.astype(np.int64))
        if pos.size and (pos[-1] >= math.prod(self.shape) or (pos.size > 1 and (np.diff(pos) <= 0).any())):
            raise DeltaError(f"{self.method}: positions are not strictly increasing inside shape {list(self.shape)}")
        return pos


def _gaps(positions: np.ndarray) -> np.ndarray:
    gaps = np.diff(positions.astype(np.int64), prepend=0)  # the first gap is the first position itself
    return gaps.astype(np.uint16 if not gaps.size or gaps.max() <= np.iinfo(np.uint16).max else np.uint32)


def _dequantize_int8(codes: np.ndarray, scale: float) -> torch.Tensor:
    from quant import QuantizedTensor, dequantize

    n = codes.size
    qt = QuantizedTensor(torch.from_numpy(codes).reshape(1, n), torch.tensor([[scale]], dtype=torch.float16),
                         torch.full((1, 1), _INT8_ZERO, dtype=torch.uint8), 8, 0, (1, n), symmetric=True)
    return dequantize(qt).reshape(-1)


def _int8(values: torch.Tensor, name: str) -> tuple[np.ndarray, float]:
    from quant import quantize

    if values.numel() == 0:
        return np.empty(0, np.uint8), 0.0
    qt = quantize(values.reshape(1, -1), 8, 0, symmetric=True, name=name)  # one row: one scale per tensor
    return qt.packed.reshape(-1).numpy().copy(), float(qt.scales.reshape(-1)[0])


def encode_tensor(delta: torch.Tensor, method: str, *, density: float = 0.05, name: str = "delta") -> EncodedTensor:
    """Encode float tensor ``delta`` with ``method`` (``topk_int8`` keeps ``ceil(density * numel)`` entries)."""
    flat = delta.detach().float().reshape(-1).contiguous()
    shape = tuple(int(s) for s in delta.shape)
    if not bool(torch.isfinite(flat).all()):
        raise DeltaError(f"delta of {name!r} holds {int((~torch.isfinite(flat)).sum())} NaN/Inf values; "
                         f"nothing was encoded: check the training step that produced it")
    empty = np.empty(0, np.uint16)
    if method == "dense":
        return EncodedTensor(method, shape, flat.numpy().copy(), empty)
    if method == "fp16":
        return EncodedTensor(method, shape, flat.half().numpy(), empty)
    if method == "int8":
        codes, scale = _int8(flat, name)
        return EncodedTensor(method, shape, codes, empty, scale)
    if method == "sparse":
        positions = torch.nonzero(flat).reshape(-1)
        return EncodedTensor(method, shape, flat[positions].numpy().copy(), _gaps(positions.numpy()))
    if method == "topk_int8":
        if not 0 < density <= 1:
            raise DeltaError(f"density must be in (0, 1], got {density}")
        k = min(flat.numel(), math.ceil(density * flat.numel()))
        positions = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
        codes, scale = _int8(flat[positions], name)
        return EncodedTensor(method, shape, codes, _gaps(positions.numpy()), scale)
    raise DeltaError(f"unknown delta encoding {method!r}; use one of {list(METHODS)} or 'auto'")


def decode_tensor(encoded: EncodedTensor) -> torch.Tensor:
    """The float32 delta an encoding stands for (exactly the sender's values for the lossless methods)."""
    numel = math.prod(encoded.shape)
    method = encoded.method
    if method in ("dense", "fp16"):
        return torch.from_numpy(encoded.values.astype(np.float32)).reshape(encoded.shape)
    if method == "int8":
        return _dequantize_int8(encoded.values, encoded.scale).reshape(encoded.shape)
    out = torch.zeros(numel, dtype=torch.float32)
    positions = torch.from_numpy(encoded.positions())
    if method == "sparse":
        out[positions] = torch.from_numpy(encoded.values)
    else:
        out[positions] = _dequantize_int8(encoded.values, encoded.scale) if positions.numel() else 0.0
    return out.reshape(encoded.shape)
