"""GGUF quantized blocks kept as llama.cpp stores them: Q8_0, Q4_0 and Q4_1 (schema V3 ``gguf_*`` rows).

A :class:`GGUFBlocks` is a weight matrix ``[rows, k]`` held as ``rows`` runs of ``k / 32`` blocks, byte for byte
the GGUF tensor's (each block's float16 scale, and Q4_1's float16 min, keep their exact bits):

============  ===========  ==========================================  =======================
quant_type    block bytes  layout                                      value of element i
============  ===========  ==========================================  =======================
gguf_q8_0     34           fp16 d, 32 x int8 q                         q[i] * d
gguf_q4_0     18           fp16 d, 16 bytes (low nibble i, high i+16)  (q[i] - 8) * d
gguf_q4_1     20           fp16 d, fp16 m, 16 bytes (as Q4_0)          q[i] * d + m
============  ===========  ==========================================  =======================

:meth:`GGUFBlocks.dequantize` rounds exactly as ``gguf.quants.dequantize`` (one float32 rounding per product
and per sum), so the two agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from quant.errors import QuantModeError, QuantShapeError

__all__ = ["BLOCK_SIZE", "GGUF_TYPES", "GGUFBlocks", "GGUFType", "gguf_type", "quantize_q8_0"]

BLOCK_SIZE = 32  # elements per block for every type here


@dataclass(frozen=True)
class GGUFType:
    """One GGUF block type: our ``quant_type`` name, llama.cpp's type id and name, bytes per block, bits."""

    quant_type: str
    ggml_type: int
    ggml_name: str
    block_bytes: int
    bits: int


GGUF_TYPES = {
    t.quant_type: t for t in (
        GGUFType("gguf_q8_0", 8, "Q8_0", 34, 8),
        GGUFType("gguf_q4_0", 2, "Q4_0", 18, 4),
        GGUFType("gguf_q4_1", 3, "Q4_1", 20, 4),
    )
}
_BY_GGML_NAME = {t.ggml_name: t for t in GGUF_TYPES.values()}


def gguf_type(name: str) -> GGUFType | None:
    """The block type for a ``quant_type`` (``gguf_q4_1``) or llama.cpp name (``Q4_1``); None if not kept."""
    return GGUF_TYPES.get(name) or _BY_GGML_NAME.get(name)


@dataclass(frozen=True)
class GGUFBlocks:
    """A ``[rows, k]`` weight matrix as GGUF blocks: ``data`` is uint8 ``[rows, k / 32 * block_bytes]``."""

    quant_type: str
    shape: tuple[int, int]
    data: torch.Tensor

    def __post_init__(self) -> None:
        kind = GGUF_TYPES.get(self.quant_type)
        if kind is None:
            raise QuantModeError(f"quant_type {self.quant_type!r} is not a GGUF block type; use one of "
                             f"{sorted(GGUF_TYPES)}")
        rows, k = self.shape
        if k % BLOCK_SIZE:
            raise QuantShapeError(f"a GGUF block row holds a multiple of {BLOCK_SIZE} elements, not {k}")
        expect = (rows, k // BLOCK_SIZE * kind.block_bytes)
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != expect:
            raise QuantShapeError(f"{self.quant_type} blocks of shape {list(self.shape)} are uint8 {list(expect)}, got "
                             f"{self.data.dtype} {list(self.data.shape)}")

    @property
    def kind(self) -> GGUFType:
        """The block type."""
        return GGUF_TYPES[self.quant_type]

    @property
    def bits(self) -> int:
        """Bits per code."""
        return self.kind.bits

    @property
    def nbytes(self) -> int:
        """Bytes of the blocks."""
        return self.data.numel()

    def select_rows(self, index: torch.Tensor) -> GGUFBlocks:
        """The blocks of rows ``index`` (a permutation or gather of whole rows: lossless)."""
        data = self.data[index]
        return GGUFBlocks(self.quant_type, (int(data.shape[0]), self.shape[1]), data)

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """float32 ``[rows, k]`` (or only the ``rows`` asked for), bit-identical to ``gguf.quants.dequantize``."""
        data = self.data if rows is None else self.data[rows]
        kind = self.kind
        blocks = data.reshape(-1, kind.block_bytes)
        d = blocks[:, :2].contiguous().view(torch.float16).float()
        if kind.ggml_name == "Q8_0":
            values = blocks[:, 2:].contiguous().view(torch.int8).float() * d
        else:
            qs = blocks[:, kind.block_bytes - 16:]
            codes = torch.cat([qs & 0x0F, qs >> 4], dim=1)
            if kind.ggml_name == "Q4_0":
                values = d * (codes.to(torch.int8) - 8).float()
            else:
                m = blocks[:, 2:4].contiguous().view(torch.float16).float()
                values = d * codes.float() + m
        return values.reshape(data.shape[0], self.shape[1])


def quantize_q8_0(weight: torch.Tensor, *, name: str = "weight") -> GGUFBlocks:
    """Q8_0 blocks of a float matrix ``[rows, k]`` (``k`` a multiple of 32), byte for byte what llama.cpp's
    reference quantizer and ``gguf.quants.quantize`` make: per block ``d = amax / 127``, codes
    ``roundf(x / d)`` (half away from zero) computed in float32, ``d`` stored as float16.

    Raises:
        QuantShapeError: ``weight`` is not 2-D with a multiple of 32 columns.
    """
    if weight.dim() != 2 or weight.shape[1] % BLOCK_SIZE:
        raise QuantShapeError(f"{name}: Q8_0 quantizes a 2-D matrix whose rows hold a multiple of {BLOCK_SIZE} "
                              f"elements, got shape {list(weight.shape)}")
    rows, k = weight.shape
    x = weight.detach().float().reshape(rows, k // BLOCK_SIZE, BLOCK_SIZE)
    d = x.abs().amax(dim=-1, keepdim=True) / 127
    inverse = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = x * inverse
    codes = (torch.sign(scaled) * torch.floor(scaled.abs() + 0.5)).to(torch.int8)
    data = torch.cat([d.to(torch.float16).view(torch.uint8), codes.view(torch.uint8)], dim=-1)
    return GGUFBlocks("gguf_q8_0", (rows, k), data.reshape(rows, -1).contiguous())
