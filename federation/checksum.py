"""xxh64 checksums of tensors and cards, the same hash the weight format stores per tensor chunk."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import xxhash

from arrowengine.format.rows import tensor_bytes
from arrowengine.format.schema import dtype_name

__all__ = ["bytes_checksum", "model_checksum", "tensors_checksum"]


def bytes_checksum(*parts: bytes | memoryview) -> int:
    """xxh64 of the concatenated ``parts``."""
    digest = xxhash.xxh64()
    for part in parts:
        digest.update(part)
    return digest.intdigest()


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex xxh64 over names, dtypes, shapes and bytes of ``tensors`` in name order: equal iff bitwise equal."""
    digest = xxhash.xxh64()
    for name in sorted(tensors):
        t = tensors[name]
        digest.update(f"{name}|{dtype_name(t.dtype)}|{list(t.shape)}|".encode())
        digest.update(memoryview(tensor_bytes(name, t)))
    return digest.hexdigest()


def model_checksum(source: str | os.PathLike[str] | Mapping[str, torch.Tensor] | torch.nn.Module) -> str:
    """Identity of a base model: for a model directory / weight file, the xxh64 of its stored per-tensor
    checksums (read from the footer, no tensor is touched); for a module or state dict, of its tensors."""
    if isinstance(source, (str, os.PathLike)):
        from arrowengine.format.reader import WeightFile

        weights = WeightFile.open(source)
        digest = xxhash.xxh64()
        for name in sorted(weights):
            info = weights.info(name)
            digest.update(f"{name}|{list(info.shape)}|{','.join(map(str, info.checksums))}|".encode())
        return digest.hexdigest()
    if isinstance(source, torch.nn.Module):
        source = source.state_dict()
    return tensors_checksum(source)
