"""Weights of the LLM forward: dtype, fused projections and weight-only int8 / int4 matmuls, prepared once at load.

A ``Projection`` is ``y = x W^T (+ b)`` over one of three layouts:

* ``dense``: a float tensor (a view of the mapped model for fp32, else one cast copy), ``F.linear``;
* ``int8``: symmetric int8 per output channel packed by :class:`quant.kernels.Int8Weight` (``weight_only``
  back-end), run through ``torch._weight_int8pack_mm`` with bf16 activations: half the bytes of bf16;
* ``int4``: RTN int4 per group of ``group_size`` input elements (asymmetric, :func:`quant.rtn.quantize`), run
  through ``torch._weight_int4pack_mm_for_cpu`` with bf16 activations: a quarter of the bytes of bf16;
* ``gguf``: a model file's own GGUF blocks (:class:`quant.gguf.GGUFBlocks`, read in place from the mapping) run
  by the native block kernels (:mod:`arrowengine.runtime.native.gguf`) with fp32 activations; where those
  cannot run, the blocks are dequantized once to fp32 (``dense``).

Both integer kernels are several times slower with fp32 activations than with bf16 ones at decode shapes, so
quantized weights always run bf16 activations (figures: ``docs/benchmarks/design_figures.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arrowengine.runtime.llm.errors import UnsupportedModelError

__all__ = ["WEIGHT_QUANTS", "Projection", "WeightOptions"]

logger = logging.getLogger(__name__)

WEIGHT_QUANTS = ("int8", "int4")  # what a float model can be packed to; "gguf" runs a model's own GGUF blocks
_INT4_GROUPS = (32, 64, 128, 256)


@dataclass(frozen=True)
class WeightOptions:
    """How the LLM holds its weights.

    ``dtype``: activation (and dense weight) dtype. ``fuse``: concatenate Q/K/V and gate/up into one matrix
    each (None: fuse whenever the weights are copied anyway). ``weight_quant``: None, ``"int8"`` or ``"int4"``
    (weight-only, bf16 activations). ``group_size``: int4 group length along the input dimension.
    ``quantize_lm_head``: also quantize the (often tied) lm_head, the largest single matrix.
    """

    dtype: torch.dtype = torch.float32
    fuse: bool | None = None
    weight_quant: str | None = None
    group_size: int = 32
    quantize_lm_head: bool = True

    def __post_init__(self) -> None:
        if self.weight_quant not in (None, "gguf", *WEIGHT_QUANTS):
            raise UnsupportedModelError(
                f"weight_quant={self.weight_quant!r} is not supported; use None or one of {list(WEIGHT_QUANTS)}")
        if self.weight_quant == "gguf" and self.dtype != torch.float32:
            raise UnsupportedModelError("weight_quant='gguf' runs float32 activations; pass dtype='float32'")
        if self.weight_quant not in (None, "gguf") and self.dtype != torch.bfloat16:
            raise UnsupportedModelError(
                f"weight_quant={self.weight_quant!r} runs bfloat16 activations (its fp32-activation kernels are "
                f"6x-30x slower); pass dtype='bfloat16' or leave dtype unset")
        if self.weight_quant == "int4" and self.group_size not in _INT4_GROUPS:
            raise UnsupportedModelError(
                f"int4 group_size={self.group_size} is not supported; use one of {list(_INT4_GROUPS)}")


class Projection:
    """``y = x W^T + b`` for any leading shape of ``x``, over a dense, int8 or int4 weight."""

    __slots__ = ("bias", "blocks", "data", "group_size", "in_features", "kernel", "kind", "low_rank", "nbytes",
                 "out_features", "pad", "scales", "weight")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, *, dtype: torch.dtype,
                 quant: str | None = None, group_size: int = 32, name: str = "") -> None:
        self.out_features, self.in_features = weight.shape
        self.bias = None if bias is None else bias.detach().to(dtype)
        self.blocks: Any = None
        self.kernel: Any = None
        # (adapter key, module) -> (down [r, in], up [rows, r], output rows): added to y, weights untouched (LoRA)
        self.low_rank: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor, slice]] = {}
        if not isinstance(weight, torch.Tensor):  # GGUF blocks
            self._take_blocks(weight, dtype, name)
            return
        self.weight: torch.Tensor | None = None
        self.data: torch.Tensor | None = None
        self.scales: torch.Tensor | None = None
        self.group_size, self.pad = group_size, 0
        if quant == "gguf":  # a float tensor next to blocks (an F32 / F16 GGUF tensor): plain dense
            quant = None
        if quant == "int4" and self.in_features % group_size:
            logger.info("LLM: %s has %d inputs, not a multiple of group %d: kept int8", name, self.in_features,
                        group_size)
            quant = "int8"
        self.kind = quant or "dense"
        if quant is None:
            self.weight = weight.detach().to(dtype)
            self.nbytes = self.weight.numel() * self.weight.element_size()
        elif quant == "int8":
            self._pack_int8(weight.detach(), dtype)
        else:
            self._pack_int4(weight.detach(), dtype, name)

    def _take_blocks(self, blocks: Any, dtype: torch.dtype, name: str) -> None:
        from arrowengine.runtime.native.gguf import block_kernels

        self.weight = self.data = self.scales = None
        self.group_size, self.pad = 32, 0
        self.kernel = block_kernels() if dtype == torch.float32 else None
        if self.kernel is None:
            self.kind = "dense"  # the kernels cannot run here (logged once): dequantize once, exactly
            self.weight = blocks.dequantize().to(dtype)
            self.nbytes = self.weight.numel() * self.weight.element_size()
            return
        self.kind, self.blocks = "gguf", blocks
        self.nbytes = blocks.nbytes

    def _pack_int8(self, weight: torch.Tensor, dtype: torch.dtype) -> None:
        from quant.kernels import Int8Weight

        w = weight.float()
        # the kernel reads the scales in the activation dtype: quantize against that rounded scale, nudged up
        # so amax still fits in 127 codes (else bf16 rounding of the scale alone adds up to 0.25 steps of error)
        scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        scale = (scale * (1 + 2**-7)).to(dtype).float() if dtype != torch.float32 else scale
        wq = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
        packed = Int8Weight(wq, scale, None, "weight_only")  # pads in_features to a multiple of 8 (a torch quirk)
        self.data, self.pad = packed.data, packed.pad
        self.scales = packed.wscale.to(dtype)
        self.nbytes = self.data.numel() + self.scales.numel() * self.scales.element_size()

    def _pack_int4(self, weight: torch.Tensor, dtype: torch.dtype, name: str) -> None:
        from quant.rtn import quantize

        qt = quantize(weight.float(), 4, self.group_size, symmetric=False, name=name)
        codes = qt.codes().view(qt.rows, -1)[:, :self.in_features]
        scale = qt.scales.float().view(qt.rows, -1)
        # the kernel dequantizes (q - 8) * s + z; RTN's (q - zp) * s is that with z = (8 - zp) * s
        zero = (8.0 - qt.zero_points.float().view(qt.rows, -1)) * scale
        self.data = torch._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
        self.scales = torch.stack([scale.t(), zero.t()], dim=-1).to(dtype).contiguous()
        self.nbytes = self.data.numel() + self.scales.numel() * self.scales.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the projection to ``x [..., in_features]`` (plus its low-rank terms, if any)."""
        if self.kind == "dense":
            y = F.linear(x, self.weight, self.bias)
        else:
            y = self._packed_matmul(x.reshape(-1, self.in_features))
            if self.bias is not None:
                y = y + self.bias
            y = y.view(*x.shape[:-1], self.out_features)
        for down, up, rows in self.low_rank.values():
            y[..., rows] += F.linear(F.linear(x, down), up)
        return y

    def _packed_matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        if self.kind == "gguf":
            return self.blocks_matmul(x2d)
        if self.kind == "int8":
            if self.pad:
                x2d = F.pad(x2d, (0, self.pad))
            return torch._weight_int8pack_mm(x2d.contiguous(), self.data, self.scales)
        return torch._weight_int4pack_mm_for_cpu(x2d.contiguous(), self.data, self.group_size, self.scales)

    def blocks_matmul(self, x2d: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``x2d [M, in] @ W^T`` over the GGUF blocks through the native kernel (fp32 in and out)."""
        from arrowengine.runtime.native.gguf import blocks_matmul

        return blocks_matmul(self.kernel, self.blocks, x2d, out)

    def dense_weight(self) -> torch.Tensor:
        """The float32 weight this projection computes with (exactly dequantized for int8 / int4; for tests)."""
        if self.kind == "dense":
            return self.weight.float()
        if self.kind == "gguf":
            return self.blocks.dequantize()
        if self.kind == "int8":
            return self.data[:, :self.in_features].float() * self.scales.float()[:, None]
        eye = torch.eye(self.in_features)
        return torch._weight_int4pack_mm_for_cpu(eye, self.data, self.group_size, self.scales.float()).t().contiguous()


def fused(parts: list[Any]) -> Any:
    """One matrix whose output rows are ``parts`` stacked (one copy); GGUF blocks of one type stack as blocks."""
    if not isinstance(parts[0], torch.Tensor):
        from quant.gguf import GGUFBlocks

        data = torch.cat([p.data for p in parts], dim=0)
        return GGUFBlocks(parts[0].quant_type, (int(data.shape[0]), parts[0].shape[1]), data)
    return torch.cat([p.detach() for p in parts], dim=0)


def can_fuse(parts: list[Any]) -> bool:
    """True when ``parts`` stack into one matrix: all float tensors, or GGUF blocks of one type."""
    kinds = {p.quant_type if not isinstance(p, torch.Tensor) else "tensor" for p in parts}
    return len(kinds) == 1
