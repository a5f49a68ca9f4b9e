"""Quantization accuracy tables (issue 4): SmolLM2-135M-Instruct perplexity and MiniLM embedding cosine.

One run quantizes both models with every method of the table, measures each on held-out real text and writes
``quant_eval.json`` and ``quant_eval.md`` to ``--out-dir`` (default ``docs/benchmarks/quant``).

Text: real chat messages from the PyPI ``chitchat-dataset`` (the source ``arrowengine quantize`` uses).
Calibration comes from the first messages of the dataset, the mixed-precision selection text from the messages
right after them, and the held-out evaluation text from the last messages: the three are disjoint.

* Causal LM: the messages joined by newlines and tokenized as one stream; calibration = ``--calib-seqs``
  sequences of ``--seq-len`` tokens; held-out perplexity over ``--eval-tokens`` tokens in windows of 512.
  GPTQ runs block by block (:func:`quant.gptq_quantize_blocks`): each decoder layer is calibrated on the
  outputs of the already-quantized earlier layers. Every Linear of the decoder layers is quantized; the tied
  embedding / lm_head stays float. Mixed precision ranks the Linears by GPTQ's output error on their
  calibration inputs and keeps the shortest most-sensitive prefix in FP16 that meets the target on the
  selection text (bisection), then is judged on the held-out text like every other row.
* MiniLM: sentence embeddings (mean pooling, L2 norm) of held-out messages vs the float model, cosine mean/min.

Accuracy is measured with the dequantized weights in the float model (what ``dequant-on-load`` runs). The size
is the ``weights.parquet`` that ``arrowengine quantize`` writes for the row (schema V2: packed codes + float16
scales + uint8 zero points; FP16 layers as float16; everything not quantized as stored, float32), written to a
temporary directory and measured. Seconds to quantize exclude model loading and the file write.

    python scripts/quant_eval.py            # full table
    python scripts/quant_eval.py --quick    # fewer calibration / evaluation samples, fewer rows
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from arrowengine.converters.model_dir import read_model_card, write_model_dir
from arrowengine.converters.source import ConvertedModel
from arrowengine.quantize import _chat_texts, _linear_layers, _tokenizer
from arrowengine.runtime.loading import load_config_dict, load_model
from quant import (
    GPTQConfig,
    QuantizedTensor,
    cosine_stats,
    dequantize,
    gptq_quantize_blocks,
    mixed_precision,
    quantize,
    windowed_perplexity,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
logger = logging.getLogger("quant_eval")
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One line of a table."""

    model: str
    method: str
    bits: int | None
    group_size: int | None
    fp16_layers: int
    file_bytes: int
    ratio_to_float: float
    metric: str
    value: float
    delta: float
    target: str
    met: bool | None
    quantize_seconds: float
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Spec:
    """A row to compute: method (float | rtn | gptq), bits, group size, clipping, act-order, mixed target."""

    method: str
    bits: int = 0
    group_size: int = 0
    clip: str = "minmax"
    act_order: bool = False
    static_groups: bool = False
    mixed: float | None = None
    target: float | None = None  # LM: max relative perplexity increase; encoder: min mean cosine

    @property
    def key(self) -> str:
        """Short id for ``--rows``, e.g. ``gptq4g128-ao``, ``gptq2g32-mse-mixed``."""
        if self.method == "float":
            return "float"
        return (f"{self.method}{self.bits}g{self.group_size}{'-ao' if self.act_order else ''}"
                f"{'-mse' if self.clip == 'mse' else ''}{'-mixed' if self.mixed is not None else ''}")

    @property
    def label(self) -> str:
        """Human-readable method name."""
        if self.method == "float":
            return "float32"
        name = self.method.upper()
        if self.method == "gptq":
            name += " act-order" if self.act_order else ""
        name += " mse-clip" if self.clip == "mse" else ""
        return name + (" + mixed FP16" if self.mixed is not None else "")


def _swapped(model: nn.Module, weights: dict[str, torch.Tensor], fn: Callable[[], Any]) -> Any:
    saved = {p: model.get_submodule(p).weight.data for p in weights}
    try:
        for p, w in weights.items():
            model.get_submodule(p).weight.data = w
        return fn()
    finally:
        for p, w in saved.items():
            model.get_submodule(p).weight.data = w


def _effective(model: nn.Module, qweights: dict[str, QuantizedTensor], fp16: list[str]) -> dict[str, torch.Tensor]:
    out = {p: dequantize(qt) for p, qt in qweights.items() if p not in fp16}
    out.update({p: model.get_submodule(p).weight.data.half().float() for p in fp16})
    return out


def file_bytes(model: nn.Module, src: Path, qweights: dict[str, QuantizedTensor], fp16: list[str],
               recipe: dict[str, Any]) -> int:
    """Size of the ``weights.parquet`` written for this recipe (the file ``arrowengine quantize`` produces)."""
    if not qweights:
        return (src / "weights.parquet").stat().st_size
    state: dict[str, Any] = dict(model.state_dict())
    types = {}
    for path, qt in qweights.items():
        if path in fp16:
            state[f"{path}.weight"] = state[f"{path}.weight"].half()
        else:
            state[f"{path}.weight"] = qt
            types[f"{path}.weight"] = f"{'gptq_' if recipe['method'] == 'gptq' else ''}int{qt.bits}"
    converted = ConvertedModel(state, load_config_dict(src), {}, source=str(src), source_format="arrowengine",
                               license=read_model_card(src).get("license", "unknown"))
    with tempfile.TemporaryDirectory(prefix="quant_eval.") as tmp:
        out = write_model_dir(converted, Path(tmp) / "model", quant_recipe=recipe | {"fp16_layers": fp16},
                              quant_types=types)
        return (out / "weights.parquet").stat().st_size


def _rtn(model: nn.Module, layers: list[str], spec: Spec) -> dict[str, QuantizedTensor]:
    return {p: quantize(model.get_submodule(p).weight.detach(), spec.bits, spec.group_size, clip=spec.clip, name=p)
            for p in layers}


def _gptq_config(spec: Spec) -> GPTQConfig:
    return GPTQConfig(bits=spec.bits, group_size=spec.group_size, act_order=spec.act_order, clip=spec.clip,
                      static_groups=spec.static_groups)


# ---------------------------------------------------------------- causal LM (SmolLM2)


class LMBench:
    """SmolLM2: calibration sequences, selection and held-out token streams, perplexity."""

    def __init__(self, src: Path, args: argparse.Namespace) -> None:
        self.src, self.args = src, args
        self.model = load_model(src).eval()
        self.tokenizer = _tokenizer(src)
        texts = _chat_texts()
        n_calib = args.calib_seqs * args.seq_len
        calib_ids, used = self._stream(texts, n_calib + args.select_tokens + 1)
        self.calib = [calib_ids[i * args.seq_len : (i + 1) * args.seq_len].unsqueeze(0) for i in range(args.calib_seqs)]
        self.select = calib_ids[n_calib : n_calib + args.select_tokens + 1]
        eval_ids, eval_used = self._stream(texts[::-1], args.eval_tokens + 1, reverse=True)
        if used + eval_used > len(texts):
            raise SystemExit("calibration and evaluation text overlap; lower --calib-seqs or --eval-tokens")
        self.held_out = eval_ids[: args.eval_tokens + 1]
        self.text_info = {"calibration_messages": f"first {used} messages", "held_out_messages":
                          f"last {eval_used} messages", "calibration_tokens": n_calib,
                          "selection_tokens": args.select_tokens, "held_out_tokens": args.eval_tokens}
        self.layers = _linear_layers(self.model)
        self.base = self.perplexity(self.held_out)
        self.base_select = self.perplexity(self.select)

    def _stream(self, texts: tuple[str, ...] | list[str], tokens: int, reverse: bool = False
                ) -> tuple[torch.Tensor, int]:
        """Token ids of the first messages of ``texts`` joined by newlines, at least ``tokens`` long."""
        take = 256
        while True:
            chunk = list(texts[:take])
            ids = self.tokenizer("\n".join(chunk[::-1] if reverse else chunk), return_tensors="pt").input_ids[0]
            if ids.numel() >= tokens or take >= len(texts):
                return ids, take
            take *= 2

    def perplexity(self, ids: torch.Tensor, window: int = 512) -> float:
        """Perplexity of the stream ``ids`` in consecutive windows of ``window`` tokens (float32 logits)."""
        return windowed_perplexity(self.model, ids, window)

    def quantize(self, spec: Spec, errors: dict[str, float]) -> dict[str, QuantizedTensor]:
        """Quantized weights of every decoder Linear under ``spec`` (GPTQ fills ``errors``)."""
        if spec.method == "rtn":
            return _rtn(self.model, self.layers, spec)
        blocks = list(self.model.model.layers)
        with tqdm(total=len(blocks), desc=f"  GPTQ int{spec.bits} g{spec.group_size}", leave=False) as bar:
            return gptq_quantize_blocks(self.model, blocks, self.calib, _gptq_config(spec), layers=self.layers,
                                        forward=lambda m, ids: m(ids, use_cache=False), errors=errors,
                                        progress=lambda done, total: bar.update(1))

    def mixed(self, qweights: dict[str, QuantizedTensor], errors: dict[str, float], max_increase: float
              ) -> tuple[list[str], dict[str, Any]]:
        """FP16 layers that bring the selection-text perplexity within ``max_increase`` of float.

        Sensitivity is GPTQ's output error of each layer on its calibration inputs (free: measured during
        quantization; one perplexity per layer would cost hundreds of model forwards here).
        """
        target = -math.log(self.base_select * (1.0 + max_increase))
        bar = tqdm(desc="  mixed (bisect)", leave=False)

        def evaluate(_m: nn.Module) -> float:
            bar.update(1)
            return -math.log(self.perplexity(self.select))

        recipe = mixed_precision(self.model, qweights, evaluate, target, sensitivity=errors, search="bisect")
        bar.close()
        top = sorted(errors, key=errors.get, reverse=True)[:5]
        return recipe.fp16_layers, {"selection_ppl_increase": round(math.exp(-recipe.score) / self.base_select - 1, 4),
                                    "selection_target_met": recipe.target_met, "most_sensitive": top,
                                    "evaluations": len(recipe.history) + 1, "fp16_layer_names": recipe.fp16_layers}

    def row(self, spec: Spec, float_bytes: int, cache: dict[Spec, Any]) -> Row:
        """Quantize, measure and size one row."""
        start = time.perf_counter()
        if spec.method == "float":
            return Row("SmolLM2-135M-Instruct", spec.label, None, None, 0, float_bytes, 1.0, "perplexity", self.base,
                       0.0, "-", None, 0.0)
        base_spec = Spec(spec.method, spec.bits, spec.group_size, spec.clip, spec.act_order, spec.static_groups)
        if base_spec in cache:
            qweights, seconds, errors = cache[base_spec]
        else:
            errors = {}
            qweights = self.quantize(base_spec, errors)
            seconds = time.perf_counter() - start
            cache[base_spec] = (qweights, seconds, errors)
        fp16: list[str] = []
        extra: dict[str, Any] = {}
        if spec.mixed is not None:
            t0 = time.perf_counter()
            fp16, extra = self.mixed(qweights, errors, spec.mixed)
            seconds += time.perf_counter() - t0
        ppl = _swapped(self.model, _effective(self.model, qweights, fp16), lambda: self.perplexity(self.held_out))
        size = file_bytes(self.model, self.src, qweights, fp16, {"method": spec.method, "bits": spec.bits,
                                                                  "group_size": spec.group_size})
        delta = ppl / self.base - 1.0
        return Row("SmolLM2-135M-Instruct", spec.label, spec.bits, spec.group_size, len(fp16), size,
                   size / float_bytes, "perplexity", ppl, delta,
                   f"<= {spec.target:+.0%}" if spec.target is not None else "-",
                   None if spec.target is None else delta <= spec.target, seconds, extra=extra)


# ---------------------------------------------------------------- encoder (MiniLM)


class EncoderBench:
    """all-MiniLM-L6-v2: calibration / selection / held-out sentences, embedding cosine vs float."""

    def __init__(self, src: Path, args: argparse.Namespace) -> None:
        self.src, self.args = src, args
        self.model = load_model(src).eval()
        self.tokenizer = _tokenizer(src)
        texts = [t for t in _chat_texts() if len(t) > 20]
        self.calib = texts[: args.enc_calib]
        self.select = texts[args.enc_calib : args.enc_calib + args.enc_select]
        self.held_out = texts[-args.enc_eval :]
        self.text_info = {"calibration_sentences": len(self.calib), "selection_sentences": len(self.select),
                          "held_out_sentences": len(self.held_out)}
        self.layers = _linear_layers(self.model)
        self.reference = self.embed(self.held_out)
        self.select_reference = self.embed(self.select)

    def embed(self, texts: list[str]) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings (batches of 32, up to 128 tokens)."""
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), 32):
                batch = self.tokenizer(texts[i : i + 32], padding=True, truncation=True, max_length=128,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state.float()
                mask = batch["attention_mask"].unsqueeze(-1).float()
                out.append(nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1))
        return torch.cat(out)

    def _select_score(self, _model: nn.Module) -> float:
        return float((self.embed(self.select) * self.select_reference).sum(1).mean())

    def quantize(self, spec: Spec) -> dict[str, QuantizedTensor]:
        """Quantized weights of every Linear (GPTQ for the encoder layers, RTN for the unused pooler)."""
        if spec.method == "rtn":
            return _rtn(self.model, self.layers, spec)
        blocks = list(self.model.encoder.layer)
        inside = [p for p in self.layers if p.startswith("encoder.layer.")]
        batches = [dict(self.tokenizer(self.calib[i : i + 16], padding=True, truncation=True, max_length=128,
                                       return_tensors="pt")) for i in range(0, len(self.calib), 16)]
        out = gptq_quantize_blocks(self.model, blocks, batches, _gptq_config(spec), layers=inside)
        rest = [p for p in self.layers if p not in out]
        return out | _rtn(self.model, rest, spec)

    def row(self, spec: Spec, float_bytes: int, cache: dict[Spec, Any]) -> Row:
        """Quantize, measure and size one row."""
        start = time.perf_counter()
        name = "all-MiniLM-L6-v2"
        if spec.method == "float":
            return Row(name, spec.label, None, None, 0, float_bytes, 1.0, "cosine mean", 1.0, 0.0, "-", None, 0.0,
                       extra={"cosine_min": 1.0})
        base_spec = Spec(spec.method, spec.bits, spec.group_size, spec.clip, spec.act_order, spec.static_groups)
        if base_spec not in cache:
            cache[base_spec] = (self.quantize(base_spec), time.perf_counter() - start)
        qweights, seconds = cache[base_spec]
        fp16: list[str] = []
        extra: dict[str, Any] = {}
        if spec.mixed is not None:
            t0 = time.perf_counter()
            recipe = mixed_precision(self.model, qweights, self._select_score, spec.mixed)
            fp16 = recipe.fp16_layers
            seconds += time.perf_counter() - t0
            extra = {"selection_cosine": round(recipe.score, 5), "fp16_layer_names": fp16,
                     "mixed_target": spec.mixed}
        emb = _swapped(self.model, _effective(self.model, qweights, fp16), lambda: self.embed(self.held_out))
        stats = cosine_stats(emb, self.reference)
        size = file_bytes(self.model, self.src, qweights, fp16, {"method": spec.method, "bits": spec.bits,
                                                                  "group_size": spec.group_size})
        extra |= {"cosine_min": stats.min, "cosine_p05": stats.p05}
        return Row(name, spec.label, spec.bits, spec.group_size, len(fp16), size, size / float_bytes, "cosine mean",
                   stats.mean, stats.mean - 1.0, f">= {spec.target}" if spec.target is not None else "-",
                   None if spec.target is None else stats.mean >= spec.target, seconds, extra=extra)


# ---------------------------------------------------------------- table


def lm_specs(quick: bool, bits: set[int] | None = None) -> list[Spec]:
    """The SmolLM2 rows (targets from issue 4: INT8 +1%, INT4 GPTQ +10%, INT2 +15%), optionally only ``bits``."""
    specs = [Spec("float"), Spec("rtn", 8, 0, target=0.01), Spec("rtn", 4, 128), Spec("rtn", 4, 32),
             Spec("gptq", 4, 128, target=0.10), Spec("gptq", 4, 128, act_order=True, static_groups=True, target=0.10),
             Spec("gptq", 4, 32, target=0.10),
             Spec("rtn", 2, 32, clip="mse", target=0.15), Spec("gptq", 2, 32, clip="mse", target=0.15),
             Spec("gptq", 2, 32, clip="mse", mixed=0.15, target=0.15)]
    specs = [s for s in specs if not (quick and s.method == "gptq" and s.bits == 4 and s.group_size == 32)]
    return [s for s in specs if bits is None or s.method == "float" or s.bits in bits]


def encoder_specs(quick: bool) -> list[Spec]:
    """The MiniLM rows (R2.4: INT2 RTN cosine >= 0.95; R2.7: INT2 GPTQ >= 0.98; INT8 >= 0.99)."""
    specs = [Spec("float"), Spec("rtn", 8, 0, target=0.99), Spec("rtn", 4, 32), Spec("gptq", 4, 32),
             Spec("rtn", 2, 32, target=0.95), Spec("rtn", 2, 32, clip="mse", target=0.95),
             Spec("rtn", 2, 32, clip="mse", mixed=0.95, target=0.95),
             Spec("gptq", 2, 32, clip="mse", target=0.98), Spec("gptq", 2, 32, clip="mse", act_order=True,
                                                                 static_groups=True, target=0.98),
             Spec("gptq", 2, 32, clip="mse", mixed=0.98, target=0.98),
             # selection target with a margin: the held-out cosine lands a little under the selection one
             Spec("gptq", 2, 32, clip="mse", act_order=True, static_groups=True, mixed=0.985, target=0.98)]
    return [s for s in specs if not (quick and s.act_order)]


def _fmt_bytes(n: int) -> str:
    return f"{n:,}"


def markdown(result: dict[str, Any]) -> str:
    """The tables as markdown."""
    lines = [f"# Quantization accuracy ({result['timestamp']})", "",
             f"`python scripts/quant_eval.py{' --quick' if result['quick'] else ''}` on {result['machine']}, "
             f"torch {result['torch']}, {result['threads']} threads. Accuracy on held-out real chat text "
             "(chitchat-dataset), disjoint from calibration.", ""]
    for key, title in (("smollm2", "SmolLM2-135M-Instruct: perplexity"), ("minilm", "all-MiniLM-L6-v2: cosine")):
        if key not in result:
            continue
        part = result[key]
        lines += [f"## {title}", "", "Text: " + ", ".join(f"{k} {v}" for k, v in part["text"].items()), ""]
        lm = key == "smollm2"
        head = "perplexity | delta vs float" if lm else "cosine mean | cosine min"
        lines += [f"| method | bits | group | fp16 layers | file bytes | vs float | {head} | target | met | "
                  "quantize s |", "|" + " --- |" * 11]
        for r in part["rows"]:
            value = (f"{r['value']:.3f} | {r['delta']:+.2%}" if lm
                     else f"{r['value']:.4f} | {r['extra'].get('cosine_min', 1.0):.4f}")
            met = "-" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(f"| {r['method']} | {r['bits'] or '-'} | {r['group_size'] if r['bits'] else '-'} | "
                         f"{r['fp16_layers']} | {_fmt_bytes(r['file_bytes'])} | {r['ratio_to_float']:.3f} | {value} | "
                         f"{r['target']} | {met} | {r['quantize_seconds']:.1f} |")
        for r in part["rows"]:
            names = r["extra"].get("fp16_layer_names")
            if names:
                listed = ", ".join(f"`{n}`" for n in names) if len(names) <= 40 else (
                    f"{len(names)} layers (names in the JSON); the first five: "
                    + ", ".join(f"`{n}`" for n in names[:5]))
                lines += ["", f"{r['method']} (int{r['bits']} g{r['group_size']}) keeps in FP16: {listed}"]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    """Run the tables and write JSON + markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--render", default=None, metavar="JSON", help="only rewrite the markdown of a result file")
    parser.add_argument("--quick", action="store_true", help="fewer calibration / evaluation samples and rows")
    parser.add_argument("--only", choices=["all", "smollm2", "minilm"], default="all")
    parser.add_argument("--out-dir", default=str(ROOT / "docs/benchmarks/quant"))
    parser.add_argument("--name", default=None, help="output file stem (default quant_eval[_quick])")
    parser.add_argument("--calib-seqs", type=int, default=None, help="LM calibration sequences (64; quick 8)")
    parser.add_argument("--seq-len", type=int, default=256, help="LM calibration sequence length in tokens")
    parser.add_argument("--eval-tokens", type=int, default=None, help="LM held-out tokens (4096; quick 1024)")
    parser.add_argument("--select-tokens", type=int, default=512, help="LM mixed-precision selection tokens")
    parser.add_argument("--enc-calib", type=int, default=None, help="MiniLM calibration sentences (256; quick 64)")
    parser.add_argument("--enc-select", type=int, default=128, help="MiniLM mixed-precision selection sentences")
    parser.add_argument("--enc-eval", type=int, default=None, help="MiniLM held-out sentences (1000; quick 200)")
    parser.add_argument("--lm-bits", default=None, help="only these SmolLM2 bit widths, e.g. 8,4 (split long runs)")
    parser.add_argument("--rows", default=None, help="only these rows by key, e.g. float,gptq4g32 (see Spec.key)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.render:
        path = Path(args.render)
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return
    q = args.quick
    args.calib_seqs = args.calib_seqs or (8 if q else 64)
    args.eval_tokens = args.eval_tokens or (1024 if q else 4096)
    args.enc_calib = args.enc_calib or (64 if q else 256)
    args.enc_eval = args.enc_eval or (200 if q else 1000)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logging.basicConfig(level=logging.WARNING)
    result: dict[str, Any] = {
        "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "quick": q,
        "machine": f"{platform.machine()} {os.cpu_count()} cores", "torch": torch.__version__,
        "threads": args.threads, "args": vars(args)}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.name or ("quant_eval_quick" if q else "quant_eval")
    benches = []
    lm_bits = {int(b) for b in args.lm_bits.split(",")} if args.lm_bits else None
    if args.only in ("all", "minilm"):
        benches.append(("minilm", ROOT / "models/all-MiniLM-L6-v2", EncoderBench, encoder_specs(q)))
    if args.only in ("all", "smollm2"):
        benches.append(("smollm2", ROOT / "models/smollm2-135m-instruct", LMBench, lm_specs(q, lm_bits)))
    if args.rows:
        keep = set(args.rows.split(","))
        benches = [(k, src, cls, [s for s in specs if s.key in keep]) for k, src, cls, specs in benches]
    for key, src, cls, specs in benches:
        print(f"== {key}: loading and measuring the float model", flush=True)
        bench = cls(src, args)
        float_bytes = (src / "weights.parquet").stat().st_size
        part = result[key] = {"source": str(src.relative_to(ROOT)), "text": bench.text_info, "rows": []}
        cache: dict[Spec, Any] = {}
        for spec in tqdm(specs, desc=key):
            row = bench.row(spec, float_bytes, cache)
            part["rows"].append(asdict(row))
            tqdm.write(f"  {row.method:28s} int{row.bits or 32} g{row.group_size or 0:<3d} fp16={row.fp16_layers:<3d} "
                       f"{row.file_bytes:>11,d} B ({row.ratio_to_float:.3f}) {row.metric} {row.value:.4f} "
                       f"delta {row.delta:+.4f} target {row.target} met {row.met} {row.quantize_seconds:.0f}s")
            (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2))  # partial results survive a crash
            (out_dir / f"{stem}.md").write_text(markdown(result))
        del bench
    print(f"wrote {out_dir / stem}.json and .md")


if __name__ == "__main__":
    main()
