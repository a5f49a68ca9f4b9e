"""``QuantEmbedding``: an ``nn.Embedding`` replacement whose table stays quantized.

The table ``[num_embeddings, dim]`` is a :class:`QuantizedTensor` quantized along ``dim`` (one scale and zero
point per row for ``group_size=0``: int8 rows with per-row scales), so it needs the schema V2 row type Linear
weights already use. A lookup gathers the packed rows of the requested ids and dequantizes only those: the
whole table is never materialised in float, which keeps a vocabulary table at about a quarter of its float32
bytes in memory as on disk.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from quant.errors import QuantShapeError
from quant.rtn import QuantizedTensor, dequantize, quantize

__all__ = ["QuantEmbedding", "quantize_embedding"]

logger = logging.getLogger(__name__)


def quantize_embedding(table: torch.Tensor, bits: int = 8, *, name: str = "embedding") -> QuantizedTensor:
    """RTN-quantize an embedding table ``[num_embeddings, dim]`` row by row (one scale and zero point per row)."""
    if table.dim() != 2:
        raise QuantShapeError(f"{name}: an embedding table is 2-D [num_embeddings, dim], got shape {list(table.shape)}")
    return quantize(table.detach(), bits, 0, axis=1, name=name)


class QuantEmbedding(nn.Module):
    """A lookup table ``table[ids]`` held as a :class:`QuantizedTensor` (buffers ``packed_weight``, ``scales``,
    ``zero_points``, registered without copying: zero-copy views when loaded from a mapped file).

    Args:
        qweight: the quantized table, shape ``[num_embeddings, dim]``, quantized along axis 1.
        padding_idx: kept for ``nn.Embedding`` compatibility (it only matters for gradients).
        dtype: the dtype of the returned vectors.
        name: used in error messages.
    """

    def __init__(self, qweight: QuantizedTensor, *, padding_idx: int | None = None,
                 dtype: torch.dtype = torch.float32, name: str = "") -> None:
        super().__init__()
        label = name or qweight.name
        if len(qweight.shape) != 2 or qweight.axis != 1:
            raise QuantShapeError(f"{label}: QuantEmbedding needs a 2-D table [num_embeddings, dim] quantized "
                                  f"along axis 1, got shape {list(qweight.shape)} axis {qweight.axis}")
        self.num_embeddings, self.embedding_dim = qweight.shape
        self.padding_idx, self.dtype, self.name = padding_idx, dtype, label
        self.bits, self.group_size, self.symmetric = qweight.bits, qweight.group_size, qweight.symmetric
        self.register_buffer("packed_weight", qweight.packed)
        self.register_buffer("scales", qweight.scales)
        self.register_buffer("zero_points", qweight.zero_points)
        logger.debug("%s: QuantEmbedding %d x %d, int%d rows", label, self.num_embeddings, self.embedding_dim,
                     self.bits)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, bits: int = 8, *, name: str = "") -> QuantEmbedding:
        """Quantize an ``nn.Embedding``'s table row by row and wrap it."""
        qt = quantize_embedding(embedding.weight, bits, name=name or "embedding")
        return cls(qt, padding_idx=embedding.padding_idx, dtype=embedding.weight.dtype, name=name)

    def _rows(self, index: torch.Tensor) -> QuantizedTensor:
        return QuantizedTensor(packed=self.packed_weight.index_select(0, index),
                               scales=self.scales.index_select(0, index),
                               zero_points=self.zero_points.index_select(0, index), bits=self.bits,
                               group_size=self.group_size, shape=(index.numel(), self.embedding_dim), axis=1,
                               symmetric=self.symmetric, name=self.name or "embedding")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """The vectors ``[*ids.shape, dim]`` of ``ids`` (only these rows are dequantized)."""
        flat = ids.reshape(-1)
        if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= self.num_embeddings):
            raise QuantShapeError(f"{self.name}: ids must lie in [0, {self.num_embeddings}), got values in "
                                  f"[{int(flat.min())}, {int(flat.max())}]")
        return dequantize(self._rows(flat), self.dtype).view(*ids.shape, self.embedding_dim)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The whole float table ``[num_embeddings, dim]`` (a new tensor; the forward never builds it)."""
        return dequantize(self._rows(torch.arange(self.num_embeddings)), dtype)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim}, bits={self.bits}, group_size={self.group_size}"
                f"{'' if self.padding_idx is None else f', padding_idx={self.padding_idx}'}")
