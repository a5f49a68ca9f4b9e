"""Our own compact Llama forward over the weights of a ``transformers`` ``LlamaForCausalLM``.

The tensors are taken from the HF module, not copied (fp32); a bf16 run makes one bf16 copy, and fuses the
Q/K/V and gate/up projections into one matmul each while it copies anyway. The forward is a flat loop of
functional ops: RMSNorm, rotary from precomputed tables, GQA attention through
``F.scaled_dot_product_attention`` over a preallocated KV cache, SwiGLU MLP, tied or untied lm_head.
Numerics follow transformers (RMSNorm in fp32, rotary tables in fp32 cast to the model dtype) so greedy
tokens match ``transformers.generate``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from arrowengine.runtime.llm.errors import UnsupportedModelError
from arrowengine.runtime.llm.kv_cache import KVCache

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
    """One decoder layer's tensors; ``qkv`` / ``gate_up`` are either one fused tensor or a tuple of parts."""

    attn_norm: torch.Tensor
    qkv: torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    qkv_bias: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]
    o: torch.Tensor
    o_bias: torch.Tensor | None
    mlp_norm: torch.Tensor
    gate_up: torch.Tensor | tuple[torch.Tensor, torch.Tensor]
    down: torch.Tensor


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
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaForward:
    """The decoder as plain tensors: ``forward(tokens, positions, cache, start, mask) -> logits``."""

    def __init__(self, model: Any, *, dtype: torch.dtype = torch.float32, fuse: bool | None = None,
                 max_positions: int | None = None) -> None:
        self.config = model.config
        self.spec = LlamaSpec.from_config(model.config)
        self.dtype = dtype
        inner = model.model
        device = inner.embed_tokens.weight.device
        self.device = device
        source_dtype = inner.embed_tokens.weight.dtype
        copying = source_dtype != dtype
        # fusing concatenates (a copy): free when we copy to another dtype anyway, opt-in otherwise
        self.fused = copying if fuse is None else fuse
        if copying:
            logger.info("LLM: copying weights %s -> %s (%s)", source_dtype, dtype,
                        "fused QKV and gate/up" if self.fused else "unfused")

        def cast(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.detach().to(dtype)

        self.embed = cast(inner.embed_tokens.weight)
        head = model.lm_head.weight
        tied = head.data_ptr() == inner.embed_tokens.weight.data_ptr()
        self.lm_head = self.embed if tied else cast(head)
        self.norm = cast(inner.norm.weight)
        self.layers = [self._layer(layer, cast) for layer in inner.layers]
        length = max_positions or self.spec.max_position_embeddings
        cos, sin = rope_tables(self.config, length, device)
        self.cos, self.sin = cos.to(dtype), sin.to(dtype)

    def _layer(self, layer: Any, cast: Any) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = (cast(attn.q_proj.weight), cast(attn.k_proj.weight), cast(attn.v_proj.weight))
        gate_up = (cast(mlp.gate_proj.weight), cast(mlp.up_proj.weight))
        biases = (cast(attn.q_proj.bias), cast(attn.k_proj.bias), cast(attn.v_proj.bias))
        if getattr(mlp.gate_proj, "bias", None) is not None:
            raise UnsupportedModelError("LLM does not support mlp_bias=True Llama variants")
        if self.fused and biases[0] is None:
            qkv = torch.cat(qkv, dim=0)
            gate_up = torch.cat(gate_up, dim=0)
        return LayerWeights(
            attn_norm=cast(layer.input_layernorm.weight), qkv=qkv, qkv_bias=biases,
            o=cast(attn.o_proj.weight), o_bias=cast(attn.o_proj.bias),
            mlp_norm=cast(layer.post_attention_layernorm.weight), gate_up=gate_up, down=cast(mlp.down_proj.weight))

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads: every matrix, the lm_head, one embedding row."""
        total = self.lm_head.numel() * self.lm_head.element_size() + self.spec.hidden_size * self.embed.element_size()
        for lw in self.layers:
            for t in (lw.attn_norm, lw.o, lw.mlp_norm, lw.down, *_parts(lw.qkv), *_parts(lw.gate_up)):
                total += t.numel() * t.element_size()
        return total + self.norm.numel() * self.norm.element_size()

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """A KV cache for ``batch`` rows of up to ``max_len`` tokens, in the model dtype."""
        s = self.spec
        return KVCache.allocate(s.num_layers, batch, s.num_kv_heads, max_len, s.head_dim,
                                dtype=self.dtype, device=self.device)

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
        h = F.embedding(tokens, self.embed)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        q_size, kv_size = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        n_rep = s.num_heads // s.num_kv_heads
        causal = mask is None and seq > 1 and start == 0
        if mask is None and seq > 1 and start > 0:
            mask = _offset_causal(seq, end, tokens.device)
        for i, lw in enumerate(self.layers):
            x = _rms_norm(h, lw.attn_norm, s.rms_norm_eps)
            if isinstance(lw.qkv, torch.Tensor):
                q, k, v = F.linear(x, lw.qkv).split((q_size, kv_size, kv_size), dim=-1)
            else:
                q, k, v = (F.linear(x, w, b) for w, b in zip(lw.qkv, lw.qkv_bias, strict=True))
            q = _rotate(q.view(bsz, seq, s.num_heads, s.head_dim).transpose(1, 2), cos, sin)
            k = _rotate(k.view(bsz, seq, s.num_kv_heads, s.head_dim).transpose(1, 2), cos, sin)
            v = v.view(bsz, seq, s.num_kv_heads, s.head_dim).transpose(1, 2)
            keys, values = cache.write(i, start, k, v)
            if seq == 1:
                # one query per row: fold the query heads of a KV group into its "sequence" axis (no repeat)
                qg = q.reshape(bsz, s.num_kv_heads, n_rep, s.head_dim)
                attn = F.scaled_dot_product_attention(qg, keys, values, attn_mask=mask)
                attn = attn.reshape(bsz, 1, q_size)
            else:
                attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, is_causal=causal,
                                                      enable_gqa=n_rep > 1)
                attn = attn.transpose(1, 2).reshape(bsz, seq, q_size)
            h = h + F.linear(attn, lw.o, lw.o_bias)
            x = _rms_norm(h, lw.mlp_norm, s.rms_norm_eps)
            if isinstance(lw.gate_up, torch.Tensor):
                gate, up = F.linear(x, lw.gate_up).chunk(2, dim=-1)
            else:
                gate, up = F.linear(x, lw.gate_up[0]), F.linear(x, lw.gate_up[1])
            h = h + F.linear(F.silu(gate) * up, lw.down)
        if last_only:
            h = h[:, -1:]
        h = _rms_norm(h, self.norm, s.rms_norm_eps)
        return F.linear(h, self.lm_head).float()


def _parts(t: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return (t,) if isinstance(t, torch.Tensor) else t


def _offset_causal(seq: int, end: int, device: torch.device) -> torch.Tensor:
    # queries sit at slots end-seq..end-1 and see every slot up to their own
    rows = torch.arange(end - seq, end, device=device)[:, None]
    return (torch.arange(end, device=device)[None, :] <= rows)[None, None]
