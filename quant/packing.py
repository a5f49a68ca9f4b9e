"""Bit-packing of unsigned integer codes into bytes (part of the on-disk format, schema V2).

Bit order (little-endian inside each byte, packing along the last dimension, row-major):

* ``bits=8``: identity, one code per byte.
* ``bits=4``: two codes per byte. Code ``2i`` sits in the low nibble (bits 0-3) of byte ``i``, code ``2i+1``
  in the high nibble (bits 4-7): ``byte = c[2i] | c[2i+1] << 4``.
* ``bits=2``: four codes per byte. Code ``4i+j`` sits in bits ``2j .. 2j+1`` of byte ``i``:
  ``byte = c[4i] | c[4i+1] << 2 | c[4i+2] << 4 | c[4i+3] << 6``.

Each row (everything but the last dimension) is packed on its own: a last dimension of ``n`` codes becomes
``ceil(n * bits / 8)`` bytes. When ``n`` is not a multiple of ``8 // bits`` the row is padded with zero codes,
so the unused high bits of the last byte of each row are 0. :func:`unpack` needs ``count`` (the
original ``n``) to drop that padding.
"""

from __future__ import annotations

import torch

from quant.errors import PackingError, UnsupportedBitsError

__all__ = ["SUPPORTED_BITS", "pack", "packed_size", "unpack"]

SUPPORTED_BITS = (2, 4, 8)


def _check_bits(bits: int, what: str) -> int:
    if bits not in SUPPORTED_BITS:
        raise UnsupportedBitsError(f"{what}: bits={bits!r} is not supported; use one of 2, 4 or 8")
    return 8 // bits


def packed_size(count: int, bits: int) -> int:
    """Number of bytes that ``count`` codes of ``bits`` bits occupy in one packed row."""
    per_byte = _check_bits(bits, "packed_size")
    return -(-count // per_byte)


def _shifts(bits: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, bits, dtype=torch.uint8, device=device)


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes in ``[0, 2**bits)`` along the last dimension into bytes, in the module's bit order.

    For ``bits=8`` the contiguous input itself is returned (no copy when it already is contiguous).
    """
    per_byte = _check_bits(bits, "pack")
    if values.dtype != torch.uint8:
        raise PackingError(f"pack: values must be torch.uint8 codes, got {values.dtype}; convert with .to(torch.uint8)")
    if values.dim() == 0:
        raise PackingError("pack: values must have at least one dimension; reshape a scalar to shape (1,)")
    if bits == 8:
        return values.contiguous()
    if values.numel() and int(values.max()) >= 1 << bits:
        raise PackingError(
            f"pack: found code {int(values.max())} which does not fit in {bits} bits; codes must lie in "
            f"[0, {(1 << bits) - 1}]"
        )
    n = values.shape[-1]
    pad = (-n) % per_byte
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    grouped = values.reshape(*values.shape[:-1], -1, per_byte)
    # codes are < 2**bits, so shifting into disjoint bit fields and summing equals OR-ing them
    return (grouped << _shifts(bits, values.device)).sum(dim=-1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: the first ``count`` codes of each row as uint8.

    For ``bits=8`` this is a view of ``packed`` (zero-copy).
    """
    per_byte = _check_bits(bits, "unpack")
    if packed.dtype != torch.uint8:
        raise PackingError(f"unpack: packed data must be torch.uint8, got {packed.dtype}")
    if packed.dim() == 0:
        raise PackingError("unpack: packed data must have at least one dimension")
    needed = -(-count // per_byte)
    if count < 0 or packed.shape[-1] < needed:
        raise PackingError(
            f"unpack: {count} codes of {bits} bits need {needed} bytes per row but the packed rows hold "
            f"{packed.shape[-1]}; check the packed_shape recorded with the tensor"
        )
    if bits == 8:
        return packed[..., :count]
    mask = (1 << bits) - 1
    codes = (packed[..., :needed].unsqueeze(-1) >> _shifts(bits, packed.device)) & mask
    return codes.reshape(*packed.shape[:-1], needed * per_byte)[..., :count]
