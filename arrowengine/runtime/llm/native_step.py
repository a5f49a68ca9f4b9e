"""The decode step of a GGUF block model as one C call per layer (``llama_layer.c``).

Profiled on SmolLM2-135M (1 thread, 32 tokens, cProfile CPU time): the torch decode step over the block kernels
spent ~35 ms per token in the block products and ~25 ms in everything else (RMSNorm ~8 ms in 61 calls, the
Python layer loop ~7 ms, attention ~3.5 ms, ~400 other small ops). Here each layer is one ctypes call with the
per-layer constants (weights, norms, shapes) filled in once; a step only sets the hidden state, the rotary
rows, the cache slot and the mask. The final norm is one more C call and the (tied) lm_head one block product.
"""

from __future__ import annotations

import logging

import torch

from arrowengine.runtime.llm.llama import LlamaForward

__all__ = ["NativeBlockStep"]

logger = logging.getLogger(__name__)


def _eligible(forward: LlamaForward) -> str | None:
    """Why ``forward`` cannot run natively, or None when it can."""
    if forward.dtype != torch.float32 or forward.device.type != "cpu":
        return "activations are not float32 on CPU"
    if isinstance(forward.embed, torch.Tensor) or forward.lm_head.kind != "gguf":
        return "the embedding / lm_head are not GGUF blocks run by the native kernels"
    for lw in forward.layers:
        projections = (*lw.qkv, lw.o, *lw.gate_up, lw.down)
        if len(lw.qkv) != 1 or len(lw.gate_up) != 1:
            return "Q/K/V or gate/up are not fused (mixed block types)"
        if any(p.kind != "gguf" or p.bias is not None for p in projections):
            return "a projection is not GGUF blocks or has a bias"
    return None


class NativeBlockStep:
    """``step(tokens [B, 1], positions [B, 1], caches, slot, mask) -> fp32 logits [B, 1, vocab]``."""

    def __init__(self, forward: LlamaForward, kernels: object) -> None:
        from arrowengine.runtime.native.gguf import LayerArgs

        self.forward = forward
        self.kernels = kernels
        s = forward.spec
        # one contiguous array: a step is a single C call over all layers (see ae_llama_layers)
        self.layers = (LayerArgs * len(forward.layers))()
        for index, lw in enumerate(forward.layers):
            qkv, gate_up = lw.qkv[0].blocks, lw.gate_up[0].blocks
            o, down = lw.o.blocks, lw.down.blocks
            args = LayerArgs(
                hidden=s.hidden_size, heads=s.num_heads, kv_heads=s.num_kv_heads, head_dim=s.head_dim,
                inter=s.intermediate_size, eps=s.rms_norm_eps,
                attn_norm=lw.attn_norm.data_ptr(), mlp_norm=lw.mlp_norm.data_ptr(),
                qkv_type=qkv.kind.ggml_type, o_type=o.kind.ggml_type, gate_up_type=gate_up.kind.ggml_type,
                down_type=down.kind.ggml_type, qkv=qkv.data.data_ptr(), o=o.data.data_ptr(),
                gate_up=gate_up.data.data_ptr(), down=down.data.data_ptr(), qkv_stride=qkv.data.stride(0),
                o_stride=o.data.stride(0), gate_up_stride=gate_up.data.stride(0), down_stride=down.data.stride(0))
            self.layers[index] = args
        for norm in (*(lw.attn_norm for lw in forward.layers), forward.norm):
            assert norm.is_contiguous() and norm.dtype == torch.float32
        #: the layer reads an fp16 cache for 64-dim heads in groups of 1-4 per KV head (llama_layer.c's grouped
        #: attention): half the bytes of a decode step's attention, which waits on memory (8 rows x 64 slots
        #: ~30% less, one row x 512 slots ~40% less in a C driver), at one fp16 rounding of each key and value
        #: (llama.cpp's default cache type too); other shapes keep a float32 cache
        self.half_cache = s.head_dim == 64 and s.num_heads // s.num_kv_heads <= 4
        self._cache_dtypes = (torch.float32, torch.float16) if self.half_cache else (torch.float32,)

    @classmethod
    def create(cls, forward: LlamaForward) -> NativeBlockStep | None:
        """The native step for ``forward``, or None (with the reason at DEBUG) where it does not apply."""
        from arrowengine.runtime.native.gguf import block_kernels

        reason = _eligible(forward)
        kernels = block_kernels() if reason is None else None
        if reason is None and kernels is None:
            reason = "the native kernels are unavailable"
        if reason is not None:
            logger.debug("LLM: torch decode step (%s)", reason)
            return None
        logger.info("LLM: native decode step, one C call per layer over the GGUF blocks")
        return cls(forward, kernels)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Dequantized embedding rows ``[B, hidden]`` of ``tokens [B]`` (exact, by the native kernel)."""
        blocks = self.forward.embed
        out = torch.empty(tokens.shape[0], self.forward.spec.hidden_size)
        data, kind = blocks.data, blocks.kind.ggml_type
        for i, token in enumerate(tokens.tolist()):
            self.kernels.dequantize(kind, data[token].data_ptr(), 1, out.shape[1], data.stride(0), out[i].data_ptr())
        return out

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, caches: list[torch.Tensor], slot: int,
                 mask: torch.Tensor | None) -> torch.Tensor:
        """Feed one token per row at cache slot ``slot``; return the next-token logits."""
        bsz = tokens.shape[0]
        mask_u8 = None
        if mask is not None:
            mask_u8 = mask.reshape(bsz, slot + 1).to(torch.uint8).contiguous()
        return self._run(tokens.view(bsz), positions.view(bsz), caches, slot, mask_u8, None)

    def rows(self, tokens: torch.Tensor, cache_rows: torch.Tensor, lengths: torch.Tensor,
             caches: list[torch.Tensor]) -> torch.Tensor:
        """Continuous batching: feed ``tokens[i]`` to cache row ``cache_rows[i]`` at position and slot
        ``lengths[i]`` (each row at its own length, attending its own slots only); logits ``[B, 1, vocab]``."""
        cache_rows, lengths = cache_rows.to(torch.int64).contiguous(), lengths.to(torch.int64).contiguous()
        return self._run(tokens.view(-1), lengths, caches, 0, None, (lengths, cache_rows))

    def _run(self, tokens: torch.Tensor, pos: torch.Tensor, caches: list[torch.Tensor], slot: int,
             mask_u8: torch.Tensor | None, per_row: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        from arrowengine.runtime.native.gguf import threads

        fwd = self.forward
        bsz = tokens.shape[0]
        h = self.embed(tokens)
        cos, sin = fwd.cos[pos].contiguous(), fwd.sin[pos].contiguous()
        count = threads()
        mask_ptr = None if mask_u8 is None else mask_u8.data_ptr()
        slots_ptr, rows_ptr = (None, None) if per_row is None else (per_row[0].data_ptr(), per_row[1].data_ptr())
        for args, kv in zip(self.layers, caches, strict=True):
            if kv.dtype not in self._cache_dtypes or not kv.is_contiguous():
                raise RuntimeError("the native decode step needs a contiguous KV cache from new_cache")
            args.kv_half = kv.dtype == torch.float16
            args.batch, args.slot, args.max_len, args.threads = bsz, slot, kv.shape[2], count
            args.h, args.cos, args.sin, args.kv = h.data_ptr(), cos.data_ptr(), sin.data_ptr(), kv.data_ptr()
            args.mask, args.slots, args.kv_rows = mask_ptr, slots_ptr, rows_ptr
        status = self.kernels.layer(self.layers, len(self.layers))
        if status != 0:
            raise MemoryError(f"the native decoder layer failed with status {status}")
        normed = torch.empty_like(h)  # the final norm in C too: a torch op here woke torch's thread pool
        self.kernels.rms_norm(h.data_ptr(), fwd.norm.data_ptr(), bsz, h.shape[1], fwd.spec.rms_norm_eps,
                              normed.data_ptr())
        return fwd.lm_head(normed).view(bsz, 1, -1)
