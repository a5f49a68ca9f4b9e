"""A lean BERT encoder forward over a loaded ``BertModel``'s weights, with per-layer-kind precision.

:class:`FastBert` replaces the ``transformers`` ``BertModel`` forward for sentence embeddings: Q/K/V fused into one
matmul, ``scaled_dot_product_attention`` with the padding mask, no head mask / cache / output plumbing. It reads
the weights of an already loaded model (fp32 mapped, or :class:`quant.QuantLinear` layers of a V2 file), so it
needs no file of its own. Precisions (``precision=``):

* ``float32``: exact (cosine >= 0.99999 to sentence-transformers); Q/K/V are concatenated once (one 10 MB copy
  for MiniLM), the other weights stay zero-copy views of the file mapping.
* ``bfloat16``: matmuls in bf16 (AVX512-BF16 / AMX), LayerNorm, softmax and the residual stream in fp32.
* ``int8-mixed``: Q/K/V, attention output and FFN up-projection as dynamic per-token int8 activations x
  per-channel int8 weights through ``torch._int_mm`` (VNNI); the FFN down-projection in bf16, because its
  GELU outputs have outlier channels that per-token int8 cannot represent (see :mod:`quant.kernels`).
* ``int8``: every Linear through ``_int_mm``; the FFN down-projection is SmoothQuant-ed (per-input-channel
  scales ``s = amax_x^a / amax_w^(1-a)`` calibrated on real text, folded into the weight; the activation is
  divided by ``s`` at run time) so that its activations quantize well.

Measured on this machine class (AMD EPYC, AVX-512 VNNI/BF16, no AMX; 2 cores shared with other jobs, so 1
thread): minimum cosine to fp32 over 600 chat messages with one projection kind in int8 and the rest fp32, without
-> with SmoothQuant (alpha 0.8): Q/K/V 0.979 -> 0.9986, FFN up 0.9929 -> 0.9979 (0.9984 at alpha 0.5), attention
output 0.99974 unsmoothed, FFN down 0.9923 -> 0.987 (0.9929 at alpha 0.5). Smoothing rescues the LayerNorm-fed
projections (BERT's outlier channels) but not the down-projection, and errors add up: all four int8 give min
0.986-0.989 (``int8``), the three smoothed + bf16 down give min 0.9949-0.9961 (``int8-mixed``). The worst
sentence is always a short one ("Thank you"). Speed (600 messages, 1 thread, vs the HF ``BertModel`` fp32 eager
forward): ``bfloat16`` 1.86x, ``int8-mixed`` 2.25x, ``int8`` 2.24x (the down-projection's activation quantization
costs what its int8 matmul saves); ``float32`` 0.94-1.0x (the lean forward alone buys nothing measurable: at
~15 tokens per message the matmuls dominate, not Python overhead). Those figures had an fp32 residual stream
with casts around each bf16/int8 matmul; a bf16 stream (now the default for every precision but ``float32``) gave,
800 messages, 1 thread, one run: HF eager bf16 358/s, ``bfloat16`` 392/s, ``int8-mixed`` 411/s, ``int8`` 378/s,
at unchanged cosine. SDPA vs explicit softmax attention: 418 vs 433/s (within noise; SDPA kept).
Whole-run figures with the peers: ``scripts/bench_text_encoder.py`` (docs/benchmarks/text_encoder.json).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from arrowengine.errors import ModelConfigError
from arrowengine.runtime.fixed_linear import FixedLinear, calibrated_smooth_scales, fused_weight

__all__ = ["PRECISIONS", "FastBert", "FastBertConfig"]

logger = logging.getLogger(__name__)

PRECISIONS = ("float32", "bfloat16", "int8-mixed", "int8")


@dataclass
class FastBertConfig:
    """How :class:`FastBert` runs: ``precision`` (one of :data:`PRECISIONS`) and the SmoothQuant strength."""

    precision: str = "float32"
    smooth_alpha: float = 0.8  # best min cosine of 0.5 / 0.65 / 0.8 on 600 chat messages (int8-mixed)
    kinds: dict[str, str] | None = None  # per layer kind (qkv/out/up/down) override of the precision's choice


def _kinds(precision: str) -> dict[str, str]:
    if precision == "float32":
        return dict.fromkeys(("qkv", "out", "up", "down"), "float32")
    if precision == "bfloat16":
        return dict.fromkeys(("qkv", "out", "up", "down"), "bfloat16")
    if precision == "int8-mixed":
        return {"qkv": "int8", "out": "int8", "up": "int8", "down": "bfloat16"}
    return dict.fromkeys(("qkv", "out", "up", "down"), "int8")


def _projections(layer: nn.Module) -> dict[str, list[nn.Module]]:
    att = layer.attention
    return {"qkv": [att.self.query, att.self.key, att.self.value], "out": [att.output.dense],
            "up": [layer.intermediate.dense], "down": [layer.output.dense]}


class FastBert:
    """Callable BERT encoder: ``fast(input_ids=, attention_mask=, token_type_ids=)`` -> ``.last_hidden_state``.

    Args:
        model: a loaded ``transformers`` ``BertModel`` (fp32 weights, or ``QuantLinear`` layers of a V2 file).
        config: the precision (see the module docstring).
        calibration: token-id batches (``[(input_ids, attention_mask, token_type_ids)]``) for the ``int8``
            precision's SmoothQuant scales; required for ``int8``, ignored otherwise.
    """

    def __init__(self, model: nn.Module, config: FastBertConfig | None = None,
                 calibration: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = ()) -> None:
        self.config = config or FastBertConfig()
        if self.config.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.config.precision!r}")
        bert = getattr(model, "bert", model)
        if not hasattr(bert, "embeddings") or not hasattr(bert, "encoder"):
            raise ModelConfigError(f"{type(model).__name__} is not a BERT-style encoder; FastBert needs "
                                   f"embeddings + encoder.layer (use backend='eager' for other models)")
        if getattr(bert.config, "position_embedding_type", "absolute") != "absolute":
            raise ModelConfigError("FastBert supports absolute position embeddings only; use backend='eager'")
        cfg = bert.config
        self.heads = int(cfg.num_attention_heads)
        self.hidden = int(cfg.hidden_size)
        self.eps = float(cfg.layer_norm_eps)
        if cfg.hidden_act not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
            raise ModelConfigError(f"FastBert supports GELU activations, not {cfg.hidden_act!r}; use backend='eager'")
        self.activation = "gelu" if cfg.hidden_act == "gelu" else "gelu_tanh"  # FixedLinear's fused epilogue
        emb = bert.embeddings
        self.word = emb.word_embeddings.weight
        self.position = emb.position_embeddings.weight
        self.token_type = emb.token_type_embeddings.weight
        self.emb_norm = (emb.LayerNorm.weight, emb.LayerNorm.bias)
        kinds = _kinds(self.config.precision) | (self.config.kinds or {})
        # the residual stream, LayerNorm, GELU and attention run in bf16 unless every projection is float32:
        # measured faster than an fp32 stream with casts around each bf16/int8 matmul (see the module docstring)
        self.stream_dtype = torch.float32 if set(kinds.values()) == {"float32"} else torch.bfloat16
        # each projection kind's weights fused once: the SmoothQuant calibration and the FixedLinears share them
        fused = {(index, kind): fused_weight(modules) for index, layer in enumerate(bert.encoder.layer)
                 for kind, modules in _projections(layer).items()}
        smooth = self._smooth_scales(bert, calibration, kinds, fused)
        self.layers = []
        for index, layer in enumerate(bert.encoder.layer):
            linears = {kind: FixedLinear(*fused[(index, kind)], kinds[kind], smooth.get((index, kind)))
                       for kind in _projections(layer)}
            self.layers.append(SimpleNamespace(
                **linears,
                norm1=self._norm(layer.attention.output.LayerNorm),
                norm2=self._norm(layer.output.LayerNorm),
            ))
        logger.info("FastBert: %d layers, precision %s (%s)", len(self.layers), self.config.precision, kinds)

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
            raise ValueError("int8 projections need calibration batches for their SmoothQuant scales; pass "
                             "calibration=[(input_ids, attention_mask, token_type_ids), ...] or smooth_alpha=0")
        layers = list(bert.encoder.layer)

        def run() -> None:
            for ids, mask, types in calibration:
                bert(input_ids=ids, attention_mask=mask, token_type_ids=types)

        keys = [(index, kind) for index in range(len(layers)) for kind in wanted]
        return calibrated_smooth_scales({key: _projections(layers[key[0]])[key[1]] for key in keys},
                                        {key: fused[key][0] for key in keys}, run, self.config.smooth_alpha)

    def __call__(self, *, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> SimpleNamespace:
        """Encode a padded batch; returns ``SimpleNamespace(last_hidden_state=[B, S, H] float32)``."""
        batch, width = input_ids.shape
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = F.embedding(input_ids, self.word) + self.position[:width] + F.embedding(token_type_ids, self.token_type)
        x = F.layer_norm(x, (self.hidden,), *self.emb_norm, self.eps).view(batch * width, self.hidden)
        x = x.to(self.stream_dtype)
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask.bool()[:, None, None, :]
        head_dim = self.hidden // self.heads
        for layer in self.layers:
            qkv = layer.qkv(x).view(batch, width, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
            ctx = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask)
            ctx = ctx.transpose(1, 2).reshape(batch * width, self.hidden)
            x = F.layer_norm(layer.out(ctx, residual=x), (self.hidden,), *layer.norm1, self.eps)
            h = layer.up(x, activation=self.activation)
            x = F.layer_norm(layer.down(h, residual=x), (self.hidden,), *layer.norm2, self.eps)
        return SimpleNamespace(last_hidden_state=x.view(batch, width, self.hidden))
