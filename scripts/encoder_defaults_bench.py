"""Default encoders (precision="auto") against the fp32 path in one process, interleaved rounds (medians).

MiniLM: sentences/s on 2,000 chat messages and cosine min/mean to eager fp32, then the latency of one message
per call (a memory store's query), default vs the lean fp32 forward vs eager fp32. Whisper tiny.en: latency on 30 s of
speech and the pooled cosine to transformers' fp32 encoder.

Usage: python scripts/encoder_defaults_bench.py ROUNDS [text] [audio]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from arrowengine.datasets import chitchat_messages
from arrowengine.runtime.precision import select_precision


def _rounds(encoders: dict, inputs: list, rounds: int) -> tuple[dict, dict]:
    times: dict[str, list[float]] = {name: [] for name in encoders}
    first = {}
    for _ in range(rounds):
        for name, encode in encoders.items():
            start = time.perf_counter()
            out = encode(inputs)
            times[name].append(time.perf_counter() - start)
            first.setdefault(name, out)
    return {name: float(np.median(t)) for name, t in times.items()}, first


def text(rounds: int) -> None:
    from arrowengine.runtime.text_encoder import TextEncoder

    texts = chitchat_messages()[:20000:10][:2000]
    model = "models/all-MiniLM-L6-v2"
    fp32 = TextEncoder(model, precision=None)  # first: pays the imports
    start = time.perf_counter()
    default = TextEncoder(model)
    print(f"text construct: default ({default.precision}) {time.perf_counter() - start:.2f} s", flush=True)
    lean = TextEncoder(model, precision="fp32")
    encoders = {"default": default.encode, "lean fp32": lean.encode, "fp32": fp32.encode}
    medians, first = _rounds(encoders, texts, rounds)
    cosine = (first["default"] * first["fp32"]).sum(1)
    ours, base = 2000 / medians["default"], 2000 / medians["fp32"]
    print(f"text 2000 chat messages: default {ours:.0f}/s, lean fp32 {2000 / medians['lean fp32']:.0f}/s, fp32 eager "
          f"{base:.0f}/s, ratio {ours / base:.2f}x; cosine min {cosine.min():.5f} mean {cosine.mean():.6f}", flush=True)
    # one message per call, as a memory store embeds a query: interleaved, so load hits every encoder alike
    latency: dict[str, list[float]] = {name: [] for name in encoders}
    for message in texts[:200 * rounds]:
        for name, encode in encoders.items():
            start = time.perf_counter()
            encode([message])
            latency[name].append(1000 * (time.perf_counter() - start))
    summary = {name: (np.percentile(t, 50), np.percentile(t, 95)) for name, t in latency.items()}
    print("text one message per call (p50 / p95 ms): " + ", ".join(
        f"{name} {p50:.2f} / {p95:.2f}" for name, (p50, p95) in summary.items())
        + f"; default / lean fp32 p50 ratio {summary['default'][0] / summary['lean fp32'][0]:.2f}", flush=True)


def audio(rounds: int) -> None:
    from arrowengine.bench.datasets import speech_30s
    from arrowengine.runtime.audio_encoder import AudioEncoder

    model = "models/whisper-tiny.en"
    fp32 = AudioEncoder(model, precision=None, batch_size=1)
    start = time.perf_counter()
    default = AudioEncoder(model, batch_size=1)
    print(f"audio construct: default ({default.precision}) {time.perf_counter() - start:.2f} s", flush=True)
    medians, first = _rounds({"default": default.encode, "fp32": fp32.encode}, [speech_30s()], 2 * rounds)
    cosine = float((first["default"] * first["fp32"]).sum())
    ours, base = 1000 * medians["default"], 1000 * medians["fp32"]
    print(f"whisper tiny.en 30 s: default {ours:.0f} ms, fp32 transformers {base:.0f} ms, ratio {ours / base:.2f}; "
          f"pooled cosine {cosine:.6f}", flush=True)


if __name__ == "__main__":
    print("rule here: text", select_precision("text"), "audio", select_precision("audio"), flush=True)
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    if "text" in sys.argv[2:]:
        text(count)
    if "audio" in sys.argv[2:]:
        audio(count)
