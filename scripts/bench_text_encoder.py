"""MiniLM sentence throughput: arrowengine TextEncoder variants vs sentence-transformers, in one run.

Embeds N real chat messages (chitchat-dataset, varied length) at batch 32 with each strategy, after one warm-up
pass, and reports sentences/s, the ratio to sentence-transformers fp32, and cosine to its fp32 embeddings.

Usage: python scripts/bench_text_encoder.py [--models-dir models] [--n 2000] [--out bench_out/text_encoder.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from arrowengine.converters.packages import fetch_model, locate_source
from arrowengine.hardware import cpu_info
from arrowengine.runtime.text_encoder import TextEncoder


def _messages(n: int) -> list[str]:
    spec = importlib.util.find_spec("chitchat_dataset")
    data = json.loads((Path(spec.origin).parent / "dataset.json").read_text(encoding="utf-8"))
    out = [m["text"].strip() for conv in data.values() for turn in conv["messages"] for m in turn if m["text"].strip()]
    return out[:n]


def _timed(encode, texts: list[str]) -> tuple[np.ndarray, float]:
    encode(texts[:64])  # warm-up: allocator, oneDNN primitives, compiled graphs
    start = time.perf_counter()
    vectors = encode(texts)
    return np.asarray(vectors, dtype=np.float32), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Run every strategy and print/write the table; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", default="bench_out/text_encoder.json")
    args = parser.parse_args(argv)
    from sentence_transformers import SentenceTransformer

    texts = _messages(args.n)
    model_dir = fetch_model("all-MiniLM-L6-v2", args.models_dir)
    st = SentenceTransformer(str(locate_source("all-MiniLM-L6-v2")), device="cpu")
    reference, base_s = _timed(lambda t: st.encode(t, batch_size=32, normalize_embeddings=True), texts)
    rows = [{"strategy": "sentence-transformers fp32", "sentences_per_s": len(texts) / base_s, "ratio": 1.0,
             "cosine_mean": 1.0, "cosine_min": 1.0}]
    for label, kwargs in [("arrowengine eager fp32", {}), ("arrowengine eager bf16", {"dtype": "bfloat16"}),
                          ("arrowengine onnxruntime fp32", {"backend": "onnxruntime"}),
                          ("arrowengine compile fp32", {"backend": "compile"})]:
        encoder = TextEncoder(model_dir, batch_size=32, **kwargs)
        vectors, seconds = _timed(encoder.encode, texts)
        cosine = np.sum(vectors * reference, axis=1)
        rows.append({"strategy": label, "backend": encoder.backend.name, "sentences_per_s": len(texts) / seconds,
                     "ratio": base_s / seconds, "cosine_mean": float(cosine.mean()), "cosine_min": float(cosine.min())})
    report = {"benchmark": "text_encoder", "machine": cpu_info().to_dict(), "sentences": len(texts), "rows": rows,
              "target_2x_met": any(r["ratio"] >= 2.0 and r["cosine_min"] >= 0.99 for r in rows[1:])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    for r in rows:
        print(f"{r['strategy']:32s} {r['sentences_per_s']:8.0f}/s  {r['ratio']:5.2f}x  "
              f"cos mean {r['cosine_mean']:.5f} min {r['cosine_min']:.5f}")
    print(f">= 2x sentence-transformers at cosine >= 0.99: {'met' if report['target_2x_met'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
