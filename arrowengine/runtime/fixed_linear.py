"""Fixed-precision projections shared by the lean encoder forwards (:mod:`bert_fast`, :mod:`whisper_fast`).

A :class:`FixedLinear` holds one ``nn.Linear``'s (or ``QuantLinear``'s) weight in ``float32``, ``bfloat16`` or
``int8`` and computes ``x W^T + b`` on 2-D activations. ``int8`` quantizes the activation per token (row) at
run time and multiplies through ``torch._int_mm`` (VNNI on x86); an optional SmoothQuant vector, calibrated on
real inputs, moves activation outliers into the weight first. :func:`smooth_scales` computes that vector.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LINEAR_KINDS", "FixedLinear", "float_weight", "fused_weight", "input_channel_amax", "smooth_scales"]

LINEAR_KINDS = ("float32", "bfloat16", "int8")


def float_weight(linear: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float32 weight, bias) of an ``nn.Linear`` or a ``QuantLinear`` (dequantized: a new tensor)."""
    weight = linear.weight if isinstance(linear, nn.Linear) else linear.dequantized_weight(torch.float32)
    bias = None if linear.bias is None else linear.bias.float()
    return weight.float(), bias


def fused_weight(modules: Sequence[nn.Module]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One float32 weight ``[sum(out), in]`` and bias for projections of the same input (a missing bias is 0)."""
    parts = [float_weight(m) for m in modules]
    weight = torch.cat([w for w, _ in parts]) if len(parts) > 1 else parts[0][0]
    if all(b is None for _, b in parts):
        return weight, None
    bias = torch.cat([b if b is not None else torch.zeros(w.shape[0]) for w, b in parts])
    return weight, bias


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


class FixedLinear:
    """One projection in a fixed precision: ``float32``, ``bfloat16`` or ``int8`` (dynamic per-token)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
                 smooth: torch.Tensor | None = None) -> None:
        if kind not in LINEAR_KINDS:
            raise ValueError(f"kind must be one of {', '.join(LINEAR_KINDS)}, got {kind!r}")
        self.kind = kind
        self.bias = None if bias is None else bias.float().contiguous()
        self.smooth_inv = None
        if kind == "int8":
            if smooth is not None:
                weight = weight * smooth[None, :]
                self.smooth_inv = (1.0 / smooth).float().contiguous()
            self.codes, self.scale = _int8_codes(weight)
            self.out_scale = self.scale[None, :]
        elif kind == "bfloat16":
            self.weight = weight.to(torch.bfloat16).contiguous()
            self.bias_bf16 = None if bias is None else bias.to(torch.bfloat16)
        else:
            self.weight = weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` for 2-D ``x`` (float32 or bfloat16); out in ``x.dtype``."""
        if self.kind == "float32":
            return F.linear(x.float(), self.weight, self.bias).to(x.dtype)
        if self.kind == "bfloat16":
            return F.linear(x.to(torch.bfloat16), self.weight, self.bias_bf16).to(x.dtype)
        xf = x.float()  # quantize in float32: bf16 cannot hold x / scale to int8 precision
        if self.smooth_inv is not None:
            xf = xf * self.smooth_inv
        xs = xf.abs().amax(dim=1, keepdim=True).clamp_min_(1e-8).div_(127.0)
        xq = torch.round(xf / xs).to(torch.int8)
        # in-place float chain: torch.mul(int32, float) type-promotes on a slow path (2.4x slower, measured)
        y = torch._int_mm(xq, self.codes).float()
        y = y.mul_(xs).mul_(self.out_scale)
        y = y.add_(self.bias) if self.bias is not None else y
        return y.to(x.dtype)
