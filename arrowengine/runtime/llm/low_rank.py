"""Low-rank terms on the LLM's projections: ``y += x @ down.T @ up.T`` beside the base weights (LoRA adapters).

The base weights stay as they are (mapped, cast or packed), so an adapter is added and removed without
reloading the model and removal restores the base exactly. A fused Q/K/V or gate/up projection takes the term
on the output rows of the part it names.
"""

from __future__ import annotations

import re

import torch

from arrowengine.runtime.llm.errors import UnsupportedModelError
from arrowengine.runtime.llm.llama import LlamaForward
from arrowengine.runtime.llm.weights import Projection

__all__ = ["add_low_rank", "remove_low_rank", "resolve_projection"]

_MODULE = re.compile(r"^(?:.*\.)?layers\.(\d+)\.(self_attn|mlp)\.(q|k|v|o|gate|up|down)_proj$")


def resolve_projection(forward: LlamaForward, module: str) -> tuple[Projection, slice]:
    """The projection computing transformers module ``module`` and the output rows that are its own."""
    match = _MODULE.match(module)
    if match is None:
        raise UnsupportedModelError(
            f"no projection for module {module!r}: low-rank terms go on 'model.layers.<i>.self_attn.<q|k|v|o>_proj' "
            f"or 'model.layers.<i>.mlp.<gate|up|down>_proj'")
    index, part = int(match.group(1)), match.group(3)
    if index >= len(forward.layers):
        raise UnsupportedModelError(f"module {module!r}: the model has {len(forward.layers)} layers")
    layer, s = forward.layers[index], forward.spec
    if part in ("o", "down"):
        proj = layer.o if part == "o" else layer.down
        return proj, slice(0, proj.out_features)
    sizes = {"q": s.num_heads * s.head_dim, "k": s.num_kv_heads * s.head_dim, "v": s.num_kv_heads * s.head_dim,
             "gate": s.intermediate_size, "up": s.intermediate_size}
    order = ("q", "k", "v") if part in ("q", "k", "v") else ("gate", "up")
    group = layer.qkv if part in ("q", "k", "v") else layer.gate_up
    if len(group) == len(order):  # kept apart: the part is a projection of its own
        proj = group[order.index(part)]
        return proj, slice(0, proj.out_features)
    start = sum(sizes[p] for p in order[:order.index(part)])
    return group[0], slice(start, start + sizes[part])


def add_low_rank(forward: LlamaForward, key: str, module: str, down: torch.Tensor, up: torch.Tensor) -> None:
    """Add ``x @ down.T @ up.T`` to the output of ``module`` under ``key`` (replacing an earlier term of ``key`` on
    the same module)."""
    proj, rows = resolve_projection(forward, module)
    rank = down.shape[0]
    if down.dim() != 2 or up.dim() != 2 or down.shape[1] != proj.in_features or up.shape != (rows.stop - rows.start,
                                                                                            rank):
        raise UnsupportedModelError(
            f"low-rank term for {module!r} has down {list(down.shape)} / up {list(up.shape)}; the projection needs "
            f"down [r, {proj.in_features}] and up [{rows.stop - rows.start}, r]")
    dtype = forward.dtype
    # keyed by module too: a fused Q/K/V projection carries the q and the v term of one adapter side by side
    proj.low_rank[(key, module)] = (down.detach().to(forward.device, dtype), up.detach().to(forward.device, dtype),
                                    rows)
    forward.low_rank_terms = _count(forward)  # the decode step takes the torch path while any term is on


def _count(forward: LlamaForward) -> int:
    return sum(len(proj.low_rank) for layer in forward.layers for proj in layer.projections())


def remove_low_rank(forward: LlamaForward, key: str) -> int:
    """Drop every term added under ``key``; the number dropped."""
    dropped = 0
    for layer in forward.layers:
        for proj in layer.projections():
            for term in [t for t in proj.low_rank if t[0] == key]:
                del proj.low_rank[term]
                dropped += 1
    forward.low_rank_terms = _count(forward)
    return dropped
