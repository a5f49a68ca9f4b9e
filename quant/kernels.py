"""Int8 matmul back-ends for :class:`quant.linear.QuantLinear` in ``int8-kernel`` mode.

At MiniLM shapes ``torch._int_mm`` with dynamic per-token int8 activations is the fastest back-end, then
fbgemm's and oneDNN's ``linear_dynamic``, then bf16 and weight-only int8 (``torch._weight_int8pack_mm``), then
fp32 (figures: ``docs/benchmarks/design_figures.md``). Accuracy decides the default: quantizing *activations* to
int8 ruins MiniLM's FFN down-projections (their output is a small difference of large terms), while weight-only
int8 keeps bf16 accuracy. So ``auto`` picks ``weight_only``; ``int_mm`` (fastest) and ``fbgemm`` stay available
by name for models whose activations tolerate int8.

Each back-end computes ``y = x @ W^T`` for ``W = wscale[:, None] * wq + wshift[:, None]`` with ``wq`` int8 per
output channel; ``wshift`` is zero for symmetric weights and carries the exact re-expression of an asymmetric
uint8 zero point (``(code - zp) = (code - 128) + (128 - zp)``), added as ``rowsum(x) * wshift``.
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch

from quant.errors import QuantModeError

__all__ = ["BACKENDS", "Int8Weight", "int8_matmul", "select_backend"]

logger = logging.getLogger(__name__)

BACKENDS = ("weight_only", "int_mm", "fbgemm")


class Int8Weight:
    """An int8 weight pre-packed for one back-end (one int8 copy of the weight, made once)."""

    def __init__(self, wq: torch.Tensor, wscale: torch.Tensor, wshift: torch.Tensor | None, backend: str):
        if backend not in BACKENDS:
            raise QuantModeError(f"int8 backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.out_features, self.in_features = wq.shape
        self.wscale = wscale.float().contiguous()
        self.wshift = None if wshift is None or not bool(wshift.any()) else wshift.float().contiguous()
        if backend == "int_mm":
            self.data = wq.t().contiguous()  # [in, out]: the layout _int_mm reads fastest (measured)
        elif backend == "fbgemm":
            with warnings.catch_warnings():  # torch.ao quantized tensors are deprecated but still the fbgemm path
                warnings.simplefilter("ignore")
                qw = torch._make_per_channel_quantized_tensor(
                    wq.contiguous(), self.wscale.double(), torch.zeros(wq.shape[0], dtype=torch.long), 0
                )
                self.data = torch.ops.quantized.linear_prepack(qw, None)
        else:
            # torch 2.13's CPU _weight_int8pack_mm segfaults unless in_features % 8 == 0: pad with zero columns
            self.pad = (-self.in_features) % 8
            self.data = torch.nn.functional.pad(wq, (0, self.pad)).contiguous()
            self._scales_by_dtype: dict[torch.dtype, torch.Tensor] = {}

    def matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        """``x2d @ W^T`` in float32 for a 2-D float input ``[tokens, in]``."""
        if self.backend == "int_mm":
            xf = x2d.float()
            # symmetric per-token activation scales: keeps outlier tokens from flattening the others
            amax = xf.abs().amax(dim=1, keepdim=True).clamp_min(1e-8)
            xs = amax / 127.0
            xq = torch.round(xf / xs).to(torch.int8)
            y = torch._int_mm(xq, self.data).float().mul_(xs).mul_(self.wscale)
        elif self.backend == "fbgemm":
            # reduce_range (7-bit activations), torch's own x86 default: without VNNI, fbgemm's u8*s8 pair sums
            # saturate int16 (relative error 0.18 measured on an AVX2 CPU at full range)
            y = torch.ops.quantized.linear_dynamic(x2d.float(), self.data, True)
        else:
            dtype = torch.bfloat16 if x2d.dtype == torch.float32 else x2d.dtype
            scales = self._scales_by_dtype.get(dtype)
            if scales is None:
                scales = self._scales_by_dtype.setdefault(dtype, self.wscale.to(dtype))
            xw = torch.nn.functional.pad(x2d.to(dtype), (0, self.pad)) if self.pad else x2d.to(dtype)
            y = torch._weight_int8pack_mm(xw.contiguous(), self.data, scales).float()
        if self.wshift is not None:
            y.add_(x2d.float().sum(dim=1, keepdim=True) * self.wshift)
        return y


def int8_matmul(x: torch.Tensor, weight: Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)`` through the int8 back-end, for any leading shape; output in ``x.dtype``."""
    lead = x.shape[:-1]
    y = weight.matmul(x.reshape(-1, x.shape[-1]))
    if bias is not None:
        y.add_(bias.float())
    return y.view(*lead, weight.out_features).to(x.dtype)


def _probe(backend: str) -> bool:
    wq = torch.arange(-40, 40, dtype=torch.int8).view(5, 16)  # in_features a multiple of 16: safe for all
    scale = torch.tensor([0.5, 0.25, 1.0, 0.125, 2.0])
    w = Int8Weight(wq, scale, None, backend)
    x = torch.linspace(-2.0, 2.0, 48).view(3, 16)
    expect = x @ (wq.float() * scale[:, None]).t()
    got = w.matmul(x)
    return bool(torch.allclose(got, expect, rtol=0.05, atol=0.1))


@functools.cache
def select_backend(preferred: str = "auto") -> str:
    """The int8 back-end to use: ``preferred`` if it works here, else the first that works of the list.

    Each candidate is probed once on a tiny matmul (an op can exist yet be unimplemented on this build);
    the choice is logged.
    """
    if preferred != "auto" and preferred not in BACKENDS:
        raise QuantModeError(f"int8 backend {preferred!r} is unknown; use 'auto' or one of {', '.join(BACKENDS)}")
    order = BACKENDS if preferred == "auto" else (preferred, *[b for b in BACKENDS if b != preferred])
    for backend in order:
        try:
            ok = _probe(backend)
        except (RuntimeError, NotImplementedError, AttributeError) as exc:
            logger.info("int8 backend %s unavailable here: %s", backend, exc)
            continue
        if ok:
            if preferred not in ("auto", backend):
                logger.warning("int8 backend %s does not work here; using %s", preferred, backend)
            logger.info(
                "int8-kernel backend: %s (CPU capability %s)",
                backend,
                torch.backends.cpu.get_cpu_capability(),
            )
            return backend
        logger.info("int8 backend %s gave wrong results in the probe; skipped", backend)
    raise QuantModeError("no int8 matmul backend works in this torch build; use mode='dequant-on-load'")
