"""Our own compact Llama forward over the weights of a ``transformers`` ``LlamaForCausalLM``.

The tensors are taken from the HF module, not copied (fp32); a bf16 run makes one bf16 copy, and fuses the
Q/K/V and gate/up projections into one matmul each while it copies anyway; int8 / int4 weight-only packing is
in :mod:`arrowengine.runtime.llm.weights`, the single-token decode step in :mod:`arrowengine.runtime.llm.decode`.
The forward is a flat loop of functional ops: RMSNorm, rotary from precomputed tables, GQA attention through
``F.scaled_dot_product_attention`` over a preallocated KV cache, SwiGLU MLP, tied or untied lm_head.
Numerics follow transformers (RMSNorm in fp32, rotary tables in fp32 cast to the model dtype) so greedy
tokens match ``transformers.generate``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arrowengine.runtime.llm.errors import UnsupportedModelError
from arrowengine.runtime.llm.kv_cache import KVCache
from arrowengine.runtime.llm.weights import Projection, WeightOptions, can_fuse, fused

__all__ = ["LayerWeights", "LlamaForward", "LlamaSpec"]

logger = logging.getLogger(__name__)

# rope variants whose tables do not depend on the sequence length (dynamic / longrope do)
_STATIC_ROPE = {"default", "linear", "llama3", "yarn"}


@dataclass(frozen=True)
class LlamaSpec:
    """The shape of a Llama model, read from its ``transformers`` config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int

    @classmethod
    def from_config(cls, config: Any) -> LlamaSpec:
        """Validate that ``config`` describes a plain Llama decoder and return its shape."""
        model_type = getattr(config, "model_type", None)
        if model_type != "llama":
            raise UnsupportedModelError(
                f"LLM runs Llama-architecture models only; this model has model_type={model_type!r} "
                f"(use transformers generate for it, or convert a Llama model)")
        if getattr(config, "hidden_act", "silu") != "silu":
            raise UnsupportedModelError(
                f"LLM supports hidden_act='silu' only; the model uses {config.hidden_act!r}")
        heads = config.num_attention_heads
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            rms_norm_eps=float(config.rms_norm_eps),
            max_position_embeddings=config.max_position_embeddings,
        )


@dataclass
class LayerWeights:
    """One decoder layer; ``qkv`` / ``gate_up`` hold one fused projection or the separate parts."""

    attn_norm: torch.Tensor
    qkv: tuple[Projection, ...]
    o: Projection
    mlp_norm: torch.Tensor
    gate_up: tuple[Projection, ...]
    down: Projection

    def projections(self) -> tuple[Projection, ...]:
        """Every matrix of the layer."""
        return (*self.qkv, self.o, *self.gate_up, self.down)


def rope_tables(config: Any, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos`` / ``sin`` tables ``[length, head_dim]`` for positions ``0..length-1``, as transformers."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    params = getattr(config, "rope_parameters", None) or {}
    rope_type = params.get("rope_type", "default")
    if rope_type not in _STATIC_ROPE:
        raise UnsupportedModelError(
            f"LLM does not support rope_type={rope_type!r} (its tables change with sequence length); "
            f"supported: {sorted(_STATIC_ROPE)}")
    if rope_type == "default":
        base = params.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
        scaling = 1.0
    else:
        inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](config, device="cpu")
    # same fp32 product as transformers (position * inv_freq), so the tables are bitwise equal to its own
    freqs = torch.arange(length, dtype=torch.float)[:, None] * inv_freq.float()[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * scaling).to(device), (emb.sin() * scaling).to(device)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # one fused op; in fp32 bitwise equal to transformers' LlamaRMSNorm (bf16: the weight is applied before rounding)
    return F.rms_norm(x, weight.shape, weight, eps)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaForward:
    """The decoder as plain tensors: ``forward(tokens, positions, cache, start, mask) -> logits``.

    ``dtype`` is the activation dtype; fp32 uses the model's tensors as they are (no copy) unless ``fuse``
    asks for fused Q/K/V and gate/up (one concatenated copy). ``weight_quant`` ``"int8"`` / ``"int4"`` packs
    the matrices (and the lm_head unless ``quantize_lm_head=False``) for weight-only integer matmuls; the
    embedding lookup then reads the model's own table and casts the rows it gathers.
    """

    def __init__(self, model: Any, *, dtype: torch.dtype = torch.float32, fuse: bool | None = None,
                 max_positions: int | None = None, weight_quant: str | None = None, group_size: int = 32,
                 quantize_lm_head: bool = True) -> None:
        self.options = WeightOptions(dtype=dtype, fuse=fuse, weight_quant=weight_quant, group_size=group_size,
                                     quantize_lm_head=quantize_lm_head)
        self.config = model.config
        self.spec = LlamaSpec.from_config(model.config)
        self.dtype = dtype
        # the KV cache's dtype: the activations' unless the decode step reads fp16 keys and values (DecodeStep
        # sets it for the native block step); prefill attention reads the same rounded slots
        self.kv_dtype = dtype
        inner = model.model
        source = inner.embed_tokens.weight
        blocks = not isinstance(source, torch.Tensor)  # GGUF blocks (a block model, see block_model.py)
        self.device = torch.device("cpu") if blocks else source.device
        copying = blocks or source.dtype != dtype or weight_quant is not None
        # fusing concatenates (a copy): free when we copy to another dtype anyway, opt-in otherwise
        self.fused = copying if fuse is None else fuse
        started = time.perf_counter()
        head = model.lm_head.weight
        tied = head is source or (isinstance(head, torch.Tensor) and not blocks
                                  and head.data_ptr() == source.data_ptr())
        if weight_quant == "gguf" or blocks or not isinstance(head, torch.Tensor):
            # the table stays blocks (rows dequantized as gathered); a tied lm_head runs over the same blocks
            self.embed = source if blocks else source.detach().to(dtype)
            self.lm_head = Projection(head, None, dtype=dtype, quant=weight_quant, name="lm_head")
        elif weight_quant is not None and quantize_lm_head:
            self.embed = source.detach()  # rows are cast as they are gathered: no second copy of the table
            self.lm_head = Projection(head, None, dtype=dtype, quant=weight_quant, group_size=group_size,
                                      name="lm_head")
        else:
            self.embed = source.detach().to(dtype)
            self.lm_head = Projection(self.embed if tied else head, None, dtype=dtype, name="lm_head")
        self.norm = inner.norm.weight.detach().to(dtype)
        self.layers = [self._layer(i, layer) for i, layer in enumerate(inner.layers)]
        self.low_rank_terms = 0  # low-rank (LoRA) terms applied on top of the weights (low_rank.add_low_rank)
        length = max_positions or self.spec.max_position_embeddings
        cos, sin = rope_tables(self.config, length, self.device)
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)
        if copying or self.fused:
            logger.info("LLM: weights %s -> %s, %s, %s, lm_head %s: %.1f MB per token, prepared in %.2f s",
                        getattr(source, "dtype", "GGUF blocks"), dtype,
                        "fused QKV and gate/up" if self.fused else "unfused",
                        weight_quant or "no weight quantization", self.lm_head.kind,
                        self.weight_bytes_per_token / 1e6, time.perf_counter() - started)

    def _layer(self, index: int, layer: Any) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        if getattr(mlp.gate_proj, "bias", None) is not None:
            raise UnsupportedModelError("LLM does not support mlp_bias=True Llama variants")
        o = self.options

        def proj(weight: torch.Tensor, bias: torch.Tensor | None, name: str) -> Projection:
            return Projection(weight, bias, dtype=o.dtype, quant=o.weight_quant, group_size=o.group_size,
                              name=f"layers.{index}.{name}")

        qkv_mods = (attn.q_proj, attn.k_proj, attn.v_proj)
        biases = [m.bias for m in qkv_mods]
        fusable = can_fuse([m.weight for m in qkv_mods]) and can_fuse([mlp.gate_proj.weight, mlp.up_proj.weight])
        if self.fused and fusable and (all(b is None for b in biases) or all(b is not None for b in biases)):
            bias = None if biases[0] is None else fused(biases)
            qkv = (proj(fused([m.weight for m in qkv_mods]), bias, "qkv"),)
            gate_up = (proj(fused([mlp.gate_proj.weight, mlp.up_proj.weight]), None, "gate_up"),)
        else:
            qkv = tuple(proj(m.weight, m.bias, n) for m, n in zip(qkv_mods, ("q", "k", "v"), strict=True))
            gate_up = (proj(mlp.gate_proj.weight, None, "gate"), proj(mlp.up_proj.weight, None, "up"))
        return LayerWeights(
            attn_norm=layer.input_layernorm.weight.detach().to(o.dtype), qkv=qkv,
            o=proj(attn.o_proj.weight, attn.o_proj.bias, "o"),
            mlp_norm=layer.post_attention_layernorm.weight.detach().to(o.dtype), gate_up=gate_up,
            down=proj(mlp.down_proj.weight, None, "down"))

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every matrix, the lm_head, the norms, one embedding row."""
        row = (self.embed.nbytes // self.spec.vocab_size if not isinstance(self.embed, torch.Tensor)
               else self.spec.hidden_size * self.embed.element_size())
        total = self.lm_head.nbytes + row
        for lw in self.layers:
            total += sum(p.nbytes for p in lw.projections())
            total += (lw.attn_norm.numel() + lw.mlp_norm.numel()) * lw.attn_norm.element_size()
        return total + self.norm.numel() * self.norm.element_size()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A KV cache for ``batch`` rows of up to ``max_len`` tokens, in :attr:`kv_dtype`."""
        s = self.spec
        return KVCache.allocate(s.num_layers, batch, s.num_kv_heads, max_len, s.head_dim,
                                dtype=self.kv_dtype, device=self.device)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedding rows of ``tokens`` in the activation dtype."""
        if not isinstance(self.embed, torch.Tensor):  # GGUF blocks: dequantize the gathered rows only
            return self.embed.dequantize(tokens.reshape(-1)).view(*tokens.shape, -1).to(self.dtype)
        h = F.embedding(tokens, self.embed)
        return h if h.dtype == self.dtype else h.to(self.dtype)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, start: int,
                mask: torch.Tensor | None = None, last_only: bool = True) -> torch.Tensor:
        """Run ``tokens [B, T]`` at ``positions [B, T]``, writing K/V to cache slots ``start..start+T``.

        ``mask`` is a bool ``[B, 1, T, start+T]`` (True = attend) or None for plain causal attention over
        the cache. Returns fp32 logits ``[B, 1 or T, vocab]``.
        """
        s = self.spec
        bsz, seq = tokens.shape
        end = start + seq
        h = self.embed_tokens(tokens)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        n_rep = s.num_heads // s.num_kv_heads
        causal = mask is None and seq > 1 and start == 0
        if mask is None and seq > 1 and start > 0:
            mask = _offset_causal(seq, end, tokens.device)
        for i, lw in enumerate(self.layers):
            x = _rms_norm(h, lw.attn_norm, s.rms_norm_eps)
            if len(lw.qkv) == 1:
                q, k, v = lw.qkv[0](x).split((q_size, kv_size, kv_size), dim=-1)
            else:
                q, k, v = (p(x) for p in lw.qkv)
            q = _rotate(q.view(bsz, seq, s.num_heads, s.head_dim).transpose(1, 2), cos, sin)
            k = _rotate(k.view(bsz, seq, s.num_kv_heads, s.head_dim).transpose(1, 2), cos, sin)
            v = v.view(bsz, seq, s.num_kv_heads, s.head_dim).transpose(1, 2)
            keys, values = cache.write(i, start, k, v)
            if keys.dtype != q.dtype:  # an fp16 cache: attend over the rounded slots, as the decode step does
                keys, values = keys.to(q.dtype), values.to(q.dtype)
            if seq == 1:
                # one query per row: fold the query heads of a KV group into its "sequence" axis (no repeat)
                qg = q.reshape(bsz, s.num_kv_heads, n_rep, s.head_dim)
                attn = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask)
                attn = attn.reshape(bsz, 1, q_size)
            else:
                attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal,
                                                      enable_gqa=n_rep > 1)
                attn = attn.transpose(1, 2).reshape(bsz, seq, q_size)
            h = h + lw.o(attn)
            x = _rms_norm(h, lw.mlp_norm, s.rms_norm_eps)
            if len(lw.gate_up) == 1:
                gate, up = lw.gate_up[0](x).chunk(2, dim=-1)
            else:
                gate, up = lw.gate_up[0](x), lw.gate_up[1](x)
            h = h + lw.down(F.silu(gate) * up)
        if last_only:
            h = h[:, -1:]
        h = _rms_norm(h, self.norm, s.rms_norm_eps)
        return self.lm_head(h).float()


def _offset_causal(seq: int, end: int, device: torch.device) -> torch.Tensor:
    # queries sit at slots end-seq..end-1 and see every slot up to their own
    rows = torch.arange(end - seq, end, device=device)[:, None]
    return (torch.arange(end, device=device)[None, :] <= rows)[None, None]
