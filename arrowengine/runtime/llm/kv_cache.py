"""A preallocated key/value cache: one tensor each for K and V, ``[layers, batch, kv_heads, max_len, head_dim]``.

Slots are shared by all rows of a batch: slot ``t`` holds the t-th token of every (left-padded) row, so a
prefill writes slots ``0..T`` and each decode step writes one slot, with no reallocation during a run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["KVCache"]


@dataclass
class KVCache:
    """Keys and values of every layer for one generation run."""

    keys: torch.Tensor
    values: torch.Tensor

    @classmethod
    def allocate(cls, layers: int, batch: int, kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype, device: torch.device | str = "cpu") -> KVCache:
        """Uninitialised K and V buffers (pages are touched only as slots fill)."""
        shape = (layers, batch, kv_heads, max_len, head_dim)
        return cls(torch.empty(shape, dtype=dtype, device=device), torch.empty(shape, dtype=dtype, device=device))

    @property
    def max_len(self) -> int:
        """Number of token slots."""
        return self.keys.shape[3]

    @property
    def nbytes(self) -> int:
        """Bytes held by K and V together."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k``/``v`` ``[B, kv_heads, T, head_dim]`` at slots ``start..start+T`` of ``layer``.

        Returns views of the layer's keys and values over slots ``0..start+T`` (no copy).
        """
        end = start + k.shape[2]
        assert end <= self.max_len, f"KV cache holds {self.max_len} slots; a write up to {end} overflows it"
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]
