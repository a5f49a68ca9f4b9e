"""Write a :class:`ConvertedModel` as ``models/<name>/``: weights.parquet, config, side files, model card."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from arrowengine import __version__
from arrowengine.converters.destination import check_destination, replace_directory
from arrowengine.converters.source import ConvertedModel
from arrowengine.format.writer import write_weights

__all__ = ["MODEL_CARD", "WEIGHTS_FILE", "read_model_card", "write_model_dir"]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.parquet"
MODEL_CARD = "model_card.json"


def _stored_bytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if not hasattr(value, "packed"):  # quant.gguf.GGUFBlocks: the blocks are all it stores
        return int(value.nbytes)
    return sum(t.numel() * t.element_size() for t in (value.packed, value.scales, value.zero_points))


def read_model_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``model_card.json`` of a model directory, or ``{}`` when it has none."""
    path = Path(model_dir) / MODEL_CARD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_model_dir(model: ConvertedModel, dst: str | os.PathLike[str], *, progress: bool = False,
                    force: bool = False, quant_recipe: dict[str, Any] | None = None,
                    quant_types: dict[str, str] | None = None) -> Path:
    """Write ``model`` into the directory ``dst`` and return it.

    An existing ``dst`` is refused (:class:`DestinationExistsError`, nothing touched) unless ``force``.
    Everything is first written to a sibling temporary directory and swapped into place at the end, so a
    failed conversion leaves no half-written model behind and an existing one is replaced only by a complete
    one. A state dict holding ``quant.QuantizedTensor`` values is written as schema V2 with ``quant_recipe`` in
    its metadata and model card.
    """
    dst = check_destination(dst, force=force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; a model store is meant to be shared
    try:
        total = sum(_stored_bytes(t) for t in model.state_dict.values())
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"convert {dst.name}", disable=not progress) as bar:
            report = write_weights(staging / WEIGHTS_FILE, model.state_dict, model_type=model.model_type,
                                   config=model.config, quant_recipe=quant_recipe, quant_types=quant_types,
                                   progress=bar.update)
        (staging / "config.json").write_text(json.dumps(model.config, indent=2, sort_keys=True), encoding="utf-8")
        for rel, content in model.files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        num_params = sum(math.prod(t.shape) for name, t in model.state_dict.items() if name not in report.aliases)
        card = {
            "name": dst.name,
            "source": model.source,
            "source_format": model.source_format,
            "license": model.license,
            "converted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "converted_by": f"arrowengine {__version__}",
            "schema_version": report.schema_version,
            "model_type": model.model_type,
            "architectures": model.config.get("architectures", []),
            "num_tensors": report.num_tensors,
            "num_parameters": num_params,
            "weights_bytes": report.file_bytes,
            "tied_weights": report.aliases,
            "conversion_seconds": round(time.perf_counter() - start, 3),
            **model.card_extra,
        }
        if quant_recipe is not None:
            card["quant_recipe"] = quant_recipe
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str), encoding="utf-8")
        replace_directory(staging, dst, force=force)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("converted %s -> %s (%d tensors, %.1f MiB, %.1f s)", model.source, dst, report.num_tensors,
                report.file_bytes / 2**20, time.perf_counter() - start)
    return dst
