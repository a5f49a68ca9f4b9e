"""Fixed-precision projections shared by the lean encoder forwards (:mod:`bert_fast`, :mod:`whisper_fast`).

A :class:`FixedLinear` holds one ``nn.Linear``'s (or ``QuantLinear``'s) weight in ``float32``, ``bfloat16``,
``int8``, ``int8-tensor`` or ``q8_0`` and computes ``act(x W^T + b) + residual`` on 2-D activations:

* ``bfloat16`` runs oneDNN's fused linear on a prepacked weight (bias, GELU or the residual add in the epilogue);
* ``int8`` quantizes the activation per token (row) at run time and multiplies through ``torch._int_mm`` (VNNI
  on x86);
* ``int8-tensor`` quantizes the activation per tensor (asymmetric uint8, one scale and zero point) and runs
  oneDNN's quantized linear with the dequantization, bias and GELU fused, bf16 out: fewer passes over the
  activations than ``int8``, for inputs without per-token outliers (LayerNorm outputs after SmoothQuant);
* ``q8_0`` keeps the weight as llama.cpp's Q8_0 blocks (int8 codes, one float16 scale per 32 inputs: 8.5 bits a
  weight, a quarter of float32) and multiplies through the native block kernel
  (:mod:`arrowengine.runtime.native.gguf`: AVX2 integer dot products with each activation row quantized to int16
  per block), float32 in and out. Weight-only quantization: it needs no calibration and no VNNI. The kernel
  reads the weight once per pair of rows, so it wins at few rows (a query: 0.7-0.84x the time of float32 at 16
  rows on an AVX2-only EPYC) and loses at many (1.2-1.7x at 64-1024 rows, measured); above
  ``kernel_max_rows`` the blocks are dequantized into a scratch float32 weight (about 2% of the matmul's time)
  and the float GEMM runs, so a batch is as fast as float32 and only the blocks stay resident.

An optional SmoothQuant vector, calibrated on real inputs, moves activation outliers into the weight first
(:func:`smooth_scales` computes it); the caller may fold its inverse into the op that produces the input (a
LayerNorm's affine) instead of paying a multiply per call (``input_smoothed=True``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from arrowengine.errors import ConfigError, DeviceUnavailableError
from arrowengine.hardware import cpu_info
from arrowengine.runtime.block_linear import KERNEL_MAX_ROWS, blocks_linear
from quant.gguf import GGUFBlocks

__all__ = ["LINEAR_ACTIVATIONS", "LINEAR_KINDS", "FixedLinear", "calibrated_smooth_scales", "float_weight",
           "fused_bias", "fused_weight", "input_channel_amax", "onednn_int8_available", "smooth_scales"]

LINEAR_KINDS = ("float32", "bfloat16", "int8", "int8-tensor", "q8_0")
LINEAR_ACTIVATIONS = (None, "gelu", "gelu_tanh")


def _onednn_bf16() -> bool:
    """Whether oneDNN's fused bf16 linear (``mkldnn::_linear_pointwise``) can run on this build and CPU."""
    try:
        return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # builds without oneDNN (e.g. some aarch64 wheels)
        return False


_ONEDNN_BF16 = _onednn_bf16()


# int8 dot-product instructions: without them oneDNN's u8 x s8 kernels sum pairs of products in saturating int16
# (AVX2 vpmaddubsw), which broke results on an AVX2-only CPU (relative error up to 0.39 at random inputs, measured)
_INT8_DOT_ISA = ("AVX512-VNNI", "AVX-VNNI", "AMX-INT8")


@functools.cache
def onednn_int8_available() -> bool:
    """Whether oneDNN's quantized linear (``onednn::qlinear_pointwise``) runs exactly here: the CPU has int8
    dot-product instructions (VNNI or AMX-INT8) and the op, tried once on a tiny input, gives the right answer."""
    if not any(isa in cpu_info().isa for isa in _INT8_DOT_ISA):
        return False
    try:
        codes = torch.ones(2, 4, dtype=torch.int8)
        packed = torch.ops.onednn.qlinear_prepack(codes, None)
        out = torch.ops.onednn.qlinear_pointwise(torch.full((1, 4), 3, dtype=torch.uint8), 0.5, 1, packed,
                                                 torch.ones(2), torch.zeros(2, dtype=torch.int64), None, 1.0, 0,
                                                 torch.float32, "none", [], "")
        return bool(torch.allclose(out, torch.full((1, 2), 4.0)))  # 4 inputs of (3 - 1) * 0.5 = 1.0
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def float_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float32 weight, bias) of an ``nn.Linear``, a ``QuantLinear`` or a ``BlockLinear`` (dequantized: a new
    tensor)."""
    weight = linear.weight if isinstance(linear, nn.Linear) else linear.dequantized_weight(torch.float32)
    bias = None if linear.bias is None else linear.bias.float()
    return weight.float(), bias


def fused_bias(modules: Sequence[nn.Module]) -> torch.Tensor | None:
    """One float32 bias ``[sum(out)]`` for projections of the same input (a missing bias is 0; None if all are)."""
    if all(m.bias is None for m in modules):
        return None
    return torch.cat([m.bias.float() if m.bias is not None else torch.zeros(m.out_features) for m in modules])


def fused_weight(modules: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One float32 weight ``[sum(out), in]`` and bias for projections of the same input (a missing bias is 0)."""
    weights = [float_weight(m)[0] for m in modules]
    return (torch.cat(weights) if len(weights) > 1 else weights[0]), fused_bias(modules)


def input_channel_amax(modules: Mapping[Hashable, nn.Module], run: Callable[[], None]) -> dict[Hashable, torch.Tensor]:
    """Per-input-channel max ``|x|`` each module sees while ``run()`` feeds calibration data through the model."""
    amax: dict[Hashable, torch.Tensor] = {}
    hooks = []
    for key, module in modules.items():
        def hook(_module, inputs, _output, key=key):
            x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1]).abs().amax(dim=0)
            amax[key] = x if key not in amax else torch.maximum(amax[key], x)
        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            run()
    finally:
        for handle in hooks:
            handle.remove()
    return amax


def calibrated_smooth_scales(projections: Mapping[Hashable, Sequence[nn.Module]],
                             weights: Mapping[Hashable, torch.Tensor], run: Callable[[], None], alpha: float
                             ) -> dict[Hashable, torch.Tensor]:
    """SmoothQuant scales per key: the per-channel max ``|x|`` the key's first projection sees while ``run()``
    feeds calibration data through the model, against that key's fused float32 weight ``[out, in]``."""
    amax = input_channel_amax({key: modules[0] for key, modules in projections.items()}, run)
    return {key: smooth_scales(amax[key], weights[key], alpha) for key in projections}


def _int8_codes(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 codes ``[in, out]`` (the layout ``_int_mm`` reads fastest) and scales."""
    scale = (weight.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    codes = torch.clamp(torch.round(weight / scale[:, None]), -127, 127).to(torch.int8)
    return codes.t().contiguous(), scale.float()


def smooth_scales(activation_amax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's per-input-channel ``s = amax_x^alpha / amax_w^(1 - alpha)`` (weight ``[out, in]``)."""
    w_max = weight.abs().amax(dim=0).clamp_min(1e-5)
    a_max = activation_amax.float().clamp_min(1e-5)
    return (a_max.pow(alpha) / w_max.pow(1.0 - alpha)).clamp_min(1e-5)


def _gelu_approximate(activation: str) -> str:
    return "tanh" if activation == "gelu_tanh" else "none"


def _onednn_post_op(activation: str | None) -> tuple[str, list, str]:
    """(post-op name, its arguments, its algorithm) of an activation in oneDNN's fused linear ops."""
    return ("none", [], "") if activation is None else ("gelu", [], _gelu_approximate(activation))


class FixedLinear:
    """One projection in a fixed precision, one of :data:`LINEAR_KINDS` (see the module docstring).

    Args:
        weight, bias: float32 ``[out, in]`` and ``[out]`` (or None).
        kind: the precision.
        smooth: SmoothQuant scales ``[in]`` for the int8 kinds (the weight's input channels are multiplied by it).
        input_smoothed: the caller already divides the input by ``smooth`` (folded into a LayerNorm).
        kernel_max_rows: ``q8_0``: inputs of at most this many rows run the block kernel, larger ones the float
            GEMM over the dequantized blocks (the crossover measured on MiniLM's shapes lies near 120 rows).
        blocks: ``q8_0``: the weight already as GGUF blocks (the parts of a fused projection, stacked by output
            rows; e.g. a file's mapped Q8_0 blocks of Q, K and V), used in place; ``weight`` may then be None.
    """

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, kind: str,
                 smooth: torch.Tensor | None = None, *, input_smoothed: bool = False,
                 kernel_max_rows: int = KERNEL_MAX_ROWS, blocks: Sequence[GGUFBlocks] | None = None) -> None:
        if kind not in LINEAR_KINDS:
            raise ConfigError(f"kind must be one of {', '.join(LINEAR_KINDS)}, got {kind!r}")
        if kind == "int8-tensor" and not onednn_int8_available():
            raise DeviceUnavailableError("int8-tensor needs oneDNN's quantized linear, which this torch build or CPU "
                                         "lacks; use kind='int8'")
        self.kind = kind
        self.bias = None if bias is None else bias.float().contiguous()
        self.smooth_inv = None
        if kind == "q8_0":
            from arrowengine.runtime.native.gguf import block_kernels
            from quant.gguf import quantize_q8_0

            self.kernel = block_kernels()
            if self.kernel is None:
                raise DeviceUnavailableError("q8_0 needs the native block kernels (AVX2 + FMA and a C compiler; "
                                             "the reason is logged); use kind='float32'")
            self.parts = list(blocks) if blocks else [quantize_q8_0(weight)]
            self.kernel_max_rows = int(kernel_max_rows)
        elif kind.startswith("int8"):
            if smooth is not None:
                weight = weight * smooth[None, :]
                self.smooth_inv = None if input_smoothed else (1.0 / smooth).float().contiguous()
            self.codes, self.scale = _int8_codes(weight)
            self.out_scale = self.scale[None, :]
            if kind == "int8-tensor":
                self.packed = torch.ops.onednn.qlinear_prepack(self.codes.t().contiguous(), None)
                self.zero_points = torch.zeros(self.scale.numel(), dtype=torch.int64)
                del self.codes  # the packed copy is the one used
        elif kind == "bfloat16":
            self.weight = weight.to(torch.bfloat16).contiguous()
            self.bias_bf16 = None if bias is None else bias.to(torch.bfloat16)
            # oneDNN's blocked weight layout, packed once: faster per call than F.linear at Whisper and MiniLM
            # shapes (measured), and the epilogue (bias, GELU, residual add) runs inside the GEMM
            self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, None) if _ONEDNN_BF16 else None
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor, *, activation: str | None = None,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
        """``act(x W^T + b) + residual`` for 2-D ``x`` (float32 or bfloat16); out in ``x.dtype``.

        ``activation`` is one of :data:`LINEAR_ACTIVATIONS`; ``residual`` (shape ``[rows, out]``) is added after
        it. In ``bfloat16`` on oneDNN both are fused into the matmul (a GELU and a residual together are not).
        """
        if activation not in LINEAR_ACTIVATIONS:
            raise ConfigError(f"activation must be one of {LINEAR_ACTIVATIONS}, got {activation!r}")
        if self.kind == "bfloat16" and self.packed is not None and x.dtype == torch.bfloat16:
            mkldnn = torch.ops.mkldnn
            if residual is not None and activation is None:
                return mkldnn._linear_pointwise.binary(x, residual.to(x.dtype), self.packed, self.bias_bf16, "add")
            y = mkldnn._linear_pointwise(x, self.packed, self.bias_bf16, *_onednn_post_op(activation))
            return y if residual is None else y.add_(residual)
        if self.kind == "int8-tensor":
            y = self._tensor_int8(x, activation)
            return y if residual is None else y.add_(residual)
        y = self._matmul(x)
        if activation is not None:
            y = F.gelu(y, approximate=_gelu_approximate(activation))
        return y if residual is None else y.add_(residual)

    def _tensor_int8(self, x: torch.Tensor, activation: str | None) -> torch.Tensor:
        if self.smooth_inv is not None:
            x = x * self.smooth_inv.to(x.dtype)
        low, high = torch.aminmax(x)
        low, high = min(float(low), 0.0), max(float(high), 0.0)  # the range must hold 0 exactly
        scale = max((high - low) / 255.0, 1e-8)
        zero_point = round(-low / scale)
        # one pass to uint8: x / scale + zp + 0.5 in float32 (a 1-d offset makes bf16 x promote), truncated
        codes = torch.add(torch.tensor([zero_point + 0.5]), x, alpha=1.0 / scale).to(torch.uint8)
        out_dtype = torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32
        return torch.ops.onednn.qlinear_pointwise(codes, scale, zero_point, self.packed, self.scale, self.zero_points,
                                                  self.bias, 1.0, 0, out_dtype, *_onednn_post_op(activation))

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "q8_0":
            return self._blocks_matmul(x)
        if self.kind == "float32":
            return F.linear(x.float(), self.weight, self.bias).to(x.dtype)
        if self.kind == "bfloat16":
            return F.linear(x.to(torch.bfloat16), self.weight, self.bias_bf16).to(x.dtype)
        xf = x.float()  # quantize in float32: bf16 cannot hold x / scale to int8 precision
        if self.smooth_inv is not None:
            xf = xf * self.smooth_inv
        xs = xf.abs().amax(dim=1, keepdim=True).clamp_min_(1e-8).div_(127.0)
        xq = torch.round(xf / xs).to(torch.int8)
        # in-place float chain: torch.mul(int32, float) type-promotes on a slow path (slower, measured)
        y = torch._int_mm(xq, self.codes).float()
        y = y.mul_(xs).mul_(self.out_scale)
        y = y.add_(self.bias) if self.bias is not None else y
        return y.to(x.dtype)

    def _blocks_matmul(self, x: torch.Tensor) -> torch.Tensor:
        return blocks_linear(x, self.parts, self.bias, kernels=self.kernel,
                             kernel_max_rows=self.kernel_max_rows).to(x.dtype)
