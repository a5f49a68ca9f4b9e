"""Encodings of one delta tensor: dense fp32 / fp16, int8 with a per-tensor scale, sparse, top-k sparse + int8.

``EncodedTensor`` is the unit a delta is made of and the payload of one wire row (``federation.wire``).
Lossless: ``dense`` (the fp32 values) and ``sparse`` (the exact non-zero values and their positions). Lossy:
``fp16``; ``int8`` / ``int4`` (symmetric, one float16 scale per tensor, quantized and packed by
:func:`quant.quantize`: int4 holds two codes per byte in quant's bit order); ``topk_int8``
(the largest ``density`` fraction by magnitude, int8 with one scale); ``sign1`` (one bit per value, the sign,
times one scale: the mean magnitude, as in error-feedback signSGD). Positions are gap-coded: the first is
the index itself, each next the distance from the one before, as uint16 when every gap fits, else uint32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from federation.errors import DeltaError

__all__ = ["LOSSLESS_METHODS", "METHODS", "VALUE_DTYPES", "EncodedTensor", "decode_tensor", "encode_tensor"]

METHODS = ("dense", "sparse", "fp16", "int8", "int4", "sign1", "topk_int8")
LOSSLESS_METHODS = ("dense", "sparse")
VALUE_DTYPES = {"dense": np.float32, "sparse": np.float32, "fp16": np.float16, "int8": np.uint8,
                 "int4": np.uint8, "sign1": np.uint8, "topk_int8": np.uint8}
_BITS = {"int8": 8, "int4": 4, "topk_int8": 8}


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
        if self.method in ("int4", "sign1"):
            numel = -(-numel // (2 if self.method == "int4" else 8))  # codes per byte
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


def _dequantize(packed: np.ndarray, scale: float, numel: int, bits: int) -> torch.Tensor:
    from quant import QuantizedTensor, dequantize

    zero = torch.full((1, 1), 2 ** (bits - 1), dtype=torch.uint8)  # quant's symmetric zero point
    qt = QuantizedTensor(torch.from_numpy(packed).reshape(1, -1), torch.tensor([[scale]], dtype=torch.float16),
                         zero, bits, 0, (1, numel), symmetric=True)
    return dequantize(qt).reshape(-1)


def _quantize(values: torch.Tensor, bits: int, name: str) -> tuple[np.ndarray, float]:
    from quant import quantize

    if values.numel() == 0:
        return np.empty(0, np.uint8), 0.0
    qt = quantize(values.reshape(1, -1), bits, 0, symmetric=True, name=name)  # one row: one scale per tensor
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
    if method in ("int8", "int4"):
        codes, scale = _quantize(flat, _BITS[method], name)
        return EncodedTensor(method, shape, codes, empty, scale)
    if method == "sign1":
        scale = float(torch.tensor(float(flat.abs().mean()) if flat.numel() else 0.0).half())
        signs = np.packbits(flat.numpy() >= 0, bitorder="little")  # bit i of byte j: value 8j+i is >= 0
        return EncodedTensor(method, shape, signs, empty, scale)
    if method == "sparse":
        positions = torch.nonzero(flat.view(torch.int32)).reshape(-1)  # by bits: -0.0 is kept, so exact
        return EncodedTensor(method, shape, flat[positions].numpy().copy(), _gaps(positions.numpy()))
    if method == "topk_int8":
        if not 0 < density <= 1:
            raise DeltaError(f"density must be in (0, 1], got {density}")
        k = min(flat.numel(), math.ceil(density * flat.numel()))
        positions = torch.sort(torch.topk(flat.abs(), k, sorted=False).indices).values
        codes, scale = _quantize(flat[positions], 8, name)
        return EncodedTensor(method, shape, codes, _gaps(positions.numpy()), scale)
    raise DeltaError(f"unknown delta encoding {method!r}; use one of {list(METHODS)} or 'auto'")


def decode_tensor(encoded: EncodedTensor) -> torch.Tensor:
    """The float32 delta an encoding stands for (exactly the sender's values for the lossless methods)."""
    numel = math.prod(encoded.shape)
    method = encoded.method
    if method in ("dense", "fp16"):
        return torch.from_numpy(encoded.values.astype(np.float32)).reshape(encoded.shape)
    if method in ("int8", "int4"):
        return _dequantize(encoded.values, encoded.scale, numel, _BITS[method]).reshape(encoded.shape)
    if method == "sign1":
        signs = np.unpackbits(encoded.values, count=numel, bitorder="little").astype(np.float32)
        return torch.from_numpy(signs * 2 - 1).mul_(encoded.scale).reshape(encoded.shape)
    out = torch.zeros(numel, dtype=torch.float32)
    positions = torch.from_numpy(encoded.positions())
    if method == "sparse":
        out[positions] = torch.from_numpy(encoded.values)
    else:
        out[positions] = _dequantize(encoded.values, encoded.scale, positions.numel(), 8) if positions.numel() else 0.0
    return out.reshape(encoded.shape)
