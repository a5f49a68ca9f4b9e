"""Operator-level latency at shapes (and with weights) taken from the real models in ``models/``.

Linear (fp32, bf16, each V2 execution mode at INT8 / INT4 / INT2), attention (SDPA vs eager), layer norm,
embedding gather (mapped from the Parquet file vs an in-RAM copy) and dequantization. Fidelity of every
figure is the relative error ``||y - y_fp32|| / ||y_fp32||`` against the float32 reference of the same op.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from arrowengine.bench.context import BenchContext
from arrowengine.bench.results import Fidelity

__all__ = ["run_ops"]

logger = logging.getLogger(__name__)

QUANT_FORMATS = ((8, 0), (4, 128), (2, 64))  # (bits, group size): INT8 per channel, INT4 g128, INT2 g64
MODES = ("dequant-on-the-fly", "int8-kernel", "dequant-on-load")


@dataclass(frozen=True)
class LinearCase:
    """One Linear at a real model's shape: the weight's name in the model file and the tokens per call."""

    model: str
    weight: str
    tokens: int
    label: str


LINEAR_CASES = (
    LinearCase("all-MiniLM-L6-v2", "encoder.layer.0.intermediate.dense.weight", 1024, "MiniLM FFN up, 1024 tok"),
    LinearCase("all-MiniLM-L6-v2", "encoder.layer.0.output.dense.weight", 1024, "MiniLM FFN down, 1024 tok"),
    LinearCase("smollm2-135m-instruct", "model.layers.0.mlp.up_proj.weight", 1, "SmolLM2 MLP up, decode"),
    LinearCase("smollm2-135m-instruct", "model.layers.0.mlp.up_proj.weight", 512, "SmolLM2 MLP up, 512 tok"),
    LinearCase("smollm2-135m-instruct", "model.embed_tokens.weight", 1, "SmolLM2 lm_head, decode"),
    LinearCase("whisper-base", "model.encoder.layers.0.fc1.weight", 1500, "Whisper-base fc1, 1500 frames"),
)
QUICK_LINEAR = (0, 2, 4)


def _rel_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref).norm() / ref.norm().clamp_min(1e-30))


def _weight(ctx: BenchContext, model: str, name: str) -> torch.Tensor | None:
    from arrowengine.format.reader import WeightFile

    path = Path(ctx.options.models_dir) / model / "weights.parquet"
    if not path.is_file():
        return None
    return WeightFile.open(path).state_dict()[name]


def _bench_linear(ctx: BenchContext, case: LinearCase) -> None:
    from quant import QuantLinear, quantize

    weight = _weight(ctx, case.model, case.weight)
    group = f"linear: {case.label} [{case.tokens}x{weight.shape[1] if weight is not None else '?'}" \
            f"->{weight.shape[0] if weight is not None else '?'}]"
    if weight is None:
        ctx.results.skipped("ops", group, "fp32 F.linear", "baseline", "latency", "ms",
                            f"models/{case.model} is missing; run python scripts/fetch_models.py",
                            higher_is_better=False)
        return
    x = torch.randn(case.tokens, weight.shape[1], generator=torch.Generator().manual_seed(0))
    ref = F.linear(x, weight)

    def measure(strategy: str, role: str, fn, params: dict) -> None:
        def run() -> None:
            spread, y = ctx.time(fn)
            ctx.record("ops", group, strategy, role, "latency", "ms", spread.median * 1e3, higher_is_better=False,
                       spread=spread.scaled(1e3), params=params,
                       fidelity=Fidelity("rel_error", _rel_error(y, ref), higher_is_better=False))
        ctx.attempt("ops", group, strategy, role, "latency", "ms", run, higher_is_better=False)

    with torch.inference_mode():
        measure("fp32 F.linear", "baseline", lambda: F.linear(x, weight), {"dtype": "float32"})
        w16, x16 = weight.to(torch.bfloat16), x.to(torch.bfloat16)
        measure("bf16 F.linear", "ours", lambda: F.linear(x16, w16), {"dtype": "bfloat16"})
        for bits, group_size in QUANT_FORMATS:
            qt = quantize(weight, bits, group_size, name=case.weight)
            for mode in MODES:
                name = f"INT{bits}{f' g{group_size}' if group_size else ''} {mode}"
                if not ctx.wanted(name, "ours"):
                    continue
                try:
                    layer = QuantLinear(qt, None, mode=mode, name=case.weight)
                except Exception as exc:
                    ctx.results.skipped("ops", group, name, "ours", "latency", "ms", f"{type(exc).__name__}: {exc}",
                                        status="failed", higher_is_better=False)
                    continue
                measure(name, "ours", lambda layer=layer: layer(x),
                        {"bits": bits, "group_size": group_size, "mode": mode})


def _eager_attention(q, k, v, mask):
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores + mask
    return torch.softmax(scores, dim=-1) @ v


def _attention_case(ctx: BenchContext, label: str, shape: tuple[int, int, int, int], lk: int, padded: bool,
                    gen: torch.Generator) -> None:
    b, h, lq, d = shape
    q = torch.randn(b, h, lq, d, generator=gen)
    k, v = torch.randn(b, h, lk, d, generator=gen), torch.randn(b, h, lk, d, generator=gen)
    mask = None
    if padded:  # real batches are padded: mask out a ragged tail per row
        lengths = torch.randint(4, lk + 1, (b,), generator=gen)
        mask = torch.zeros(b, 1, 1, lk).masked_fill(torch.arange(lk) >= lengths[:, None, None, None], -1e9)
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
    mb = None if mask is None else mask.to(torch.bfloat16)
    with torch.inference_mode():
        ref = _eager_attention(q, k, v, mask)
        _bench_simple(ctx, f"attention: {label}", [
            ("eager matmul-softmax fp32", "baseline", lambda: _eager_attention(q, k, v, mask)),
            ("SDPA fp32", "ours", lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
            ("SDPA bf16", "ours", lambda: F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mb)),
        ], ref)


def _bench_attention(ctx: BenchContext) -> None:
    cases = [("MiniLM batch 32 x 32 tok, 12 heads x 32", (32, 12, 32, 32), 32, True),
             ("Whisper-base encoder 1500 frames, 8 heads x 64", (1, 8, 1500, 64), 1500, False),
             ("SmolLM2 decode 1 query vs 512 cached, 9 heads x 64", (1, 9, 1, 64), 512, False)]
    if ctx.options.quick:
        cases = cases[:1] + cases[2:]
    gen = torch.Generator().manual_seed(1)
    for label, shape, lk, padded in cases:
        _attention_case(ctx, label, shape, lk, padded, gen)


def _bench_simple(ctx: BenchContext, group: str, variants: list, ref: torch.Tensor, unit: str = "ms") -> None:
    unit_scale = {"ms": 1e3, "us": 1e6}[unit]
    for strategy, role, fn in variants:
        def run(fn=fn, strategy=strategy, role=role) -> None:
            spread, y = ctx.time(fn)
            ctx.record("ops", group, strategy, role, "latency", unit, spread.median * unit_scale,
                       higher_is_better=False, spread=spread.scaled(unit_scale),
                       fidelity=Fidelity("rel_error", _rel_error(y, ref), higher_is_better=False))
        ctx.attempt("ops", group, strategy, role, "latency", unit, run, higher_is_better=False)


def _bench_layer_norm(ctx: BenchContext) -> None:
    x = torch.randn(1024, 384, generator=torch.Generator().manual_seed(2))
    w, b = torch.rand(384) + 0.5, torch.randn(384) * 0.1

    def manual() -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-12) * w + b

    xb, wb, bb = x.to(torch.bfloat16), w.to(torch.bfloat16), b.to(torch.bfloat16)
    with torch.inference_mode():
        ref = F.layer_norm(x, (384,), w, b, 1e-12)
        _bench_simple(ctx, "layer norm: MiniLM [1024 tok x 384]", [
            ("F.layer_norm fp32", "baseline", lambda: F.layer_norm(x, (384,), w, b, 1e-12)),
            ("decomposed fp32", "ours", manual),
            ("F.layer_norm bf16", "ours", lambda: F.layer_norm(xb, (384,), wb, bb, 1e-12)),
        ], ref)


def _bench_embedding(ctx: BenchContext) -> None:
    table = _weight(ctx, "smollm2-135m-instruct", "model.embed_tokens.weight")
    group = "embedding gather: SmolLM2 [49152 x 576], 512 ids"
    if table is None:
        ctx.results.skipped("ops", group, "in-RAM copy", "baseline", "latency", "ms",
                            "models/smollm2-135m-instruct is missing; run python scripts/fetch_models.py",
                            higher_is_better=False)
        return
    ids = torch.randint(0, table.shape[0], (512,), generator=torch.Generator().manual_seed(3))
    in_ram = table.clone()
    with torch.inference_mode():
        ref = F.embedding(ids, in_ram)
        _bench_simple(ctx, group, [
            ("in-RAM copy", "baseline", lambda: F.embedding(ids, in_ram)),
            ("mapped from Parquet (zero-copy)", "ours", lambda: F.embedding(ids, table)),
        ], ref, unit="us")


def _bench_dequantize(ctx: BenchContext) -> None:
    from quant import dequantize, quantize

    weight = _weight(ctx, "smollm2-135m-instruct", "model.layers.0.mlp.up_proj.weight")
    group = "dequantize: SmolLM2 up_proj [1536 x 576] to fp32"
    if weight is None:
        return
    variants = [("fp32 copy (memory floor)", "baseline", weight.clone)]
    for bits, group_size in QUANT_FORMATS:
        qt = quantize(weight, bits, group_size, name="up_proj")
        variants.append((f"INT{bits}{f' g{group_size}' if group_size else ''} dequantize", "ours",
                         lambda qt=qt: dequantize(qt)))
    with torch.inference_mode():
        _bench_simple(ctx, group, variants, weight.float())


def run_ops(ctx: BenchContext) -> None:
    """Every operator benchmark; results go to ``ctx.results`` under suite ``ops``."""
    from tqdm import tqdm

    cases = [LINEAR_CASES[i] for i in QUICK_LINEAR] if ctx.options.quick else list(LINEAR_CASES)
    steps = [*(lambda c=c: _bench_linear(ctx, c) for c in cases), lambda: _bench_attention(ctx),
             lambda: _bench_layer_norm(ctx), lambda: _bench_embedding(ctx), lambda: _bench_dequantize(ctx)]
    for step in tqdm(steps, desc="operators", unit="op"):
        step()
