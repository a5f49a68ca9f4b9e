"""End to end: Whisper encoder latency on 30 s of real speech, DINOv2 images/s on real photos.

Baselines are transformers' own modules (``WhisperModel`` encoder, ``Dinov2Model``) built from the model's
config with the same weights, fp32: the CTranslate2 and ONNX sources cannot be loaded by transformers directly,
so this is the closest "usual way". The DINOv2 source is an ONNX file, so onnxruntime on that original file is a
peer. Fidelity: cosine of pooled embeddings to the baseline's (bar 0.99).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from arrowengine.bench.context import BenchContext
from arrowengine.bench.datasets import photos, speech_30s
from arrowengine.bench.results import Fidelity
from arrowengine.bench.variants import float_model_dir

__all__ = ["AUDIO_STRATEGIES", "VISION_STRATEGIES", "EncoderStrategy", "run_audio", "run_vision"]

logger = logging.getLogger(__name__)

COSINE_BAR = 0.99


@dataclass(frozen=True)
class EncoderStrategy:
    """An arrowengine encoder configuration (keyword arguments of AudioEncoder / ImageEncoder)."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


AUDIO_STRATEGIES = (
    EncoderStrategy("arrowengine default (precision auto)"),
    EncoderStrategy("arrowengine fp32", {"precision": None}),
    EncoderStrategy("arrowengine bf16", {"dtype": "bfloat16", "precision": None}),
    EncoderStrategy("arrowengine lean bf16", {"precision": "bfloat16"}),
    EncoderStrategy("arrowengine lean int8-mixed", {"precision": "int8-mixed"}),
)
VISION_STRATEGIES = (EncoderStrategy("arrowengine default (dtype auto)"),
                     EncoderStrategy("arrowengine fp32", {"dtype": "float32"}),
                     EncoderStrategy("arrowengine bf16", {"dtype": "bfloat16"}))


def _cosine(a: np.ndarray, b: np.ndarray) -> Fidelity:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-12)
    cos = np.sum(a * b, axis=-1)
    return Fidelity("cosine_min", float(cos.min()), COSINE_BAR, extra={"cosine_mean": float(cos.mean())})


def _reference(model_dir: Path, config_cls: str, model_cls: str) -> Any:
    import transformers

    from arrowengine.runtime.loading import load_config_dict, load_state_dict

    config = getattr(transformers, config_cls).from_dict(load_config_dict(model_dir))
    model = getattr(transformers, model_cls)(config)
    state = {k.removeprefix("model."): v.clone() for k, v in load_state_dict(model_dir).items()}
    model.load_state_dict(state, strict=False)
    return model.eval()


def run_audio(ctx: BenchContext, model: str) -> None:
    """Latency of encoding one 30 s window of real speech (features + encoder), batch 1.

    The baseline and every strategy are timed round-robin (one call each per round), so the latency ratios
    compare calls made under the same machine load.
    """
    from transformers import WhisperFeatureExtractor

    from arrowengine.runtime.audio_encoder import AudioEncoder

    model_dir = float_model_dir(ctx.options.models_dir, model)
    speech = speech_30s()
    group = f"{model} encoder, 30 s speech, batch 1"
    extractor = WhisperFeatureExtractor.from_pretrained(str(model_dir))
    reference = _reference(model_dir, "WhisperConfig", "WhisperModel")
    baseline_name = "transformers WhisperEncoder fp32"

    def baseline() -> np.ndarray:
        features = extractor(speech, sampling_rate=16_000, return_tensors="pt").input_features
        with torch.inference_mode():
            hidden = reference.encoder(features).last_hidden_state[0]
        return hidden.mean(dim=0).numpy()

    runners: dict[str, Any] = {baseline_name: baseline}
    for strategy in AUDIO_STRATEGIES:
        def build(strategy=strategy) -> None:
            encoder = AudioEncoder(model_dir, device=ctx.options.device, batch_size=1, **strategy.kwargs)
            runners[strategy.name] = lambda: encoder.encode([speech], normalize=False)[0]
            runners[strategy.name]()  # a strategy that fails to run is a failed row, not a failed round
        ctx.attempt("audio", group, strategy.name, "ours", "latency", "ms", build, higher_is_better=False)
    timed = ctx.time_interleaved(runners)
    spread, ref = timed.pop(baseline_name)
    ctx.record("audio", group, baseline_name, "baseline", "latency", "ms", spread.median * 1e3,
               higher_is_better=False, spread=spread.scaled(1e3), fidelity=_cosine(ref, ref))
    for strategy in AUDIO_STRATEGIES:
        if strategy.name in timed:
            spread, out = timed[strategy.name]
            ctx.record("audio", group, strategy.name, "ours", "latency", "ms", spread.median * 1e3,
                       higher_is_better=False, spread=spread.scaled(1e3), fidelity=_cosine(out, ref),
                       params=dict(strategy.kwargs))


def _onnx_peer(pixels: torch.Tensor) -> Any:
    import onnx
    import onnxruntime as ort

    from arrowengine.converters import onnx_dinov2
    from arrowengine.converters.packages import locate_source

    graph = onnx.load(str(locate_source("dinov2-small")))
    out = onnx_dinov2.backbone_output_name(graph.graph)
    graph.graph.output.append(onnx.helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda: session.run([out], {"input_image": pixels.numpy()})[0][:, 0]


def run_vision(ctx: BenchContext, model: str = "dinov2-small") -> None:
    """Images/s embedding real photos (batch of 8, CLS pooling), preprocessing included for ours."""
    from arrowengine.runtime.image_encoder import ImageEncoder

    model_dir = float_model_dir(ctx.options.models_dir, model)
    images = list(photos())
    group = f"{model} CLS embedding, {len(images)} photos, batch {len(images)}"
    reference = _reference(model_dir, "Dinov2Config", "Dinov2Model")
    preprocess = ImageEncoder(model_dir, batch_size=len(images)).preprocess

    def baseline() -> np.ndarray:
        with torch.inference_mode():
            return reference(pixel_values=preprocess(images)).last_hidden_state[:, 0].numpy()

    spread, ref = ctx.time(baseline)
    n = len(images)
    ctx.record("vision", group, "transformers Dinov2Model fp32", "baseline", "throughput", "images/s",
               n / spread.median, higher_is_better=True, spread=spread.as_rate(n), fidelity=_cosine(ref, ref))

    def peer() -> None:
        pixels = preprocess(images)
        fn = _onnx_peer(pixels)
        spread, out = ctx.time(fn)
        ctx.record("vision", group, "onnxruntime on the source ONNX", "peer", "throughput", "images/s",
                   n / spread.median, higher_is_better=True, spread=spread.as_rate(n),
                   fidelity=_cosine(out, ref), note="preprocessing not timed")
    ctx.attempt("vision", group, "onnxruntime on the source ONNX", "peer", "throughput", "images/s", peer)
    for strategy in VISION_STRATEGIES:
        def run(strategy=strategy) -> None:
            encoder = ImageEncoder(model_dir, device=ctx.options.device, batch_size=n, normalize=False,
                                   **strategy.kwargs)
            spread, out = ctx.time(lambda: encoder.encode(images))
            ctx.record("vision", group, strategy.name, "ours", "throughput", "images/s", n / spread.median,
                       higher_is_better=True, spread=spread.as_rate(n), fidelity=_cosine(out, ref),
                       params=dict(strategy.kwargs))
        ctx.attempt("vision", group, strategy.name, "ours", "throughput", "images/s", run)
