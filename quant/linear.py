"""``QuantLinear``: an ``nn.Linear`` replacement holding packed weights, scales and zero points.

Execution modes (DESIGN section 4), chosen at construction and logged:

* ``dequant-on-the-fly``: keeps the given packed buffers as they are (zero-copy when they are views of a
  memory-mapped file) and unpacks + dequantizes the weight on every forward. Least memory, slowest.
* ``int8-kernel``: pre-packs once into an int8 matmul back-end (:mod:`quant.kernels`; one int8 copy). INT8
  per-channel weights are re-expressed exactly (asymmetric zero points become a per-channel shift); grouped or
  INT4/INT2 weights are dequantized and re-quantized to symmetric INT8 per output channel, which adds INT8
  rounding on top of their own error.
* ``dequant-on-load``: dequantizes once into a float weight (per activation dtype), then plain ``F.linear``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import torch
from torch import nn

from quant.errors import QuantModeError, QuantShapeError
from quant.kernels import Int8Weight, int8_matmul, select_backend
from quant.rtn import QuantizedTensor, dequantize, quantize

__all__ = ["MODES", "QuantLinear", "replace_linears"]

logger = logging.getLogger(__name__)

MODES = ("dequant-on-the-fly", "int8-kernel", "dequant-on-load")


def _int8_weight(qt: QuantizedTensor, backend: str) -> Int8Weight:
    if qt.bits == 8 and qt.group_size == 0:
        codes = qt.codes().view(qt.rows, qt.k)
        wq = (codes.to(torch.int16) - 128).to(torch.int8)
        scale = qt.scales.float().view(-1)
        shift = scale * (128.0 - qt.zero_points.float().view(-1))
        return Int8Weight(wq, scale, shift, backend)
    w = dequantize(qt)
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
    wq = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)
    return Int8Weight(wq, scale, None, backend)


class QuantLinear(nn.Module):
    """A Linear layer ``y = x W^T + b`` whose weight is a :class:`QuantizedTensor`.

    The packed codes, scales and zero points are registered as buffers ``packed_weight``, ``scales`` and
    ``zero_points`` without copying. Float32 and bfloat16 activations are supported in every mode.
    """

    def __init__(
        self,
        qweight: QuantizedTensor,
        bias: torch.Tensor | None = None,
        *,
        mode: str = "dequant-on-the-fly",
        int8_backend: str = "auto",
        name: str = "",
    ) -> None:
        super().__init__()
        label = name or qweight.name
        if mode not in MODES:
            raise QuantModeError(f"{label}: mode {mode!r} is unknown; use one of {', '.join(MODES)}")
        if len(qweight.shape) != 2 or qweight.axis != 1:
            raise QuantShapeError(
                f"{label}: QuantLinear needs a 2-D weight [out, in] quantized along axis 1, got shape "
                f"{list(qweight.shape)} axis {qweight.axis}"
            )
        self.out_features, self.in_features = qweight.shape
        if bias is not None and tuple(bias.shape) != (self.out_features,):
            raise QuantShapeError(f"{label}: bias has shape {list(bias.shape)}, expected [{self.out_features}]")
        self.mode, self.name = mode, label
        self.bits, self.group_size, self.symmetric = qweight.bits, qweight.group_size, qweight.symmetric
        self.register_buffer("packed_weight", qweight.packed)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("zero_points", qweight.zero_points)
        self.register_buffer("bias", bias)
        self._int8: Int8Weight | None = None
        self._float_weights: dict[torch.dtype, torch.Tensor] = {}
        if mode == "int8-kernel":
            backend = select_backend(int8_backend)
            self._int8 = _int8_weight(qweight, backend)
            exact = qweight.bits == 8 and qweight.group_size == 0
            logger.info(
                "%s: mode int8-kernel, backend %s, %s",
                label,
                backend,
                "exact int8 weights" if exact else f"int{qweight.bits} re-quantized to int8 per channel",
            )
        else:
            if mode == "dequant-on-load":
                self._float_weights[torch.float32] = dequantize(qweight, torch.float32)
            logger.info("%s: mode %s, int%d group %d", label, mode, qweight.bits, qweight.group_size)

    @property
    def qweight(self) -> QuantizedTensor:
        """The quantized weight, rebuilt from the (possibly moved) buffers."""
        return QuantizedTensor(
            packed=self.packed_weight,
            scales=self.scales,
            zero_points=self.zero_points,
            bits=self.bits,
            group_size=self.group_size,
            shape=(self.out_features, self.in_features),
            axis=1,
            symmetric=self.symmetric,
            name=self.name or "weight",
        )

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weight ``[out, in]`` this layer represents (a new tensor)."""
        return dequantize(self.qweight, dtype)

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        bits: int,
        group_size: int = 0,
        *,
        symmetric: bool = False,
        clip: str = "minmax",
        mode: str = "dequant-on-the-fly",
        int8_backend: str = "auto",
        name: str = "",
    ) -> QuantLinear:
        """Quantize ``linear.weight`` with RTN and wrap it (the bias is kept in float)."""
        qt = quantize(linear.weight.detach(), bits, group_size, symmetric=symmetric, clip=clip, name=name or "weight")
        bias = None if linear.bias is None else linear.bias.detach().clone()
        return cls(qt, bias, mode=mode, int8_backend=int8_backend, name=name)

    def _float_weight(self, dtype: torch.dtype) -> torch.Tensor:
        w = self._float_weights.get(dtype)
        if w is None:
            base = self._float_weights.get(torch.float32)
            w = base.to(dtype) if base is not None else self.dequantized_weight(dtype)
            self._float_weights[dtype] = w
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x W^T + b`` in ``x.dtype``."""
        if x.shape[-1] != self.in_features:
            raise QuantShapeError(f"{self.name}: input has {x.shape[-1]} features, layer expects {self.in_features}")
        if self._int8 is not None:
            return int8_matmul(x, self._int8, self.bias)
        if self.mode == "dequant-on-load":
            w = self._float_weight(x.dtype)
        else:
            w = self.dequantized_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, w, bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
            f"group_size={self.group_size}, mode={self.mode}"
        )


def replace_linears(
    model: nn.Module,
    qweights: Mapping[str, QuantizedTensor],
    *,
    mode: str = "dequant-on-the-fly",
    int8_backend: str = "auto",
) -> nn.Module:
    """Replace each ``nn.Linear`` named in ``qweights`` (module path, e.g. ``encoder.layer.0.output.dense``)
    with a :class:`QuantLinear` built from its quantized weight and the Linear's bias. Returns ``model``."""
    modules = dict(model.named_modules())
    for path, qt in qweights.items():
        old = modules.get(path)
        if not isinstance(old, nn.Linear):
            raise QuantShapeError(f"{path}: no nn.Linear with this name in the model; check the layer names")
        if tuple(qt.shape) != tuple(old.weight.shape):
            raise QuantShapeError(f"{path}: quantized shape {list(qt.shape)} != Linear weight {list(old.weight.shape)}")
        bias = None if old.bias is None else old.bias.detach()
        parent_path, _, child = path.rpartition(".")
        parent = modules[parent_path] if parent_path else model
        setattr(parent, child, QuantLinear(qt, bias, mode=mode, int8_backend=int8_backend, name=path))
    return model
