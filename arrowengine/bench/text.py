"""End to end: MiniLM sentence embeddings on real chat messages, arrowengine strategies vs the peers.

Baseline: sentence-transformers fp32 on the same weights (the model the package ships). Peers:
sentence-transformers under bf16 autocast, onnxruntime fp32 and onnxruntime INT8 dynamic quantization of the
same model exported the usual way (``torch.onnx.export`` + ``onnxruntime.quantization.quantize_dynamic``).
Fidelity: cosine of every sentence's embedding to the baseline's (min and mean; the bar is min >= 0.99).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from arrowengine.bench.context import BenchContext
from arrowengine.bench.datasets import sentences
from arrowengine.bench.results import Fidelity
from arrowengine.bench.variants import float_model_dir, int8_model_dir

__all__ = ["TEXT_STRATEGIES", "TextStrategy", "run_text"]

logger = logging.getLogger(__name__)

MODEL = "all-MiniLM-L6-v2"
COSINE_BAR = 0.99
SWEEP_BATCHES = (1, 8, 32, 128)


@dataclass(frozen=True)
class TextStrategy:
    """An arrowengine TextEncoder configuration: keyword arguments, and whether it needs the INT8 V2 file."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    int8_file: bool = False
    sweep: bool = False  # also measured at every batch size of SWEEP_BATCHES


TEXT_STRATEGIES = (
    TextStrategy("arrowengine default (precision auto)", {}),
    TextStrategy("arrowengine eager fp32", {"precision": None}, sweep=True),
    TextStrategy("arrowengine bf16", {"dtype": "bfloat16"}, sweep=True),
    TextStrategy("arrowengine fast int8-mixed", {"precision": "int8-mixed"}, sweep=True),
    TextStrategy("arrowengine fast bf16", {"precision": "bfloat16"}),
    TextStrategy("arrowengine fast int8", {"precision": "int8"}),
    TextStrategy("arrowengine compile fp32", {"backend": "compile"}),
    TextStrategy("arrowengine onnxruntime fp32", {"backend": "onnxruntime"}),
    TextStrategy("arrowengine INT8 dequant-on-the-fly", {"quant_mode": "dequant-on-the-fly"}, int8_file=True),
    TextStrategy("arrowengine INT8 int8-kernel", {"quant_mode": "int8-kernel"}, int8_file=True),
    TextStrategy("arrowengine INT8 dequant-on-load", {"quant_mode": "dequant-on-load"}, int8_file=True),
    TextStrategy("arrowengine INT8 dequant-on-load bf16", {"quant_mode": "dequant-on-load", "dtype": "bfloat16"},
                 int8_file=True),
    TextStrategy("arrowengine INT8 file fast int8-mixed", {"precision": "int8-mixed"}, int8_file=True),
)


class _OnnxPeer:
    """MiniLM exported to ONNX the usual way and run by onnxruntime, optionally INT8 dynamic-quantized."""

    def __init__(self, st_model: Any, directory: Path, int8: bool) -> None:
        import onnxruntime as ort
        import torch

        bert, self.tokenizer = st_model[0].auto_model, st_model.tokenizer

        class _Hidden(torch.nn.Module):  # positional inputs -> last_hidden_state, as optimum exports BERT
            def __init__(self) -> None:
                super().__init__()
                self.bert = bert

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids).last_hidden_state

        path = directory / "minilm.onnx"
        if not path.is_file():
            names = ["input_ids", "attention_mask", "token_type_ids"]
            example = tuple(torch.ones(2, 8, dtype=torch.long) for _ in names)
            axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]}
            with torch.no_grad():
                torch.onnx.export(_Hidden(), example, str(path), input_names=names, output_names=["last_hidden_state"],
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            qpath = directory / "minilm-int8.onnx"
            quantize_dynamic(str(path), str(qpath), weight_type=QuantType.QInt8)
            path = qpath
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
        out = np.empty((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            enc = self.tokenizer([texts[i] for i in index], padding=True, truncation=True, max_length=256,
                                 return_tensors="np")
            feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
            (hidden,) = self.session.run(["last_hidden_state"], feed)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.clip(mask.sum(1), 1e-9, None)
            out[index] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True).clip(1e-12)
        return out


def _fidelity(vectors: np.ndarray, reference: np.ndarray) -> Fidelity:
    cosine = np.sum(vectors * reference, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)).clip(1e-12)
    return Fidelity("cosine_min", float(cosine.min()), COSINE_BAR, extra={"cosine_mean": float(cosine.mean())})


def _measure(ctx: BenchContext, strategy: str, role: str, encode: Callable[[list[str], int], np.ndarray],
             texts: list[str], batch: int, reference: np.ndarray | None) -> np.ndarray:
    # a full run embeds 2000 sentences per call (seconds each): fewer repeats; quick runs need them all
    repeats = ctx.options.repeats if ctx.options.quick else max(2, ctx.options.repeats // 2)
    spread, vectors = ctx.time(lambda: encode(texts, batch), repeats=repeats)
    vectors = np.asarray(vectors, dtype=np.float32)
    fidelity = _fidelity(vectors, reference if reference is not None else vectors)
    ctx.record("text", f"{MODEL} batch={batch}", strategy, role, "throughput", "sentences/s",
               len(texts) / spread.median, higher_is_better=True, spread=spread.as_rate(len(texts)), fidelity=fidelity,
               params={"batch_size": batch, "sentences": len(texts)})
    return vectors


def run_text(ctx: BenchContext) -> None:
    """MiniLM throughput at batch 32 for every strategy, and at batch 1/8/32/128 for the sweep strategies."""
    from sentence_transformers import SentenceTransformer
    from tqdm import tqdm

    from arrowengine.converters.packages import locate_source
    from arrowengine.runtime.text_encoder import TextEncoder

    model_dir = float_model_dir(ctx.options.models_dir, MODEL)
    texts = sentences(ctx.options.sentences, ctx.options.dataset)
    sweep_texts = {b: texts[: max(64, len(texts) // 8)] if b == 1 else texts for b in SWEEP_BATCHES}
    st = SentenceTransformer(str(locate_source(MODEL)), device="cpu")

    def st_encode(t: list[str], b: int) -> np.ndarray:
        return st.encode(t, batch_size=b, normalize_embeddings=True)

    def st_bf16(t: list[str], b: int) -> np.ndarray:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16):
            return st.encode(t, batch_size=b, normalize_embeddings=True, convert_to_numpy=True)

    references = {b: _measure(ctx, "sentence-transformers fp32", "baseline", st_encode, sweep_texts[b], b, None)
                  for b in tqdm(SWEEP_BATCHES, desc="text baseline", unit="batch size")}
    scratch = Path(tempfile.mkdtemp(prefix="arrowengine-bench-onnx-"))
    peers: list[tuple[str, Callable[[], Callable[[list[str], int], np.ndarray]], bool]] = [
        ("sentence-transformers bf16 autocast", lambda: st_bf16, False),
        ("onnxruntime fp32 (torch.onnx export)", lambda: _OnnxPeer(st, scratch, int8=False).encode, False),
        ("onnxruntime int8 dynamic quantization", lambda: _OnnxPeer(st, scratch, int8=True).encode, True),
    ]
    jobs: list[tuple[str, str, Callable[[], Any], bool]] = [(n, "peer", f, s) for n, f, s in peers]
    for strategy in TEXT_STRATEGIES:
        def build(strategy=strategy) -> Callable[[list[str], int], np.ndarray]:
            directory = int8_model_dir(ctx.options.models_dir, MODEL) if strategy.int8_file else model_dir
            encoder = TextEncoder(directory, device=ctx.options.device, **strategy.kwargs)
            return lambda t, b: encoder.encode(t, batch_size=b)
        jobs.append((strategy.name, "ours", build, strategy.sweep))
    for name, role, build, sweep in tqdm(jobs, desc="text strategies", unit="strategy"):
        batches = SWEEP_BATCHES if sweep else (32,)

        def run(name=name, role=role, build=build, batches=batches) -> None:
            encode = build()
            for b in batches:
                _measure(ctx, name, role, encode, sweep_texts[b], b, references[b])
        ctx.attempt("text", f"{MODEL} batch=32", name, role, "throughput", "sentences/s", run)
