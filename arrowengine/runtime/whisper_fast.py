"""A lean Whisper encoder forward over a loaded ``WhisperEncoder``'s weights, with per-projection precision.

:class:`FastWhisperEncoder` replaces the ``transformers`` encoder forward for embeddings and transcription:
Q/K/V fused into one matmul (the 1/sqrt(head_dim) folded into the query rows), blocked attention, the residual
stream in bf16, and each projection kind (``qkv``, attention ``out``, FFN ``up``, FFN ``down``) in the precision
its activations tolerate (:class:`arrowengine.runtime.fixed_linear.FixedLinear`, whose bf16 matmuls carry the
bias, GELU and residual add in oneDNN's epilogue). Precisions (``precision=``):

* ``float32``: exact up to summation order.
* ``bfloat16``: every matmul and the convolutions in bf16; LayerNorm statistics in fp32 inside ``layer_norm``.
* ``int8-mixed``: Q/K/V and FFN up (the two projections that read a LayerNorm) as per-tensor uint8 activations x
  per-channel int8 weights through oneDNN's quantized linear, SmoothQuant-ed on calibration speech with the
  smoothing folded into the LayerNorm's affine (no extra pass); attention ``out`` and FFN ``down`` in bf16 (the
  GELU outputs carry outlier channels: per-tensor int8 there drops the pooled cosine to 0.35, measured). Without
  oneDNN's quantized linear it falls back to per-token int8 through ``torch._int_mm``.

Attention is about half of the bf16 forward: its two matmuls run near the bf16 GEMM peak, and the softmax runs
in the native kernel (:mod:`arrowengine.runtime.native`). Measured latency and fidelity per precision:
``docs/benchmarks/`` (``whisper.json``, ``baseline_advanced/``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from arrowengine.errors import ConfigError, ModelConfigError
from arrowengine.runtime.calibration import cached_scales
from arrowengine.runtime.fixed_linear import (
    FixedLinear,
    calibrated_smooth_scales,
    fused_weight,
    onednn_int8_available,
)
from arrowengine.runtime.native import softmax_bf16_

__all__ = ["WHISPER_PRECISIONS", "FastWhisperConfig", "FastWhisperEncoder"]

logger = logging.getLogger(__name__)

WHISPER_PRECISIONS = ("float32", "bfloat16", "int8-mixed")
_KINDS = ("qkv", "out", "up", "down")
_QUERY_BLOCK = 128  # rows of queries per attention block (64 / 128 / 256 / 512 measured; 128 fastest)


@dataclass
class FastWhisperConfig:
    """How :class:`FastWhisperEncoder` runs: ``precision`` (one of :data:`WHISPER_PRECISIONS`), SmoothQuant."""

    precision: str = "bfloat16"
    smooth_alpha: float = 0.5
    kinds: dict[str, str] | None = None  # per projection kind override of the precision's choice


def _kinds(precision: str) -> dict[str, str]:
    if precision == "int8-mixed":
        if onednn_int8_available():
            return {"qkv": "int8-tensor", "out": "bfloat16", "up": "int8-tensor", "down": "bfloat16"}
        logger.warning("oneDNN's quantized linear is unavailable: int8-mixed falls back to per-token int8 "
                       "projections through torch._int_mm (slower)")
        return {"qkv": "int8", "out": "int8", "up": "int8", "down": "bfloat16"}
    return dict.fromkeys(_KINDS, precision)


# the LayerNorm whose output each projection kind reads: its affine can carry the SmoothQuant division
_NORM_OF_KIND = {"qkv": "self_attn_layer_norm", "up": "final_layer_norm"}


def _projections(layer: nn.Module) -> dict[str, list[nn.Module]]:
    att = layer.self_attn
    return {"qkv": [att.q_proj, att.k_proj, att.v_proj], "out": [att.out_proj], "up": [layer.fc1],
            "down": [layer.fc2]}


def _scale_query_rows(weight: torch.Tensor, bias: torch.Tensor | None, hidden: int, head_dim: int
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused ``[q; k; v]`` weight and bias with the query rows multiplied by ``head_dim ** -0.5``."""
    factor = torch.ones(weight.shape[0])
    factor[:hidden] = head_dim**-0.5
    return weight * factor[:, None], None if bias is None else bias * factor


class FastWhisperEncoder:
    """Callable Whisper encoder: ``fast(features [B, n_mels, 3000])`` -> ``last_hidden_state [B, 1500, d]`` fp32.

    Args:
        encoder: a loaded ``transformers`` ``WhisperEncoder`` (fp32 mapped weights or ``QuantLinear`` layers).
        config: the precision (see the module docstring).
        calibration: log-mel feature batches of speech for the int8 projections' SmoothQuant scales;
            required when a projection runs in int8 with ``smooth_alpha > 0``.
        cache_key: where the scales are kept in the calibration cache
            (:func:`arrowengine.runtime.calibration.calibration_key`); None calibrates every time.
    """

    def __init__(self, encoder: nn.Module, config: FastWhisperConfig | None = None,
                 calibration: Sequence[torch.Tensor] = (), *, cache_key: str | None = None) -> None:
        self.config = config or FastWhisperConfig()
        self.cache_key = cache_key
        if self.config.precision not in WHISPER_PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(WHISPER_PRECISIONS)}, "
                             f"got {self.config.precision!r}")
        if not hasattr(encoder, "conv1") or not hasattr(encoder, "layers"):
            raise ModelConfigError(f"{type(encoder).__name__} is not a Whisper encoder (no conv1 / layers)")
        cfg = encoder.config
        if cfg.activation_function != "gelu":
            raise ModelConfigError(f"FastWhisperEncoder supports GELU, not {cfg.activation_function!r}")
        self.heads = int(cfg.encoder_attention_heads)
        self.hidden = int(cfg.d_model)
        kinds = _kinds(self.config.precision) | (self.config.kinds or {})
        self.stream_dtype = torch.float32 if set(kinds.values()) == {"float32"} else torch.bfloat16
        conv_dtype = torch.float32 if self.stream_dtype == torch.float32 else torch.bfloat16
        self.conv1 = (encoder.conv1.weight.to(conv_dtype), encoder.conv1.bias.to(conv_dtype))
        self.conv2 = (encoder.conv2.weight.to(conv_dtype), encoder.conv2.bias.to(conv_dtype))
        self.positions = encoder.embed_positions.weight.to(self.stream_dtype)
        # each projection kind's weights fused once: the SmoothQuant calibration and the FixedLinears share them
        fused = {(index, kind): fused_weight(modules) for index, layer in enumerate(encoder.layers)
                 for kind, modules in _projections(layer).items()}
        smooth = self._smooth_scales(encoder, calibration, kinds, fused)
        self.layers = []
        for index, layer in enumerate(encoder.layers):
            linears, norms = {}, {}
            for kind in _KINDS:
                scale = smooth.get((index, kind))
                # a per-tensor int8 input is smoothed inside its LayerNorm (no multiply per call)
                folded = kinds[kind] == "int8-tensor" and scale is not None and kind in _NORM_OF_KIND
                weight, bias = fused[(index, kind)]
                if kind == "qkv":  # attention's 1/sqrt(head_dim) folded into the query rows: one pass less
                    weight, bias = _scale_query_rows(weight, bias, self.hidden, self.hidden // self.heads)
                linears[kind] = FixedLinear(weight, bias, kinds[kind], scale, input_smoothed=folded)
                if kind in _NORM_OF_KIND:
                    norms[kind] = self._norm(getattr(layer, _NORM_OF_KIND[kind]), scale if folded else None)
            self.layers.append(SimpleNamespace(**linears, norm1=norms["qkv"], norm2=norms["up"]))
        self.final_norm = self._norm(encoder.layer_norm)
        logger.info("FastWhisperEncoder: %d layers, precision %s (%s)", len(self.layers), self.config.precision,
                    kinds)

    def _norm(self, norm: nn.Module, smooth: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
        weight, bias = norm.weight.float(), norm.bias.float()
        if smooth is not None:  # LayerNorm(x) / s: divide the affine once
            weight, bias = weight / smooth, bias / smooth
        return weight.to(self.stream_dtype), bias.to(self.stream_dtype), float(norm.eps)

    def _smooth_scales(self, encoder: nn.Module, calibration: Sequence[torch.Tensor], kinds: dict[str, str],
                       fused: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor | None]]
                       ) -> dict[tuple[int, str], torch.Tensor]:
        """SmoothQuant scales of each int8 projection, from its input's per-channel max on real speech."""
        wanted = [kind for kind in _KINDS if kinds[kind].startswith("int8")]
        if not wanted or self.config.smooth_alpha <= 0:
            return {}
        if not calibration:
            raise ConfigError("int8 projections need calibration log-mel batches of speech for their "
                             "SmoothQuant scales; pass calibration=[features, ...] or smooth_alpha=0")
        def run() -> None:
            for features in calibration:
                encoder(features.float())

        keys = [(index, kind) for index in range(len(encoder.layers)) for kind in wanted]
        return cached_scales(self.cache_key, lambda: calibrated_smooth_scales(
            {key: _projections(encoder.layers[key[0]])[key[1]] for key in keys}, {key: fused[key][0] for key in keys},
            run, self.config.smooth_alpha))

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Softmax attention of ``[B, heads, T, head_dim]`` inputs (q pre-scaled), as ``[B, T, heads * head_dim]``.

        In fp32, SDPA's flash kernel is fastest. In bf16, query blocks of :data:`_QUERY_BLOCK` rows through two
        plain matmuls and a softmax beat SDPA's bf16 flash kernel at 1,500 frames (measured): the block's scores
        stay in cache and the matmuls run at oneDNN's bf16 speed. The softmax runs in place in the native kernel
        (:mod:`arrowengine.runtime.native`) where it builds, faster than ``torch.softmax`` on these blocks.
        """
        batch, heads, width, head_dim = q.shape
        if q.dtype == torch.float32:  # q arrives scaled by head_dim ** -0.5 (folded into the weights)
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
            return out.transpose(1, 2).reshape(batch, width, heads * head_dim)
        # q, k, v are strided views of the fused QKV output: one copy each per layer, not one per block
        # (matmul copies a non-contiguous operand on every call, measured slower)
        keys_t = k.contiguous().transpose(-1, -2)
        values = v.contiguous()
        out = torch.empty(batch, heads, width, head_dim, dtype=q.dtype)
        scores = torch.empty(batch, heads, min(_QUERY_BLOCK, width), width, dtype=q.dtype)
        for start in range(0, width, _QUERY_BLOCK):
            stop = min(start + _QUERY_BLOCK, width)
            # a contiguous prefix of the buffer (a slice of it would be strided for the shorter last block)
            block = scores.view(-1)[: batch * heads * (stop - start) * width].view(batch, heads, stop - start, width)
            torch.matmul(q[:, :, start:stop], keys_t, out=block)
            probs = softmax_bf16_(block)
            torch.matmul(probs, values, out=out[:, :, start:stop])
        return out.transpose(1, 2).reshape(batch, width, heads * head_dim)

    def __call__(self, features: torch.Tensor) -> SimpleNamespace:
        """Encode log-mel ``features [B, n_mels, frames]``; returns ``SimpleNamespace(last_hidden_state=fp32)``."""
        conv_dtype = self.conv1[0].dtype
        x = F.gelu(F.conv1d(features.to(conv_dtype), *self.conv1, padding=1))
        x = F.gelu(F.conv1d(x, *self.conv2, stride=2, padding=1))
        batch, _, width = x.shape
        x = x.transpose(1, 2).to(self.stream_dtype) + self.positions[:width]
        x = x.reshape(batch * width, self.hidden)
        head_dim = self.hidden // self.heads
        for layer in self.layers:
            h = F.layer_norm(x, (self.hidden,), *layer.norm1[:2], layer.norm1[2])
            qkv = layer.qkv(h).view(batch, width, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = self._attention(qkv[0], qkv[1], qkv[2])
            x = layer.out(ctx.view(batch * width, self.hidden), residual=x)
            h = F.layer_norm(x, (self.hidden,), *layer.norm2[:2], layer.norm2[2])
            x = layer.down(layer.up(h, activation="gelu"), residual=x)
        x = F.layer_norm(x, (self.hidden,), *self.final_norm[:2], self.final_norm[2])
        return SimpleNamespace(last_hidden_state=x.view(batch, width, self.hidden).float())
