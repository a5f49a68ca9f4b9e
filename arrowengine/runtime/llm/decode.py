"""The single-token decode step: the general forward specialised to ``T == 1``, with fewer and in-place ops.

At 135M parameters a decode step runs ~1,000 small ops, so per-op overhead is a large share of a token's time.
This step keeps the hidden state 2-D, applies rotary in place on the fused QKV output (``x * cos + roll(x) *
sin_signed``, the same products as transformers' ``rotate_half``, so fp32 stays bitwise equal), stores K and V
of a token with one copy into the side-by-side cache, and reads the cache through strided views. (``torch.compile`` of
this step was tried: with the cache slot as a Python int the graph recompiles per length, and its first call had
not finished after minutes on a 2-core machine, so it is not offered.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from arrowengine.runtime.llm.kv_cache import KVCache
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.weights import Projection

__all__ = ["DecodeStep", "concat_projections", "step_tables", "torch_step"]

logger = logging.getLogger(__name__)


def concat_projections(parts: tuple[Projection, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
    """One callable applying fused parts (e.g. Q, K, V kept apart) and concatenating their outputs."""
    if len(parts) == 1:
        return parts[0]
    return lambda x: torch.cat([p(x) for p in parts], dim=-1)


def step_tables(forward: LlamaForward) -> tuple[torch.Tensor, torch.Tensor, list[tuple[Any, ...]]]:
    """``(cos, sin_signed, layers)`` of a one-token step: the rotary tables and each layer's
    ``(attn_norm, qkv, o, mlp_norm, gate_up, down)`` with fused parts concatenated."""
    half = forward.spec.head_dim // 2
    # rotate_half(x) * sin == roll(x, half) * sin_signed, element for element (the sign moves, no rounding)
    sin_signed = torch.cat([-forward.sin[:, :half], forward.sin[:, half:]], dim=-1)
    layers = [(lw.attn_norm, concat_projections(lw.qkv), lw.o, lw.mlp_norm, concat_projections(lw.gate_up), lw.down)
              for lw in forward.layers]
    return forward.cos, sin_signed, layers


class DecodeStep:
    """``step(tokens [B, 1], positions [B, 1], cache, slot, mask) -> fp32 logits [B, 1, vocab]``.

    Same contract as ``LlamaForward.forward`` for one new token per row; ``mask`` is None or a bool
    ``[B, 1, 1, slot + 1]`` (True = attend).
    """

    def __init__(self, forward: LlamaForward) -> None:
        self.forward = forward
        self.cos, self.sin_signed, self.layers = step_tables(forward)
        from arrowengine.runtime.llm.native_step import NativeBlockStep

        # a GGUF block model runs each layer as one C call; every other model the torch step below
        native = NativeBlockStep.create(forward)
        self._step = native or self._eager
        if native is not None and native.half_cache:
            forward.kv_dtype = torch.float16

    @property
    def native(self) -> Any:
        """The native block step (:class:`NativeBlockStep`) when it runs this model now, else None (a float
        model, or LoRA terms applied)."""
        return None if self.forward.low_rank_terms or self._step == self._eager else self._step

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, slot: int,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one token per row at cache slot ``slot``; return the next-token logits."""
        # the native layer call knows nothing of low-rank (LoRA) terms: the torch step runs while any is applied
        step = self._eager if self.forward.low_rank_terms else self._step
        return step(tokens, positions, cache.layers, slot, mask)

    def _eager(self, tokens: torch.Tensor, positions: torch.Tensor, caches: list[torch.Tensor], slot: int,
               mask: torch.Tensor | None) -> torch.Tensor:
        bsz = tokens.shape[0]
        logits = torch_step(self.forward, self.layers, self.cos, self.sin_signed, tokens.view(bsz),
                            positions.view(bsz), caches, slot, slot + 1, mask)
        return logits.view(bsz, 1, -1)


def torch_step(forward: LlamaForward, layers: list[tuple[Any, ...]], cos_table: torch.Tensor,
               sin_signed: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, caches: list[torch.Tensor],
               write: int | torch.Tensor, end: int, mask: torch.Tensor | None) -> torch.Tensor:
    """One new token per row through torch ops: fp32 logits ``[B, vocab]``.

    ``tokens`` / ``positions`` ``[B]``; ``caches`` the per-layer ``[rows >= B, 2 * kv_heads, max_len, head_dim]``
    tensors (rows ``0..B`` used); ``write`` the slot every row writes (int) or each row's own slot (``[B]``, the
    server's rows at their own lengths); attention over slots ``0..end`` under ``mask`` (bool, True = attend, or
    None). ``layers``, ``cos_table`` and ``sin_signed`` come from :func:`step_tables`. The step of
    :class:`DecodeStep` and of the server's batched decoder.
    """
    s = forward.spec
    bsz = tokens.shape[0]
    heads, kv_heads, head_dim, eps = s.num_heads, s.num_kv_heads, s.head_dim, s.rms_norm_eps
    q_size, qk_heads, n_rep = heads * head_dim, heads + kv_heads, heads // kv_heads
    half = head_dim // 2
    norm_shape = forward.norm.shape
    cos = cos_table[positions].unsqueeze(1)  # [B, 1, head_dim], broadcast over the Q and K heads
    sin = sin_signed[positions].unsqueeze(1)
    rows = torch.arange(bsz, device=tokens.device) if isinstance(write, torch.Tensor) else slice(0, bsz)
    h = forward.embed_tokens(tokens)
    for (attn_norm, qkv_proj, o_proj, mlp_norm, gate_up_proj, down_proj), kv in zip(layers, caches, strict=True):
        qkv = qkv_proj(F.rms_norm(h, norm_shape, attn_norm, eps))
        qk = qkv[:, :q_size + kv_heads * head_dim].view(bsz, qk_heads, head_dim)
        rolled = torch.roll(qk, half, -1).mul_(sin)
        qk.mul_(cos).add_(rolled)
        kv[rows, :, write] = qkv[:, q_size:].reshape(bsz, 2 * kv_heads, head_dim)
        slots = kv[:bsz, :, :end] if kv.dtype == h.dtype else kv[:bsz, :, :end].to(h.dtype)  # fp16: widened
        keys, values = slots[:, :kv_heads], slots[:, kv_heads:]
        q = qkv[:, :q_size].view(bsz, kv_heads, n_rep, head_dim)  # query heads of a KV group as its rows
        attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        h = h + o_proj(attn.reshape(bsz, q_size))
        gate, up = gate_up_proj(F.rms_norm(h, norm_shape, mlp_norm, eps)).chunk(2, dim=-1)
        h = h + down_proj(F.silu(gate).mul_(up))
    h = F.rms_norm(h, norm_shape, forward.norm, eps)
    return forward.lm_head(h).float()
