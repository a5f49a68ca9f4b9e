"""Loading benchmark: arrowengine's Parquet vs safetensors, torch.load(mmap=True), torch.load, pq.read_table.

Builds a ~1 GB Qwen2.5-0.5B-shaped bf16 state dict (random values, real shapes), writes it in every format,
then measures each loader in a fresh subprocess: open time, RSS and anonymous memory right after open, and
the time to touch every byte (a float32 sum over each tensor). Each loader first opens a tiny file of its own
format, so one-time library start-up is not counted as the model's cost. Runs are repeated with the page
cache warm and with the file's pages evicted (posix_fadvise DONTNEED), and the median is reported.

Usage: python scripts/bench_load.py [--out bench_out/load] [--repeats 3] [--scale 1.0]
Writes ``load.json`` (schema in docs/benchmarks/README.md), ``load.md`` and ``load.png`` into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

LOADERS = ("arrowengine", "safetensors", "torch_load_mmap", "torch_load", "pq_read_table")
TARGETS = {
    "open_vs_safetensors_max": 2.0,  # our open time / safetensors open time
    "speedup_vs_torch_load_min": 50.0,  # torch.load open time / ours
    "anon_mib_after_open_max": 16.0,
}


def qwen_shaped_state_dict(scale: float = 1.0):
    """Qwen2.5-0.5B tensor names and shapes (bf16, random); ``scale`` < 1 shrinks layers and vocab for quick runs."""
    import torch

    vocab, hidden, inter, layers, kv = int(151936 * scale), 896, 4864, max(1, int(24 * scale)), 128
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float32).to(torch.bfloat16)

    state = {"model.embed_tokens.weight": rand(vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        state.update({
            p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.q_proj.bias": rand(hidden),
            p + "self_attn.k_proj.weight": rand(kv, hidden), p + "self_attn.k_proj.bias": rand(kv),
            p + "self_attn.v_proj.weight": rand(kv, hidden), p + "self_attn.v_proj.bias": rand(kv),
            p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
            p + "input_layernorm.weight": rand(hidden), p + "post_attention_layernorm.weight": rand(hidden),
        })
    state["model.norm.weight"] = rand(hidden)
    return state


def write_all(state, directory: Path) -> dict[str, Path]:
    """Write ``state`` in every format; returns loader name -> file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import save_file

    from arrowengine.format import write_weights

    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "arrowengine": directory / "weights.parquet",
        "safetensors": directory / "model.safetensors",
        "torch_load_mmap": directory / "model.pt",
        "torch_load": directory / "model.pt",
        "pq_read_table": directory / "plain.parquet",
    }
    write_weights(files["arrowengine"], state)
    save_file(state, str(files["safetensors"]))
    torch.save(state, files["torch_load"])
    # What a user would write with pyarrow defaults: a table of name + raw bytes (snappy, dictionary...).
    table = pa.table({"name": list(state), "data": [t.view(torch.uint8).numpy().tobytes() for t in state.values()]})
    pq.write_table(table, files["pq_read_table"])
    for kind in ("arrowengine", "safetensors", "torch_load"):
        tiny = {"x": torch.ones(8, dtype=torch.bfloat16)}
        warm = directory / f"warmup.{kind}"
        if kind == "arrowengine":
            write_weights(warm, tiny)
        elif kind == "safetensors":
            save_file(tiny, str(warm))
        else:
            torch.save(tiny, warm)
    pq.write_table(pa.table({"name": ["x"], "data": [b"12345678"]}), directory / "warmup.pq_read_table")
    return files


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def worker(kind: str, path: str, directory: str) -> dict:
    """Run inside a fresh interpreter: open with loader ``kind``, measure, touch every byte."""
    import pyarrow.parquet as pq
    import torch

    from arrowengine.format import WeightFile

    def open_with(p: str):
        if kind == "arrowengine":
            return WeightFile.open(p).state_dict()
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(p)
        if kind == "torch_load_mmap":
            return torch.load(p, mmap=True, weights_only=True)
        if kind == "torch_load":
            return torch.load(p, weights_only=True)
        return pq.read_table(p)  # a copy of everything, decoded

    warm_kind = "torch_load" if kind == "torch_load_mmap" else kind
    open_with(str(Path(directory) / f"warmup.{warm_kind}"))
    rss0, anon0 = _status_kib("VmRSS"), _status_kib("RssAnon")
    start = time.perf_counter()
    state = open_with(path)
    open_s = time.perf_counter() - start
    rss1, anon1 = _status_kib("VmRSS"), _status_kib("RssAnon")
    start = time.perf_counter()
    total = 0.0
    if kind == "pq_read_table":
        import numpy as np

        for chunk in state.column("data").chunks:  # the values buffer holds every tensor's bytes
            total += float(np.frombuffer(chunk.buffers()[2], dtype=np.uint8).sum(dtype=np.float64))
    else:
        for tensor in state.values():
            total += float(tensor.sum(dtype=torch.float32))
    touch_s = time.perf_counter() - start
    return {"open_s": open_s, "rss_mib_after_open": (rss1 - rss0) / 1024, "anon_mib_after_open": (anon1 - anon0) / 1024,
            "touch_all_s": touch_s, "rss_mib_after_touch": (_status_kib("VmRSS") - rss0) / 1024}


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def run_one(kind: str, path: Path, directory: Path, cold: bool) -> dict:
    """Measure one loader once in a subprocess."""
    if cold:
        _evict(path)
    out = subprocess.run([sys.executable, __file__, "--worker", kind, str(path), str(directory)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results: dict) -> dict:
    """Ratios against the peers and target checks, from the warm medians."""
    warm = {k: v["warm"]["open_s"] for k, v in results.items()}
    ours = warm["arrowengine"]
    ratios = {
        "open_vs_safetensors": ours / warm["safetensors"],
        "speedup_vs_torch_load": warm["torch_load"] / ours,
        "speedup_vs_pq_read_table": warm["pq_read_table"] / ours,
        "speedup_vs_torch_load_mmap": warm["torch_load_mmap"] / ours,
    }
    anon = results["arrowengine"]["warm"]["anon_mib_after_open"]
    checks = {
        "open within 2x of safetensors": ratios["open_vs_safetensors"] <= TARGETS["open_vs_safetensors_max"],
        ">= 50x faster than torch.load": ratios["speedup_vs_torch_load"] >= TARGETS["speedup_vs_torch_load_min"],
        "anonymous memory after open < 16 MiB": anon < TARGETS["anon_mib_after_open_max"],
    }
    return {"ratios": ratios, "targets_met": checks}


def _median(runs: list[dict]) -> dict:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {
        "spread": {key: [min(r[key] for r in runs), max(r[key] for r in runs)] for key in runs[0]}}


def write_reports(report: dict, out: Path) -> None:
    """JSON, markdown and a PNG bar chart of open time and memory."""
    (out / "load.json").write_text(json.dumps(report, indent=2))
    lines = ["| loader | open warm (ms) | open cold (ms) | RSS after open (MiB) | anon after open (MiB) | "
             "touch all (s) |", "| --- | --- | --- | --- | --- | --- |"]
    for kind, r in report["loaders"].items():
        lines.append(f"| {kind} | {r['warm']['open_s'] * 1e3:.1f} | {r['cold']['open_s'] * 1e3:.1f} | "
                     f"{r['warm']['rss_mib_after_open']:.1f} | {r['warm']['anon_mib_after_open']:.1f} | "
                     f"{r['warm']['touch_all_s']:.2f} |")
    lines.append("")
    for name, ok in report["summary"]["targets_met"].items():
        lines.append(f"- {name}: {'met' if ok else 'NOT MET'}")
    for name, value in report["summary"]["ratios"].items():
        lines.append(f"- {name}: {value:.2f}x")
    (out / "load.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(report["loaders"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(kinds, [report["loaders"][k]["warm"]["open_s"] * 1e3 for k in kinds])
    axes[0].set_yscale("log")
    axes[0].set_ylabel("open time, warm cache (ms, log)")
    axes[1].bar(kinds, [max(report["loaders"][k]["warm"]["anon_mib_after_open"], 0.01) for k in kinds])
    axes[1].set_yscale("log")
    axes[1].set_ylabel("anonymous memory after open (MiB, log)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"Loading a {report['file_mib']['arrowengine']:.0f} MiB bf16 state dict")
    fig.tight_layout()
    fig.savefig(out / "load.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and write the reports; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_out/load")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the model (0.1 for a quick run)")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return 0
    from tqdm import tqdm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "files"
    files = write_all(qwen_shaped_state_dict(args.scale), data_dir)
    results: dict = {}
    jobs = [(kind, cold) for kind in LOADERS for cold in (False, True)]
    with tqdm(total=len(jobs) * args.repeats, desc="loaders") as bar:
        for kind, cold in jobs:
            runs = []
            for _ in range(args.repeats):
                runs.append(run_one(kind, files[kind], data_dir, cold))
                bar.update()
            results.setdefault(kind, {})["cold" if cold else "warm"] = _median(runs)
    from arrowengine.hardware import cpu_info

    report = {
        "benchmark": "load",
        "machine": cpu_info().to_dict(),
        "repeats": args.repeats,
        "file_mib": {k: files[k].stat().st_size / 2**20 for k in LOADERS},
        "loaders": results,
        "summary": summarise(results),
    }
    write_reports(report, out)
    print((out / "load.md").read_text())
    for path in data_dir.iterdir():
        path.unlink()
    data_dir.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
