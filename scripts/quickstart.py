"""The main job on embedded defaults: fetch + convert MiniLM into models/, map it zero-copy, embed sentences.

Usage: python scripts/quickstart.py [--models-dir models]
Prints what happened and how long each step took.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import psutil

from arrowengine.convert.packages import fetch_model
from arrowengine.format.reader import WeightFile
from arrowengine.logging_setup import configure_logging
from arrowengine.runtime.text_encoder import TextEncoder

SENTENCES = [
    "The meeting with Alice moved to Tuesday at 3 pm.",
    "Alice's meeting is now on Tuesday afternoon.",
    "A cat is sleeping on the warm windowsill.",
    "Parquet files store columns of data on disk.",
    "Model weights can be memory-mapped straight from a columnar file.",
]


def main(argv: list[str] | None = None) -> int:
    """Run the demo and print a short report; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-dir", default="models")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    process = psutil.Process()

    t0 = time.perf_counter()
    model_dir = fetch_model("all-MiniLM-L6-v2", args.models_dir, progress=True)
    print(f"[1] model store: {model_dir} ({(model_dir / 'weights.parquet').stat().st_size / 2**20:.1f} MiB "
          f"Parquet) ready in {time.perf_counter() - t0:.2f} s")

    rss_before = process.memory_info().rss
    t0 = time.perf_counter()
    weights = WeightFile.open(Path(model_dir))
    open_ms = (time.perf_counter() - t0) * 1e3
    rss_growth = (process.memory_info().rss - rss_before) / 2**20
    lo, hi = weights.mapping_range()
    inside = sum(lo <= weights[n].data_ptr() < hi for n in weights.keys() if weights[n].numel())
    print(f"[2] opened weights.parquet in {open_ms:.1f} ms: schema V{weights.schema_version}, {len(weights)} tensors, "
          f"zero_copy={weights.zero_copy}, RSS +{rss_growth:.1f} MiB, {inside}/{len(weights)} tensors inside the "
          f"file mapping")

    t0 = time.perf_counter()
    encoder = TextEncoder(model_dir)
    print(f"[3] built {type(encoder.model).__name__} on the mapped weights in {time.perf_counter() - t0:.2f} s")

    t0 = time.perf_counter()
    vectors = encoder.encode(SENTENCES)
    ms = (time.perf_counter() - t0) * 1e3
    print(f"[4] embedded {len(SENTENCES)} sentences -> {vectors.shape} float32 in {ms:.1f} ms")
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    for i, text in enumerate(SENTENCES):
        j = int(sims[i].argmax())
        print(f"    {text!r}\n      nearest: {SENTENCES[j]!r} (cosine {sims[i, j]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
