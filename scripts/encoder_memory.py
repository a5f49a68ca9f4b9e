"""Resident memory of TextEncoder: construction + encoding 2,000 chat messages, fp32 vs an INT8 file, one fresh
process per configuration (VmRSS, RssAnon, RssFile deltas from after the imports, and the resident pages of the
mapped weights.parquet from /proc/self/smaps, MiB).

Usage: python scripts/encoder_memory.py INT8_MODEL_DIR [ROUNDS]
(the INT8 directory from ``arrowengine quantize models/all-MiniLM-L6-v2 INT8_MODEL_DIR --bits 8``: Q8_0 blocks)
"""

from __future__ import annotations

import json
import subprocess
import sys

CHILD = r"""
import gc, json, sys
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    out["WeightsFile"], inside = 0, False  # resident pages of the mapped weights.parquet (smaps, all mappings)
    for line in open("/proc/self/smaps"):
        first = line.split(maxsplit=1)[0]
        if "-" in first and not first.endswith(":"):
            inside = line.rstrip().endswith("weights.parquet")
        elif inside and first == "Rss:":
            out["WeightsFile"] += int(line.split()[1]) * 1024
    return out
from arrowengine.datasets import chitchat_messages
from arrowengine.runtime.text_encoder import TextEncoder
import transformers, tokenizers  # imported before the baseline
texts = chitchat_messages()[:20000:10][:2000]
gc.collect()
before = status()
encoder = TextEncoder(sys.argv[1], **json.loads(sys.argv[2]))
built = status()
encoder.encode(texts)
gc.collect()
print(json.dumps({"before": before, "built": built, "after": status(), "precision": encoder.precision}))
"""


def main() -> None:
    int8_dir, rounds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1
    configs = [(path, kwargs) for path in ("models/all-MiniLM-L6-v2", int8_dir)
               for kwargs in ({}, {"precision": "fp32"}, {"precision": None})]
    for _ in range(rounds):
        for path, kwargs in configs:
            done = subprocess.run([sys.executable, "-c", CHILD, path, json.dumps(kwargs)], capture_output=True,
                                  text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if not lines:
                print(done.stderr[-2000:])
                continue
            result = json.loads(lines[-1])
            row = {f"{key} {stage}": round((result[stage][key] - result["before"][key]) / 2**20, 1)
                   for stage in ("built", "after") for key in result["after"]}
            print(path, kwargs, result["precision"], row, flush=True)


if __name__ == "__main__":
    main()
