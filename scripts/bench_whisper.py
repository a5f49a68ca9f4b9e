"""Whisper encoder latency on 30 s of real speech: arrowengine's AudioEncoder vs transformers' WhisperEncoder.

The audio is pocketsphinx's LibriVox test clips (Sense and Sensibility) joined into one waveform and padded
to Whisper's 30 s window by the log-mel front end, batch 1. For tiny.en and base it times, in interleaved
rounds (medians reported), the encoder forward of:

* transformers ``WhisperEncoder`` fp32 built from ``config.json`` with a plain (cloned) state dict: the baseline;
* the same under ``torch.autocast(bfloat16)`` (the peer in shared/PEERS.md);
* arrowengine ``AudioEncoder`` fp32 (mapped weights) and ``dtype="bfloat16"`` (autocast);
* the mapped encoder with its weights cast to bf16 once (what TextEncoder does for bf16);
* the lean encoder forward (``precision=``: ``bfloat16`` and ``int8-mixed``, see
  :mod:`arrowengine.runtime.whisper_fast`).

Fidelity is the cosine to the fp32 baseline: of the mean-pooled embedding (what ``encode`` returns) and per
encoder frame over the frames that hold audio (mean, 1st percentile and min; the min is one low-norm frame
where the residual stream nearly cancels, e.g. frame 1066 of base at norm 6.9 vs a median of 34, so small
absolute errors swing its cosine: transformers' own bf16 autocast scores 0.93 there).

    python scripts/bench_whisper.py [--out docs/benchmarks/whisper.json] [--threads N] [--clock wall|cpu]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arrowengine.runtime.audio_features import LogMelConfig, load_wav, log_mel

logger = logging.getLogger("bench_whisper")

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def speech() -> np.ndarray:
    """The LibriVox clips joined (about 25 s of 16 kHz speech)."""
    clips = sorted(LIBRIVOX.glob("*.wav"))
    if not clips:
        raise SystemExit(f"no LibriVox clips under {LIBRIVOX}; apt-get install pocketsphinx-testdata")
    return np.concatenate([load_wav(p)[0] for p in clips])


def _timed(fn, clock: str) -> float:
    now = time.thread_time if clock == "cpu" else time.perf_counter
    start = now()
    fn()
    return now() - start


def reference_encoder(model_dir: str):
    """transformers' WhisperEncoder over a plain, cloned fp32 state dict (the usual way to run it)."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from arrowengine.runtime.loading import load_config_dict, load_state_dict

    model = WhisperForConditionalGeneration(WhisperConfig.from_dict(load_config_dict(model_dir)))
    model.load_state_dict({k: v.clone() for k, v in load_state_dict(model_dir).items()}, strict=False)
    return model.eval().model.encoder


def bench_model(model_dir: str, features: torch.Tensor, frames: int, rounds: int, clock: str) -> dict:
    """Latency and fidelity rows for one Whisper model."""
    import copy

    from arrowengine.runtime.audio_encoder import AudioEncoder

    ref = reference_encoder(model_dir)
    ours32 = AudioEncoder(model_dir)
    ours16 = AudioEncoder(model_dir, dtype="bfloat16")
    cast = copy.deepcopy(ref).to(torch.bfloat16)  # same weights, cast once
    lean = {p: AudioEncoder(model_dir, precision=p) for p in ("bfloat16", "int8-mixed")}

    def hf(fp32: bool):
        def run() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=not fp32):
                return ref(features).last_hidden_state.float()
        return run

    def ours(enc: AudioEncoder):
        def run() -> torch.Tensor:
            with torch.inference_mode(), enc._autocast():
                return enc._encoder(features).last_hidden_state.float()
        return run

    def cast_once() -> torch.Tensor:
        with torch.inference_mode():
            return cast(features.bfloat16()).last_hidden_state.float()

    runs = {"transformers fp32": hf(True), "transformers bf16 autocast": hf(False),
            "arrowengine fp32": ours(ours32), "arrowengine bf16 (autocast)": ours(ours16),
            "bf16 weights cast once": cast_once,
            **{f"arrowengine lean {p}": ours(enc) for p, enc in lean.items()}}
    outputs = {name: run() for name, run in runs.items()}  # also the warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            times[name].append(_timed(run, clock) * 1e3)
        logger.info("%s round %d: %s", model_dir, r, {k: round(v[-1], 1) for k, v in times.items()})
    base = statistics.median(times["transformers fp32"])
    expect = outputs["transformers fp32"][0, :frames]
    rows = []
    for name, ms in times.items():
        got = outputs[name][0, :frames]
        per_frame = torch.nn.functional.cosine_similarity(got, expect, dim=-1)
        pooled = float(torch.nn.functional.cosine_similarity(got.mean(0), expect.mean(0), dim=0))
        rows.append({"strategy": name, "latency_ms": statistics.median(ms), "per_round_ms": ms,
                     "latency_vs_transformers_fp32": statistics.median(ms) / base,
                     "cosine_pooled": pooled, "cosine_frame_mean": float(per_frame.mean()),
                     "cosine_frame_p1": float(per_frame.quantile(0.01)), "cosine_frame_min": float(per_frame.min())})
    return {"model": model_dir, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/benchmarks/whisper.json")
    parser.add_argument("--models", nargs="+", default=["models/whisper-tiny.en", "models/whisper-base"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        torch.set_num_threads(args.threads)
    wave = speech()
    features, valid = log_mel([wave], LogMelConfig())  # padded to 30 s, as Whisper does
    frames = math.ceil(valid[0] / 2)
    result = {"benchmark": "whisper_encoder", "audio_seconds": len(wave) / 16_000, "window_seconds": 30,
              "audio_frames": frames, "batch": 1, "threads": torch.get_num_threads(), "clock": args.clock,
              "rounds": args.rounds, "torch": torch.__version__,
              "models": [bench_model(m, features, frames, args.rounds, args.clock) for m in args.models]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for model in result["models"]:
        for row in model["rows"]:
            print(f"{model['model']:28s} {row['strategy']:30s} {row['latency_ms']:8.1f} ms "
                  f"{row['latency_vs_transformers_fp32']:.2f}x  cos pooled {row['cosine_pooled']:.5f} "
                  f"frame mean {row['cosine_frame_mean']:.5f} p1 {row['cosine_frame_p1']:.4f} "
                  f"min {row['cosine_frame_min']:.4f}")


if __name__ == "__main__":
    main()
