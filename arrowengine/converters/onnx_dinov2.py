"""Read the DINOv2 ViT backbone out of an ONNX graph into transformers' ``Dinov2Model`` naming.

The graph (exported from a transformers ``Dinov2Model`` wrapped as ``backbone``) keeps most parameter names
as initializers, but the exporter stores every linear weight as an anonymous, transposed ``onnx::MatMul_N``
and the position embedding as two constant-folded pieces. Both are recovered from the graph's structure,
not from names: a ``MatMul`` whose output feeds an ``Add`` with a named ``*.bias`` is that layer's weight; the
class and patch position embeddings are the ``[1, 1, D]`` initializer the embedding ``Concat`` takes and the
``[1, N, D]`` one a ``Reshape`` takes. Tensors outside the backbone (the saliency head) are dropped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import ConversionError

__all__ = ["BACKBONE_PREFIX", "backbone_output_name", "detect", "read"]

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
# ONNX ModelProto field 1 (ir_version, varint) is written first by every exporter: byte 0x08.
_ONNX_FIRST_BYTE = b"\x08"
# The preprocessing every DINOv2 checkpoint on the Hub ships (BitImageProcessor).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def detect(src: Path) -> bool:
    """True for a ``.onnx`` file (by extension and the protobuf's first byte)."""
    src = Path(src)
    if not src.is_file() or src.suffix.lower() != ".onnx":
        return False
    with src.open("rb") as f:
        return f.read(1) == _ONNX_FIRST_BYTE


def backbone_output_name(graph: Any, prefix: str = BACKBONE_PREFIX) -> str:
    """The graph value holding the backbone's last hidden state (output of the final layer norm's bias Add)."""
    bias = f"{prefix}layernorm.bias"
    for node in graph.node:
        if node.op_type == "Add" and bias in node.input:
            return node.output[0]
    raise ConversionError(f"the ONNX graph has no Add consuming {bias!r}; it is not a DINOv2 backbone export")


def read(src: Path, **options: Any) -> ConvertedModel:
    """Read a DINOv2 ONNX export into a ``Dinov2Model`` state dict, config and image-processor config.

    Options: ``prefix`` (initializer prefix of the backbone, default ``backbone.``), ``source``, ``license``.
    """
    import onnx
    from google.protobuf.message import DecodeError

    src = Path(src)
    if not detect(src):
        raise ConversionError(f"{src} is not an ONNX file (.onnx with a ModelProto header); pass the .onnx file")
    try:
        model = onnx.load(str(src))
    except (DecodeError, ValueError, OSError) as exc:
        raise ConversionError(f"{src} is not a readable ONNX model ({exc}); download or export it again") from exc
    prefix = options.get("prefix", BACKBONE_PREFIX)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    if f"{prefix}embeddings.cls_token" not in inits:
        raise ConversionError(
            f"{src}: no initializer {prefix}embeddings.cls_token; not a DINOv2 backbone (or pass prefix=...)"
        )
    state = _state_dict(src, graph, inits, prefix)
    config = _config(src, graph, state, prefix)
    state = _match_installed_names(state, config)
    dropped = sorted(name for name in inits if not name.startswith(prefix) and not name.startswith("onnx::"))
    return ConvertedModel(
        state_dict=state,
        config=config,
        files={"preprocessor_config.json": _json_bytes(_preprocessor_config())},
        source=options.get("source", f"{src} (ONNX opset {model.opset_import[0].version}, {model.producer_name})"),
        source_format="onnx",
        license=options.get("license", "unknown"),
        card_extra={
            "dropped_tensors": dropped,
            "note": "mask_token is absent from the export (unused at inference) and is stored as zeros",
        },
    )


def _array(init: Any) -> np.ndarray:
    from onnx import numpy_helper

    return np.array(numpy_helper.to_array(init), dtype=np.float32)


def _state_dict(src: Path, graph: Any, inits: dict[str, Any], prefix: str) -> dict[str, torch.Tensor]:
    state: dict[str, np.ndarray] = {
        name[len(prefix) :]: _array(t) for name, t in inits.items() if name.startswith(prefix)
    }
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type != "Add":
            continue
        bias = next((i for i in node.input if i.startswith(prefix) and i.endswith(".bias")), None)
        other = next((i for i in node.input if i != bias), None)
        matmul = producers.get(other) if bias else None
        if matmul is None or matmul.op_type != "MatMul":
            continue
        weight = next((i for i in matmul.input if i in inits), None)
        if weight is not None:  # ONNX MatMul computes x @ W: transformers' Linear stores W.T
            state[bias[len(prefix) : -len("bias")] + "weight"] = _array(inits[weight]).T
    cls_pos, patch_pos = _position_pieces(src, graph, inits, state["embeddings.cls_token"].shape[-1])
    state["embeddings.position_embeddings"] = np.concatenate([cls_pos, patch_pos], axis=1)
    # the export drops mask_token (only used for masked pre-training); Dinov2Model still declares it
    state.setdefault("embeddings.mask_token", np.zeros((1, state["embeddings.cls_token"].shape[-1]), np.float32))
    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in sorted(state.items())}


# transformers >= 5 renamed Dinov2's attention modules (its conversion_mapping.py does the same on load).
_RENAMES = (
    ("attention.attention.query", "attention.q_proj"),
    ("attention.attention.key", "attention.k_proj"),
    ("attention.attention.value", "attention.v_proj"),
    ("attention.output.dense", "attention.o_proj"),
)


def _match_installed_names(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename the export's (transformers 4.x) names to those the installed ``Dinov2Model`` declares."""
    from transformers import Dinov2Config, Dinov2Model

    with torch.device("meta"):
        expected = set(Dinov2Model(Dinov2Config.from_dict(config)).state_dict())
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name not in expected:
            for old, new in _RENAMES:
                name = name.replace(old, new)
        out[name] = tensor
    return out


def _position_pieces(src: Path, graph: Any, inits: dict[str, Any], hidden: int) -> tuple[np.ndarray, np.ndarray]:
    cls_pos = patch_pos = None
    for node in graph.node:
        for name in node.input:
            if name not in inits or name.startswith(BACKBONE_PREFIX):
                continue
            dims = tuple(inits[name].dims)
            if node.op_type == "Concat" and dims == (1, 1, hidden):
                cls_pos = _array(inits[name])
            elif node.op_type == "Reshape" and len(dims) == 3 and dims[2] == hidden and dims[0] == 1:
                side = math.isqrt(dims[1])
                if side * side == dims[1]:
                    patch_pos = _array(inits[name])
    if cls_pos is None or patch_pos is None:
        raise ConversionError(
            f"{src}: the position embedding (a [1,1,{hidden}] Concat input and a [1,N,{hidden}] Reshape input) "
            "was not found in the graph"
        )
    return cls_pos, patch_pos


def _layer_norm_eps(graph: Any, prefix: str) -> float:
    """Epsilon of the final layer norm, from the decomposed ``(x - mean) / sqrt(var + eps)`` subgraph."""
    from onnx import numpy_helper

    producers = {out: node for node in graph.node for out in node.output}
    weight = f"{prefix}layernorm.weight"
    mul = next(n for n in graph.node if n.op_type == "Mul" and weight in n.input)
    div = producers[next(i for i in mul.input if i != weight)]
    add = producers[producers[div.input[1]].input[0]]
    for name in add.input:
        const = producers.get(name)
        if const is not None and const.op_type == "Constant":
            return float(numpy_helper.to_array(const.attribute[0].t))
    return 1e-6


def _config(src: Path, graph: Any, state: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    from transformers import Dinov2Config

    hidden = int(state["embeddings.cls_token"].shape[-1])
    layers = len({k.split(".")[2] for k in state if k.startswith("encoder.layer.")})
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    grid = math.isqrt(int(state["embeddings.position_embeddings"].shape[1]) - 1)
    if "encoder.layer.0.mlp.fc1.weight" not in state:
        raise ConversionError(f"{src}: no encoder.layer.0.mlp.fc1 weight; only the ViT-S/B/L DINOv2 MLP is supported")
    fc1 = state["encoder.layer.0.mlp.fc1.weight"]
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,  # every DINOv2 size uses 64-wide heads
        mlp_ratio=fc1.shape[0] // hidden,
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=_layer_norm_eps(graph, prefix),
        architectures=["Dinov2Model"],
    ).to_dict()
    config["dtype"] = "float32"
    return config


def _preprocessor_config() -> dict[str, Any]:
    return {
        "image_processor_type": "BitImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 256},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(IMAGENET_MEAN),
        "image_std": list(IMAGENET_STD),
        "do_convert_rgb": True,
    }


def _json_bytes(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
