"""A preallocated key/value cache: one tensor ``[layers, batch, 2 * kv_heads, max_len, head_dim]``.

Slots are shared by all rows of a batch: slot ``t`` holds the t-th token of every (left-padded) row, so a
prefill writes slots ``0..T`` and each decode step writes one slot, with no reallocation during a run. Keys
are heads ``0..kv_heads`` and values the heads after them, in the order of the K and V columns of a fused QKV
projection. Each head's slots are one contiguous run (head-major), so attention over a head streams memory:
with the heads of a slot side by side instead, a head's consecutive slots were 1.5 KB apart in SmolLM2 and
a 512-token context's keys and values read at half the bandwidth (0.81 vs 1.65 ms a token, 2 threads).
Attention reads ``[batch, kv_heads, len, head_dim]`` views (no copy). The dtype is the model's
``kv_dtype``: the activations' dtype, or fp16 where the native block step reads it (64-wide heads; half the bytes
of decode-time attention, which waits on memory); the torch paths widen an fp16 cache's slots before attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Keys and values of every layer for one generation run."""

    kv: torch.Tensor
    layers: list[torch.Tensor] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.layers = list(self.kv.unbind(0))  # per-layer views, so a step does no indexing by layer

    @classmethod
    def allocate(cls, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> KVCache:
        """Uninitialised buffers (pages are touched only as slots fill)."""
        return cls(torch.empty((layers, batch, 2 * kv_heads, max_len, head_dim), dtype=dtype, device=device))

    @property
    def kv_heads(self) -> int:
        """Key/value heads per layer."""
        return self.kv.shape[2] // 2

    @property
    def max_len(self) -> int:
        """Number of token slots."""
        return self.kv.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes held by K and V together."""
        return self.kv.numel() * self.kv.element_size()

    def view(self, layer: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of ``layer`` over slots ``0..end``, each ``[B, kv_heads, end, head_dim]`` (views)."""
        slots = self.layers[layer][:, :, :end]
        heads = self.kv_heads
        return slots[:, :heads], slots[:, heads:]

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``[B, kv_heads, T, head_dim]`` at slots ``start..start+T`` of ``layer``.

        Returns views of the layer's keys and values over slots ``0..start+T`` (no copy).
        """
        end = start + k.shape[2]
        assert end <= self.max_len, f"KV cache holds {self.max_len} slots; a write up to {end} overflows it"
        keys, values = self.view(layer, end)
        keys[:, :, start:end] = k
        values[:, :, start:end] = v
        return keys, values
