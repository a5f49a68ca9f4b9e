"""``BlockLinear``: an ``nn.Linear`` whose weight stays GGUF blocks (schema V3 ``gguf_*`` rows) in the file mapping.

``load_model`` builds one for every Linear stored as blocks (an INT8 encoder from ``arrowengine quantize --bits 8``
holds Q8_0 blocks; a GGUF import holds Q8_0 / Q4_0 / Q4_1), so a quantized encoder keeps a quarter of its
float32 bytes in memory instead of a dequantized float copy. The forward runs the native block kernel
(:mod:`arrowengine.runtime.native.gguf`) on inputs of at most ``kernel_max_rows`` rows and a float GEMM over a
transient dequantized weight above that (the kernel unpacks each weight block once per 8 rows of x, where a float
GEMM reuses one dequantized weight across all rows); without the kernels the blocks are dequantized by torch
(logged once by the kernel probe). The lean forwards (:class:`arrowengine.runtime.bert_fast.FastBert`) read
:attr:`blocks` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from quant.gguf import GGUFBlocks

__all__ = ["KERNEL_MAX_ROWS", "BlockLinear", "blocks_linear"]

# rows up to which the block kernel beats dequantize + float GEMM: about 120 on MiniLM's four shapes since the kernel
# unpacks a weight block once per 8 rows (at 64 rows 0.86x the float path's time, at 128 1.04x, at 256 1.21x;
# AVX2-only EPYC, session 10); 40-60 when it unpacked once per pair of rows
KERNEL_MAX_ROWS = 128


def blocks_linear(x2d: torch.Tensor, parts: Sequence[GGUFBlocks], bias: torch.Tensor | None = None, *,
                  kernels: Any = "probe", kernel_max_rows: int = KERNEL_MAX_ROWS) -> torch.Tensor:
    """``x2d [M, k] @ W^T + b`` float32 ``[M, sum(n)]`` where ``W`` is the row-wise concatenation of ``parts``
    (e.g. Q, K and V of one layer), without ever concatenating the blocks: each part writes its own columns.
    ``kernels``: the native kernels (``"probe"`` asks :func:`block_kernels`; None runs torch's dequantization)."""
    from arrowengine.runtime.native.gguf import block_kernels, blocks_dequantize, blocks_matmul

    if isinstance(kernels, str):
        kernels = block_kernels()
    x2d = x2d.float()
    widths = [part.shape[0] for part in parts]
    if kernels is not None and x2d.shape[0] <= kernel_max_rows:
        out = torch.empty(x2d.shape[0], sum(widths))
        start = 0
        for part, width in zip(parts, widths, strict=True):
            blocks_matmul(kernels, part, x2d, out=out[:, start : start + width])
            start += width
        return out.add_(bias) if bias is not None else out
    weight = torch.empty(sum(widths), parts[0].shape[1])
    start = 0
    for part, width in zip(parts, widths, strict=True):
        if kernels is not None:
            blocks_dequantize(kernels, part, out=weight[start : start + width])
        else:
            weight[start : start + width] = part.dequantize()
        start += width
    return F.linear(x2d.contiguous(), weight, bias)


class BlockLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as :class:`quant.gguf.GGUFBlocks` (zero-copy when they come from a
    mapped file; registered as the buffer ``blocks_data``).

    Args:
        blocks: the weight ``[out_features, in_features]`` as GGUF blocks.
        bias: ``[out_features]`` or None.
        name: the module path, for messages.
    """

    def __init__(self, blocks: GGUFBlocks, bias: torch.Tensor | None = None, *, name: str = "") -> None:
        super().__init__()
        self.out_features, self.in_features = blocks.shape
        self.quant_type, self.name = blocks.quant_type, name
        self.register_buffer("blocks_data", blocks.data)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    @property
    def blocks(self) -> GGUFBlocks:
        """The weight's blocks (over the registered buffer, so ``.to()`` moves them)."""
        return GGUFBlocks(self.quant_type, (self.out_features, self.in_features), self.blocks_data)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weight as a new float tensor ``[out_features, in_features]`` (exact)."""
        return self.blocks.dequantize().to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., in_features]`` -> ``[..., out_features]`` in ``x.dtype`` (computed in float32)."""
        if self.blocks_data.device.type != "cpu":  # the kernels are CPU code: a moved module runs dequantized
            return F.linear(x, self.dequantized_weight(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        flat = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.float()
        y = blocks_linear(flat, [self.blocks], bias)
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.quant_type}"
