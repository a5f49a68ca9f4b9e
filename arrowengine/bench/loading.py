"""Load time (open to first output) and memory per strategy, each in a fresh process; INT8 weight bytes.

Peers load the same weights the usual ways: sentence-transformers (safetensors), transformers
``from_pretrained`` (safetensors, written from the same tensors), and ``torch.load`` of a ``.pt`` state dict. The
page cache is warm (one untimed probe first) so the figures compare loaders, not the disk.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from arrowengine.bench.context import BenchContext
from arrowengine.bench.variants import float_model_dir, int8_model_dir
from arrowengine.errors import EngineError

__all__ = ["int8_weight_bytes", "run_loading"]

logger = logging.getLogger(__name__)


class ProbeError(EngineError, RuntimeError):
    """A load probe (a measuring subprocess) failed; the message holds its exit code and last output lines."""


def _probe(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    env = dict(os.environ, PYTHONWARNINGS="ignore", TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
    out = subprocess.run([sys.executable, "-m", "arrowengine.bench.probe", json.dumps(spec)], capture_output=True,
                         text=True, timeout=timeout, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise ProbeError(f"probe {spec['loader']} failed (exit {out.returncode}): {' | '.join(tail)}; run "
                         f"python -m arrowengine.bench.probe '{json.dumps(spec)}' to see the whole output")
    return json.loads(lines[-1])


def int8_weight_bytes(int8_dir: Path) -> dict[str, int]:
    """Stored bytes of a V2 file's quantized tensors (all, and codes alone) and the fp32 bytes they replace."""
    from arrowengine.format.reader import WeightFile

    weights = WeightFile.open(int8_dir / "weights.parquet")
    stored = codes = float32 = 0
    for name in weights:
        if name in weights.aliases or not weights.is_quantized(name):
            continue
        info = weights.info(name)
        stored += info.nbytes + info.quant.scales_nbytes + info.quant.zero_points_nbytes
        codes += info.nbytes
        float32 += info.numel * 4
    weights.close()
    return {"quantized_bytes": stored, "codes_bytes": codes, "float32_bytes": float32}


def _specs(ctx: BenchContext, scratch: Path) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(model, strategy, role, weights file, probe spec) for every loader of every selected model."""
    from arrowengine.converters.packages import locate_source

    specs = []
    models = ctx.options.models
    if "all-MiniLM-L6-v2" in models:
        name = "all-MiniLM-L6-v2"
        ours = float_model_dir(ctx.options.models_dir, name)
        source = locate_source(name)
        specs.append((name, "sentence-transformers (safetensors)", "baseline", str(source / "model.safetensors"),
                      {"loader": "text-sentence-transformers", "path": str(source)}))
        specs.append((name, "arrowengine fp32 (zero-copy)", "ours", str(ours / "weights.parquet"),
                      {"loader": "text-arrowengine", "path": str(ours)}))
        if not ctx.options.quick:
            int8 = int8_model_dir(ctx.options.models_dir, name)
            specs.append((name, "arrowengine INT8 dequant-on-the-fly", "ours", str(int8 / "weights.parquet"),
                          {"loader": "text-arrowengine", "path": str(int8)}))
            pt = scratch / "minilm.pt"
            if not pt.is_file():
                import torch

                from arrowengine.runtime.loading import load_state_dict
                torch.save({k: v.clone() for k, v in load_state_dict(ours).items()}, pt)
            specs.append((name, "transformers + torch.load", "peer", str(pt),
                          {"loader": "text-torch-load", "path": str(pt), "config_dir": str(source)}))
    if "smollm2-135m-instruct" in models:
        name = "smollm2-135m-instruct"
        ours = float_model_dir(ctx.options.models_dir, name)
        hf_dir = scratch / "smollm2-safetensors"
        if not (hf_dir / "model.safetensors").is_file():
            _save_pretrained(ours, hf_dir)
        specs.append((name, "transformers from_pretrained (safetensors)", "baseline",
                      str(hf_dir / "model.safetensors"), {"loader": "llm-transformers", "path": str(hf_dir)}))
        specs.append((name, "arrowengine fp32 (zero-copy)", "ours", str(ours / "weights.parquet"),
                      {"loader": "llm-arrowengine", "path": str(ours)}))
        specs.append((name, "arrowengine bf16", "ours", str(ours / "weights.parquet"),
                      {"loader": "llm-arrowengine", "path": str(ours), "kwargs": {"dtype": "bfloat16"}}))
    return specs


def _save_pretrained(model_dir: Path, out: Path) -> None:
    """The same SmolLM2 weights as a transformers checkpoint (config + tokenizer + model.safetensors)."""
    import shutil

    from arrowengine.bench.llm import transformers_llama

    transformers_llama(model_dir).save_pretrained(out)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "generation_config")) or f.suffix == ".jinja":
            shutil.copy(f, out / f.name)


def run_loading(ctx: BenchContext) -> None:
    """Open-to-first-output time and memory per loader (fresh process each, median of repeats)."""
    from tqdm import tqdm

    scratch = Path(tempfile.gettempdir()) / "arrowengine-bench-load"
    scratch.mkdir(parents=True, exist_ok=True)
    repeats = 1 if ctx.options.quick else 3
    for model, strategy, role, weights_file, spec in tqdm(_specs(ctx, scratch), desc="load probes", unit="loader"):
        group = f"{model} open to first output"
        spec = dict(spec, weights_file=weights_file)

        def run(model=model, strategy=strategy, role=role, spec=spec, group=group) -> None:
            _probe(spec)  # untimed: warms the page cache and the OS's view of the files
            runs = [_probe(spec) for _ in range(repeats)]
            seconds = [r["seconds"] for r in runs]
            last = runs[-1]
            ctx.record("load", group, strategy, role, "load", "ms", statistics.median(seconds) * 1e3,
                       higher_is_better=False,
                       spread={"median": statistics.median(seconds) * 1e3, "min": min(seconds) * 1e3,
                               "max": max(seconds) * 1e3, "p25": min(seconds) * 1e3, "p75": max(seconds) * 1e3,
                               "runs": len(seconds)})
            ctx.memory.append({"model": model, "strategy": strategy, **{k: last[k] for k in (
                "anon_bytes", "file_bytes", "peak_rss_bytes", "model_resident_bytes", "model_file_bytes",
                "vram_bytes")}})
        ctx.attempt("load", group, strategy, role, "load", "ms", run, higher_is_better=False)
    if "all-MiniLM-L6-v2" in ctx.options.models:
        try:
            ctx.int8_bytes = int8_weight_bytes(int8_model_dir(ctx.options.models_dir, "all-MiniLM-L6-v2"))
        except Exception as exc:  # the target is then reported as not measured, with the reason
            logger.warning("INT8 weight bytes not measured: %s", exc)
