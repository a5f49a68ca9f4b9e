"""Quantize a converted model into a schema V2 model directory, checking its accuracy before it is kept.

The accuracy checker runs after every quantization (R2.10, R8): for encoders the cosine of sentence embeddings
against the float model on held-out real sentences, for causal LMs the perplexity increase on held-out real
text. A model under threshold is refused (R8.4): the staging directory is removed, nothing is written to the
destination, and :class:`AccuracyError` says why. Reports are JSON and markdown with a timestamp (R8.6, R8.9),
stored in the destination and in its ``model_card.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from arrowengine.converters.destination import check_destination, replace_directory
from arrowengine.converters.model_dir import MODEL_CARD, read_model_card, write_model_dir
from arrowengine.converters.source import ConvertedModel
from arrowengine.errors import EngineError
from arrowengine.runtime.loading import load_config_dict, load_model
from arrowengine.runtime.text_encoder import pool_hidden
from quant.errors import CalibrationError
from quant.metrics import windowed_perplexity

__all__ = ["AccuracyError", "AccuracyReport", "QuantizeOptions", "evaluate_accuracy", "quantize_model"]

logger = logging.getLogger(__name__)


class AccuracyError(EngineError, ValueError):
    """A quantized model misses its accuracy threshold and was refused (nothing written)."""


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize and what accuracy to demand."""

    bits: int = 8
    group_size: int = 0
    method: str = "rtn"  # rtn | gptq
    calib: str | None = None  # text file, one sample per line; default: real chat messages
    # keep the most sensitive Linears FP16 until this holds: encoders a mean cosine (0.98), causal LMs a relative
    # perplexity increase on the calibration text (0.10)
    mixed_target: float | None = None
    min_cosine: float = 0.99  # encoders: mean embedding cosine vs the float model
    max_ppl_increase: float = 0.10  # causal LMs: relative perplexity increase vs the float model
    eval_samples: int = 200
    calib_samples: int = 64  # encoders: sentences; causal LMs: sequences of ``calib_seq_len`` tokens
    calib_seq_len: int = 256  # causal LMs: calibration text is one token stream cut into sequences this long
    act_order: bool = False  # GPTQ: process columns by decreasing Hessian diagonal (static groups)
    clip: str = "auto"  # group range: minmax | mse | auto (mse for INT2, where clipping pays, else minmax)
    # encoders: the input embedding table as int8 rows with per-row scales too (a vocabulary table is most of a
    # small encoder's bytes); causal LMs keep theirs, often tied to the output head
    quantize_embeddings: bool = True
    # how 8-bit RTN Linears are stored: "q8_0" as llama.cpp's Q8_0 blocks (int8 codes, one float16 scale per 32
    # weights; schema V3 rows that the native kernel runs in place, so memory stays at the file's quarter),
    # "rows" as schema V2 per-channel / per-group rows; "auto" is q8_0 for encoders at 8 bits, RTN, group 0 or 32
    # and no --mixed, else rows (causal LMs get Q8_0 blocks at load: LLM precision "q8_0")
    weight_format: str = "auto"

    def __post_init__(self) -> None:
        from quant.errors import GroupSizeError, QuantOptionError, UnsupportedBitsError

        if self.bits not in (2, 4, 8):
            raise UnsupportedBitsError(f"bits must be 2, 4 or 8, got {self.bits}")
        if self.group_size not in (0, 32, 64, 128):
            raise GroupSizeError(f"group_size must be 0 (per channel), 32, 64 or 128, got {self.group_size}")
        if self.method not in ("rtn", "gptq"):
            raise QuantOptionError(f"method must be 'rtn' or 'gptq', got {self.method!r}")
        if self.clip not in ("auto", "minmax", "mse"):
            raise QuantOptionError(f"clip must be 'auto', 'minmax' or 'mse', got {self.clip!r}")
        if self.calib_seq_len < 16:
            raise QuantOptionError(f"calib_seq_len must be >= 16 tokens, got {self.calib_seq_len}")
        if self.weight_format not in ("auto", "q8_0", "rows"):
            raise QuantOptionError(f"weight_format must be 'auto', 'q8_0' or 'rows', got {self.weight_format!r}")
        if self.weight_format == "q8_0" and (self.bits != 8 or self.method != "rtn" or self.group_size not in (0, 32)
                                             or self.mixed_target is not None):
            raise QuantOptionError("weight_format 'q8_0' stores 8-bit RTN weights in blocks of 32: use --bits 8 "
                                   "--method rtn, group size 0 or 32 and no --mixed, or --format rows")

    def q8_0_blocks(self, causal: bool) -> bool:
        """Whether the Linears are written as Q8_0 blocks (see ``weight_format``)."""
        if self.weight_format == "auto":
            return (not causal and self.bits == 8 and self.method == "rtn" and self.group_size in (0, 32)
                    and self.mixed_target is None)
        return self.weight_format == "q8_0"

    @property
    def group_clip(self) -> str:
        """The clipping actually used: ``auto`` is ``mse`` for INT2 and ``minmax`` otherwise."""
        return ("mse" if self.bits == 2 else "minmax") if self.clip == "auto" else self.clip


@dataclass
class AccuracyReport:
    """The accuracy checker's verdict on one quantized model."""

    model: str
    reference: str
    kind: str  # encoder | causal_lm
    metric: str
    value: float
    threshold: str
    passed: bool
    timestamp: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_markdown(self) -> str:
        """A short human-readable report."""
        lines = [f"# Accuracy report: {self.model}", "", f"- reference: {self.reference}",
                 f"- time: {self.timestamp}", f"- kind: {self.kind}",
                 f"- {self.metric}: {self.value:.6f} (threshold {self.threshold})",
                 f"- verdict: {'PASSED' if self.passed else 'REFUSED'}"]
        lines += [f"- {key}: {value}" for key, value in self.details.items()]
        return "\n".join(lines) + "\n"


def _chat_texts() -> tuple[str, ...]:
    """Real chat messages (the data set is parsed once per process by :mod:`arrowengine.datasets`)."""
    from arrowengine.datasets import chitchat_messages
    from arrowengine.errors import OptionalDependencyError

    try:
        return tuple(chitchat_messages())
    except OptionalDependencyError as exc:
        raise OptionalDependencyError(f"{exc}; or pass --calib FILE") from exc


def _calibration_and_eval(options: QuantizeOptions, *, causal: bool = False) -> tuple[list[str], list[str]]:
    """Disjoint calibration and held-out evaluation texts (for causal LMs enough text for ``calib_samples``
    sequences of ``calib_seq_len`` tokens: about one chat message per 16 tokens)."""
    limit = options.calib_samples * (max(1, options.calib_seq_len // 16) if causal else 1)
    held_out = [t for t in _chat_texts()[-20000:] if len(t) > 20][-options.eval_samples:]
    if options.calib:
        path = Path(options.calib)
        if not path.is_file():
            raise CalibrationError(f"calibration file {path} does not exist; pass a text file with one sample per line")
        calib = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(calib) < 16:
            raise CalibrationError(f"calibration file {path} holds {len(calib)} samples; at least 16 are needed")
    else:
        calib = [t for t in _chat_texts()[: max(5000, 2 * limit)] if len(t) > 20][:limit]
    return calib[:limit], held_out


def _lm_calibration(tokenizer: Any, calib: list[str], options: QuantizeOptions) -> list[torch.Tensor]:
    """Calibration texts joined by newlines, tokenized as one stream, cut into ``[1, calib_seq_len]`` sequences."""
    ids = tokenizer("\n".join(calib), return_tensors="pt").input_ids[0]
    count = min(options.calib_samples, ids.numel() // options.calib_seq_len)
    if count == 0:
        raise CalibrationError(f"the calibration text holds {ids.numel()} tokens, less than one sequence of "
                               f"{options.calib_seq_len}; pass more text with --calib")
    return [ids[i * options.calib_seq_len : (i + 1) * options.calib_seq_len].unsqueeze(0) for i in range(count)]


def _is_causal(config: dict[str, Any]) -> bool:
    return any(a.endswith("ForCausalLM") for a in config.get("architectures", []))


def _tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


def _embed(model: nn.Module, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), 32):
            batch = tokenizer(texts[start : start + 32], padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            out.append(pool_hidden(model(**batch).last_hidden_state, batch["attention_mask"]))
    return torch.cat(out)


def _perplexity(model: nn.Module, tokenizer: Any, texts: list[str]) -> float:
    ids = tokenizer("\n".join(texts), return_tensors="pt").input_ids[0, :2048]
    return windowed_perplexity(model, ids, 512)


def evaluate_accuracy(model_dir: str | os.PathLike[str], reference_dir: str | os.PathLike[str],
                      options: QuantizeOptions | None = None, *, quant_mode: str = "dequant-on-the-fly"
                      ) -> AccuracyReport:
    """Compare ``model_dir`` (quantized) with ``reference_dir`` (float) on held-out real text."""
    options = options or QuantizeOptions()
    model_dir, reference_dir = Path(model_dir), Path(reference_dir)
    config = load_config_dict(reference_dir)
    _, held_out = _calibration_and_eval(options)
    tokenizer = _tokenizer(reference_dir)
    reference = load_model(reference_dir, gguf_linears="dequantize")
    candidate = load_model(model_dir, quant_mode=quant_mode)
    timestamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    if _is_causal(config):
        base, ppl = _perplexity(reference, tokenizer, held_out), _perplexity(candidate, tokenizer, held_out)
        increase = ppl / base - 1.0
        return AccuracyReport(str(model_dir), str(reference_dir), "causal_lm", "perplexity_increase", increase,
                              f"<= {options.max_ppl_increase:+.1%}", increase <= options.max_ppl_increase, timestamp,
                              {"perplexity_float": round(base, 4), "perplexity_quantized": round(ppl, 4),
                               "eval_texts": len(held_out)})
    cosine = (_embed(candidate, tokenizer, held_out) * _embed(reference, tokenizer, held_out)).sum(1)
    mean = float(cosine.mean())
    return AccuracyReport(str(model_dir), str(reference_dir), "encoder", "mean_cosine", mean,
                          f">= {options.min_cosine}", mean >= options.min_cosine, timestamp,
                          {"min_cosine": round(float(cosine.min()), 6), "p05_cosine":
                           round(float(cosine.quantile(0.05)), 6), "eval_sentences": len(held_out)})


def _linear_layers(model: nn.Module) -> list[str]:
    """Quantizable Linear paths: every nn.Linear except an output head tied to the embeddings."""
    tied = {id(p) for name, p in model.named_parameters() if "embed" in name}
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and id(module.weight) not in tied and not name.endswith("lm_head")]


def _decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a causal LM in execution order (``model.model.layers``), or [] if not found."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    return list(layers) if isinstance(layers, nn.ModuleList) else []


def _quantize_weights(model: nn.Module, src: Path, options: QuantizeOptions, calib: list[str],
                      held_out: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    from quant import (
        GPTQConfig,
        embedding_cosine_evaluator,
        gptq_quantize_blocks,
        gptq_quantize_model,
        mixed_precision,
        quantize,
    )

    layers = _linear_layers(model)
    tokenizer = _tokenizer(src)
    causal = _is_causal(load_config_dict(src))
    errors: dict[str, float] = {}  # GPTQ's per-layer output error: the sensitivity order for mixed precision
    clip = options.group_clip
    if options.method == "gptq":
        config = GPTQConfig(bits=options.bits, group_size=options.group_size, act_order=options.act_order, clip=clip,
                            static_groups=False)
        blocks = _decoder_blocks(model) if causal else None
        if blocks:  # layer by layer on cached inputs: each layer sees the already-quantized earlier ones
            inside = {f"{n}." for n, m in model.named_modules() if any(m is b for b in blocks)}
            in_blocks = [p for p in layers if any(p.startswith(prefix) for prefix in inside)]
            qweights = gptq_quantize_blocks(model, blocks, _lm_calibration(tokenizer, calib, options), config,
                                            layers=in_blocks, forward=lambda m, ids: m(ids, use_cache=False),
                                            errors=errors)
            qweights |= {name: quantize(model.get_submodule(name).weight.detach(), options.bits, options.group_size,
                                        clip=clip, name=name) for name in layers if name not in qweights}
        else:
            batches = [dict(tokenizer(calib[i : i + 8], padding=True, truncation=True, max_length=128,
                                      return_tensors="pt")) for i in range(0, len(calib), 8)]
            qweights = gptq_quantize_model(model, batches, config, layers=layers)
    elif options.q8_0_blocks(causal):
        qweights = {name: _q8_0_or_rows(model.get_submodule(name).weight.detach(), name, clip) for name in layers}
    else:
        qweights = {name: quantize(model.get_submodule(name).weight.detach(), options.bits, options.group_size,
                                   clip=clip, name=name) for name in layers}
    recipe: dict[str, Any] = {"method": options.method, "bits": options.bits, "group_size": options.group_size,
                              "weight_format": "q8_0" if options.q8_0_blocks(causal) else "rows",
                              "clip": clip, "act_order": options.act_order,
                              "calibration": options.calib or "chitchat-dataset messages", "fp16_layers": []}
    if options.mixed_target is not None and causal:
        recipe["fp16_layers"] = _causal_mixed(model, tokenizer, qweights, calib, options.mixed_target, errors)
        recipe["mixed_target"] = options.mixed_target
    elif options.mixed_target is not None:
        reference = _embed(model, tokenizer, calib)
        mixed = mixed_precision(model, qweights, embedding_cosine_evaluator(
            lambda m: _embed(m, tokenizer, calib), reference), options.mixed_target)
        recipe["fp16_layers"] = list(mixed.fp16_layers)
        recipe["mixed_target"] = options.mixed_target
    return qweights, recipe


def _q8_0_or_rows(weight: torch.Tensor, name: str, clip: str) -> Any:
    """Q8_0 blocks of a Linear weight, or per-channel int8 rows when its rows do not split into blocks of 32."""
    from quant import quantize
    from quant.gguf import BLOCK_SIZE, quantize_q8_0

    if weight.shape[1] % BLOCK_SIZE:
        logger.info("%s: %d inputs are not a multiple of %d, kept as per-channel int8 rows", name, weight.shape[1],
                    BLOCK_SIZE)
        return quantize(weight, 8, 0, clip=clip, name=name)
    return quantize_q8_0(weight, name=name)


def _quantized_embeddings(model: nn.Module, causal: bool, options: QuantizeOptions) -> dict[str, Any]:
    """``{module path: int8 table}`` of an encoder's input embeddings (empty for causal LMs or when disabled)."""
    from quant import quantize_embedding

    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if causal or not options.quantize_embeddings or not isinstance(table, nn.Embedding):
        return {}
    path = next(name for name, module in model.named_modules() if module is table)
    return {path: quantize_embedding(table.weight, 8, name=f"{path}.weight")}


def _causal_mixed(model: nn.Module, tokenizer: Any, qweights: dict[str, Any], texts: list[str],
                  max_increase: float, errors: dict[str, float]) -> list[str]:
    """Linears kept FP16 so the calibration-text perplexity rises at most ``max_increase`` over float.

    Sensitivity is GPTQ's output error per layer when GPTQ ran, else the relative weight error of the quantized
    Linear (one perplexity per layer would cost hundreds of forwards); the prefix of that order is found by
    bisection (about log2(layers) perplexities).
    """
    from quant import dequantize, mixed_precision

    if not errors:
        for name, qt in qweights.items():
            weight = model.get_submodule(name).weight.detach().float()
            errors[name] = float((dequantize(qt).float() - weight).pow(2).sum() / weight.pow(2).sum().clamp_min(1e-12))
    base = _perplexity(model, tokenizer, texts)
    recipe = mixed_precision(model, qweights, lambda m: -math.log(_perplexity(m, tokenizer, texts)),
                             -math.log(base * (1.0 + max_increase)), sensitivity=errors, search="bisect")
    logger.info("mixed precision: %d of %d Linears kept FP16 (calibration perplexity target +%.1f%%: %s)",
                len(recipe.fp16_layers), len(qweights), 100 * max_increase,
                "met" if recipe.target_met else "missed")
    return list(recipe.fp16_layers)


def quantize_model(src: str | os.PathLike[str], dst: str | os.PathLike[str],
                   options: QuantizeOptions | None = None, *, force: bool = False) -> AccuracyReport:
    """Quantize the float model ``src`` into ``dst`` (schema V2) if it passes the accuracy check.

    ``dst`` is checked before any work: an existing one is refused unless ``force`` (then replaced only by a
    complete, accepted model), and it may never be ``src`` or overlap it.

    Raises:
        AccuracyError: the quantized model misses the threshold; ``dst`` is left untouched.
        DestinationExistsError: ``dst`` exists and ``force`` is false.
        DestinationIsSourceError: ``dst`` and ``src`` overlap, even with ``force``.
    """
    options = options or QuantizeOptions()
    src, dst = Path(src), check_destination(dst, sources=(src,), force=force)
    start = time.perf_counter()
    calib, held_out = _calibration_and_eval(options, causal=_is_causal(load_config_dict(src)))
    model = load_model(src, gguf_linears="dequantize")  # float Linears to quantize
    qweights, recipe = _quantize_weights(model, src, options, calib, held_out)
    state: dict[str, Any] = dict(model.state_dict())
    quant_types = {}
    for path, qt in qweights.items():
        if path in recipe["fp16_layers"]:
            state[f"{path}.weight"] = state[f"{path}.weight"].half()
        else:
            state[f"{path}.weight"] = qt
            quant_types[f"{path}.weight"] = (qt.quant_type if hasattr(qt, "quant_type") else
                                             f"{'gptq_' if options.method == 'gptq' else ''}int{options.bits}")
    embeddings = _quantized_embeddings(model, _is_causal(load_config_dict(src)), options)
    for path, qt in embeddings.items():  # gathered rows are dequantized at lookup (quant.QuantEmbedding)
        state[f"{path}.weight"], quant_types[f"{path}.weight"] = qt, "int8"
    recipe["int8_embeddings"] = list(embeddings)
    side = {str(p.relative_to(src)): p for p in src.rglob("*") if p.is_file()
            and p.name not in ("weights.parquet", "config.json", MODEL_CARD)}
    converted = ConvertedModel(state, load_config_dict(src), side, source=str(src), source_format="arrowengine",
                               license=read_model_card(src).get("license", "unknown"))
    dst.parent.mkdir(parents=True, exist_ok=True)  # staged beside dst: the final rename must not cross file systems
    staging_root = Path(tempfile.mkdtemp(prefix=f".{dst.name}.quant.", dir=dst.parent))
    try:
        staged = write_model_dir(converted, staging_root / dst.name, quant_recipe=recipe, quant_types=quant_types)
        report = evaluate_accuracy(staged, src, options)
        report.model = str(dst)
        report.details["quantize_seconds"] = round(time.perf_counter() - start, 1)
        report.details["bytes_float"] = (src / "weights.parquet").stat().st_size
        report.details["bytes_quantized"] = (staged / "weights.parquet").stat().st_size
        if not report.passed:
            raise AccuracyError(f"refused {dst}: {report.metric} {report.value:.6f} misses the threshold "
                                f"{report.threshold} (int{options.bits} {options.method}, group {options.group_size}); "
                                f"nothing was written. Try more bits, GPTQ, or --mixed TARGET.")
        (staged / "accuracy_report.json").write_text(json.dumps(asdict(report), indent=2))
        (staged / "accuracy_report.md").write_text(report.to_markdown())
        card = read_model_card(staged) | {"accuracy": asdict(report)}
        (staged / MODEL_CARD).write_text(json.dumps(card, indent=2, default=str))
        replace_directory(staged, dst, force=force)
        logger.info("quantized %s -> %s: %s %.6f (%s)", src, dst, report.metric, report.value, report.threshold)
        return report
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
