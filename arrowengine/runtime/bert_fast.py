"""A lean BERT encoder forward over a loaded ``BertModel``'s weights, with per-layer-kind precision.

:class:`FastBert` replaces the ``transformers`` ``BertModel`` forward for sentence embeddings: Q/K/V fused into one
matmul, ``scaled_dot_product_attention`` with the padding mask, no head mask / cache / output plumbing. It reads
the weights of an already loaded model (fp32 mapped, or :class:`quant.QuantLinear` / :class:`quant.QuantEmbedding`
layers of a V2 file), so it needs no file of its own. Precisions (``precision=``):

* ``float32``: exact up to summation order; Q/K/V are concatenated once, the other weights stay zero-copy views
  of the file mapping.
* ``int8-weights``: every projection's weight as Q8_0 blocks (int8, one float16 scale per 32 inputs) run by
  the native AVX2 block kernel, activations float32 (quantized to int16 per block inside the kernel): a quarter
  of the float32 weight memory, no calibration, no VNNI needed; the residual stream stays float32. Up to the
  kernel's 128 rows (a query, a few short texts) the whole encoder is one native call (``bert_layer.c``: attention,
  LayerNorm and GELU in C between the block products), which spares ~70 small torch ops per query.
* ``bfloat16``: matmuls in bf16 (AVX512-BF16 / AMX), LayerNorm statistics in fp32 inside ``layer_norm``.
* ``int8-mixed``: Q/K/V, attention output and FFN up-projection as dynamic per-token int8 activations x
  per-channel int8 weights through ``torch._int_mm`` (VNNI), SmoothQuant-ed (per-input-channel scales
  ``s = amax_x^a / amax_w^(1-a)`` calibrated on example text, folded into the weight; the activation is divided
  by ``s`` at run time); the FFN down-projection in bf16, because its GELU outputs have outlier channels that
  per-token int8 cannot represent even after smoothing (see :mod:`quant.kernels`).
* ``int8``: every Linear through ``_int_mm``, the down-projection smoothed too: faster on some CPUs, lower cosine
  (the errors of four int8 projections add up; the worst sentences are short ones such as "Thank you").

Except in ``float32`` and ``int8-weights`` the residual stream, LayerNorm, GELU and attention run in bf16 (faster
than an fp32 stream with casts around each matmul, at unchanged cosine). Measured speed and fidelity per precision:
``docs/benchmarks/`` (``text_encoder.json``, ``baseline_advanced/``).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from arrowengine.errors import ConfigError, ModelConfigError
from arrowengine.runtime.block_linear import BlockLinear
from arrowengine.runtime.calibration import cached_scales
from arrowengine.runtime.fixed_linear import FixedLinear, calibrated_smooth_scales, fused_bias, fused_weight

__all__ = ["PRECISIONS", "FastBert", "FastBertConfig", "unsupported_reason"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "int8-weights", "bfloat16", "int8-mixed", "int8")


@dataclass
class FastBertConfig:
    """How :class:`FastBert` runs: ``precision`` (one of :data:`PRECISIONS`) and the SmoothQuant strength."""

    precision: str = "float32"
    smooth_alpha: float = 0.8  # best min cosine of 0.5 / 0.65 / 0.8 on real chat messages (int8-mixed)
    kinds: dict[str, str] | None = None  # per layer kind (qkv/out/up/down) override of the precision's choice


def _kinds(precision: str) -> dict[str, str]:
    if precision == "float32":
        return dict.fromkeys(("qkv", "out", "up", "down"), "float32")
    if precision == "int8-weights":
        return dict.fromkeys(("qkv", "out", "up", "down"), "q8_0")
    if precision == "bfloat16":
        return dict.fromkeys(("qkv", "out", "up", "down"), "bfloat16")
    if precision == "int8-mixed":
        return {"qkv": "int8", "out": "int8", "up": "int8", "down": "bfloat16"}
    return dict.fromkeys(("qkv", "out", "up", "down"), "int8")


def _projections(layer: nn.Module) -> dict[str, list[nn.Module]]:
    att = layer.attention
    return {"qkv": [att.self.query, att.self.key, att.self.value], "out": [att.output.dense],
            "up": [layer.intermediate.dense], "down": [layer.output.dense]}


def unsupported_reason(model: nn.Module) -> str:
    """Why :class:`FastBert` cannot run ``model`` (a message), or ``""`` when it can."""
    bert = getattr(model, "bert", model)
    if not hasattr(bert, "embeddings") or not hasattr(bert, "encoder") or not hasattr(bert.encoder, "layer"):
        return f"{type(model).__name__} is not a BERT-style encoder (embeddings + encoder.layer)"
    cfg = bert.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        return "FastBert supports absolute position embeddings only"
    if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        return f"FastBert supports GELU activations, not {cfg.hidden_act!r}"
    if not hasattr(bert.embeddings, "token_type_embeddings"):
        return "FastBert needs token type embeddings"
    return ""


class FastBert:
    """Callable BERT encoder: ``fast(input_ids=, attention_mask=, token_type_ids=)`` -> ``.last_hidden_state``.

    Args:
        model: a loaded ``transformers`` ``BertModel`` (fp32 weights, or ``QuantLinear`` layers of a V2 file).
        config: the precision (see the module docstring).
        calibration: token-id batches (``[(input_ids, attention_mask, token_type_ids)]``) for the int8
            precisions' SmoothQuant scales; required for them, ignored otherwise.
        cache_key: where the scales are kept in the calibration cache
            (:func:`arrowengine.runtime.calibration.calibration_key`); None calibrates every time.
    """

    def __init__(self, model: nn.Module, config: FastBertConfig | None = None,
                 calibration: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = (), *,
                 cache_key: str | None = None) -> None:
        self.config = config or FastBertConfig()
        if self.config.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.config.precision!r}")
        problem = unsupported_reason(model)
        if problem:
            raise ModelConfigError(f"{problem}; use the transformers module forward (TextEncoder precision=None)")
        bert = getattr(model, "bert", model)
        cfg = bert.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.eps = float(cfg.layer_norm_eps)
        self.cache_key = cache_key
        self.activation = "gelu" if cfg.hidden_act == "gelu" else "gelu_tanh"  # FixedLinear's fused epilogue
        emb = bert.embeddings
        self.word = emb.word_embeddings  # nn.Embedding, or a QuantEmbedding that dequantizes the gathered rows
        self.position = emb.position_embeddings.weight
        self.token_type = emb.token_type_embeddings.weight
        self.emb_norm = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        kinds = _kinds(self.config.precision) | (self.config.kinds or {})
        # the residual stream, LayerNorm, GELU and attention run in bf16 unless every projection takes float32
        # (float32, q8_0): measured faster than an fp32 stream with casts around each bf16/int8 matmul
        self.stream_dtype = torch.float32 if set(kinds.values()) <= {"float32", "q8_0"} else torch.bfloat16
        # each projection kind's weights fused once: the SmoothQuant calibration and the FixedLinears share them.
        # Only the int8 kinds' are fused up front (the calibration needs them all); the others one layer at a
        # time, so a quantized model never holds all its float weights at once
        layers = list(bert.encoder.layer)
        fused = {(index, kind): fused_weight(modules) for index, layer in enumerate(layers)
                 for kind, modules in _projections(layer).items() if kinds[kind].startswith("int8")}
        smooth = self._smooth_scales(bert, calibration, kinds, fused)
        self.layers = []
        for index, layer in enumerate(layers):
            linears = {}
            for kind, modules in _projections(layer).items():
                if kinds[kind] == "q8_0" and all(isinstance(m, BlockLinear) for m in modules):
                    # a file's own blocks (arrowengine quantize --bits 8), run in place: no float copy at all
                    linears[kind] = FixedLinear(None, fused_bias(modules), "q8_0",
                                                blocks=[m.blocks for m in modules])
                    continue
                weight, bias = fused.pop((index, kind)) if (index, kind) in fused else fused_weight(modules)
                linears[kind] = FixedLinear(weight, bias, kinds[kind], smooth.get((index, kind)))
                del weight  # a dequantized or concatenated copy: freed before the next one is made
            self.layers.append(SimpleNamespace(
                **linears,
                norm1=self._norm(layer.attention.output.LayerNorm),
                norm2=self._norm(layer.output.LayerNorm),
            ))
        self._native = self._native_layers()
        native = f", the whole encoder in one native call up to {self._native[1]} tokens" if self._native else ""
        logger.info("FastBert: %d layers, precision %s (%s)%s", len(self.layers), self.config.precision, kinds, native)

    def _native_layers(self) -> tuple[Any, int] | None:
        """The layers as ``bert_layer.c`` arguments when every projection is Q8_0 blocks over a float32 stream
        (``int8-weights``), with the row count up to which they run (the block kernel's; above it the torch
        forward's float GEMM is faster); None otherwise."""
        linears = [getattr(layer, kind) for layer in self.layers for kind in ("qkv", "out", "up", "down")]
        if self.stream_dtype != torch.float32 or not all(lin.kind == "q8_0" for lin in linears):
            return None
        from arrowengine.runtime.native.gguf import BertArgs

        args = (BertArgs * len(self.layers))()
        self._keep = []  # every tensor a pointer in args refers to

        def ptr(tensor: torch.Tensor | None) -> int | None:
            if tensor is None:
                return None
            tensor = tensor.float().contiguous()
            self._keep.append(tensor)
            return tensor.data_ptr()

        for arg, layer in zip(args, self.layers, strict=True):
            arg.hidden, arg.heads, arg.eps = self.hidden, self.heads, self.eps
            arg.inter = layer.up.parts[0].shape[0]
            arg.gelu_tanh = int(self.activation != "gelu")
            arg.qkv_parts = len(layer.qkv.parts)
            if arg.qkv_parts > 3:
                return None
            for i, part in enumerate(layer.qkv.parts):
                arg.qkv_type[i], arg.qkv[i] = part.kind.ggml_type, part.data.data_ptr()
                arg.qkv_rows[i], arg.qkv_stride[i] = part.shape[0], part.data.stride(0)
            arg.qkv_bias = ptr(layer.qkv.bias)
            for name, lin in (("o", layer.out), ("up", layer.up), ("down", layer.down)):
                if len(lin.parts) != 1:
                    return None
                part = lin.parts[0]
                setattr(arg, f"{name}_type", part.kind.ggml_type)
                setattr(arg, name, part.data.data_ptr())
                setattr(arg, f"{name}_stride", part.data.stride(0))
                setattr(arg, f"{name}_bias", ptr(lin.bias))
            arg.ln1_w, arg.ln1_b = ptr(layer.norm1[0]), ptr(layer.norm1[1])
            arg.ln2_w, arg.ln2_b = ptr(layer.norm2[0]), ptr(layer.norm2[1])
        return args, min(lin.kernel_max_rows for lin in linears)

    def _norm(self, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        return norm.weight.to(self.stream_dtype), norm.bias.to(self.stream_dtype)

    def _smooth_scales(self, bert: nn.Module, calibration: Sequence, kinds: dict[str, str],
                       fused: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor | None]]
                       ) -> dict[tuple[int, str], torch.Tensor]:
        """SmoothQuant scales of each int8 projection, from its input's per-channel max on real text."""
        wanted = [kind for kind in ("qkv", "out", "up", "down") if kinds[kind].startswith("int8")]
        if not wanted or self.config.smooth_alpha <= 0:
            return {}
        if not calibration:
            raise ConfigError("int8 projections need calibration batches for their SmoothQuant scales; pass "
                             "calibration=[(input_ids, attention_mask, token_type_ids), ...] or smooth_alpha=0")
        layers = list(bert.encoder.layer)

        def run() -> None:
            for ids, mask, types in calibration:
                bert(input_ids=ids, attention_mask=mask, token_type_ids=types)

        keys = [(index, kind) for index in range(len(layers)) for kind in wanted]
        return cached_scales(self.cache_key, lambda: calibrated_smooth_scales(
            {key: _projections(layers[key[0]])[key[1]] for key in keys}, {key: fused[key][0] for key in keys}, run,
            self.config.smooth_alpha))

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        """Encode a padded batch; returns ``SimpleNamespace(last_hidden_state=[B, S, H] float32)``."""
        batch, width = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word(input_ids).float() + self.position[:width] + F.embedding(token_type_ids, self.token_type)
        x = F.layer_norm(x, (self.hidden,), *self.emb_norm, self.eps).view(batch * width, self.hidden)
        x = x.to(self.stream_dtype)
        padded = attention_mask is not None and not bool(attention_mask.all())
        if self._native is not None and batch * width <= self._native[1]:
            x = self._native_forward(x, attention_mask if padded else None, batch, width)
            return SimpleNamespace(last_hidden_state=x)
        mask = attention_mask.bool()[:, None, None, :] if padded else None
        head_dim = self.hidden // self.heads
        for layer in self.layers:
            qkv = layer.qkv(x).view(batch, width, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
            ctx = ctx.transpose(1, 2).reshape(batch * width, self.hidden)
            x = F.layer_norm(layer.out(ctx, residual=x), (self.hidden,), *layer.norm1, self.eps)
            h = layer.up(x, activation=self.activation)
            x = F.layer_norm(layer.down(h, residual=x), (self.hidden,), *layer.norm2, self.eps)
        return SimpleNamespace(last_hidden_state=x.view(batch, width, self.hidden))

    def _native_forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None, batch: int,
                        width: int) -> torch.Tensor:
        """All layers in one ``bert_layer.c`` call, in place on a float32 copy of ``x`` (``attention_mask``:
        None when no row is padded)."""
        from arrowengine.runtime.native.gguf import threads

        template, _ = self._native
        # a copy per call: the per-call fields below must not race with another thread encoding at the same time
        args = type(template)()
        ctypes.memmove(args, template, ctypes.sizeof(template))
        h = x.float().contiguous()  # a fresh tensor of the caller's: updated in place
        mask = None if attention_mask is None else attention_mask.to(torch.uint8).contiguous()
        count = threads()
        for arg in args:
            arg.batch, arg.seq, arg.threads = batch, width, count
            arg.h, arg.mask = h.data_ptr(), None if mask is None else mask.data_ptr()
        status = self.layers[0].qkv.kernel.bert(args, len(args))
        if status != 0:
            raise MemoryError(f"the native BERT encoder failed with status {status} (scratch allocation)")
        return h.view(batch, width, self.hidden)
