"""The benchmark's outputs: JSON (see :mod:`arrowengine.bench.schema`), a markdown report and PNG plots."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from arrowengine.bench.context import BenchContext
from arrowengine.bench.environment import describe_environment
from arrowengine.bench.results import Target
from arrowengine.bench.schema import SCHEMA_VERSION, validate_report

__all__ = ["build_report", "console_summary", "markdown", "write_outputs"]

logger = logging.getLogger(__name__)


def build_report(ctx: BenchContext, targets: list[Target]) -> dict[str, Any]:
    """The JSON report of a finished run (ratios filled, targets evaluated), validated against the schema."""
    options = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
               for k, v in dataclasses.asdict(ctx.options).items()}
    report = {
        "schema_version": SCHEMA_VERSION,
        "benchmark": "bench_baseline_advanced",
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "seconds": time.perf_counter() - ctx.started,
        "options": options,
        "environment": describe_environment(),
        "results": [r.to_dict() for r in ctx.results.results],
        "memory": ctx.memory,
        "targets": [t.to_dict() for t in targets],
    }
    validate_report(report)
    return report


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def _fidelity_text(r: dict[str, Any]) -> str:
    fid = r["fidelity"]
    if not fid or fid["value"] is None:
        return "-"
    text = f"{fid['metric']} {fid['value']:.4g}"
    for key, value in fid["extra"].items():
        if value is not None:
            text += f", {key} {value:.4g}"
    if fid["threshold"] is not None:
        ok = fid["value"] >= fid["threshold"] if fid["higher_is_better"] else fid["value"] <= fid["threshold"]
        text += "" if ok else f" (misses the bar {fid['threshold']})"
    return text


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report: environment, targets (met / NOT MET), then every group's table."""
    env = report["environment"]
    isa = ", ".join(k for k, v in env["isa_summary"].items() if v) or "none of AVX2/AVX-512/VNNI/BF16/AMX"
    lines = [
        "# arrowengine benchmark (bench_baseline_advanced.py)", "",
        f"- run: {report['created_at']}, {report['seconds']:.0f} s, "
        f"{'--quick' if report['options']['quick'] else 'full'}",
        f"- CPU: {env['cpu_model']} ({env['cores']} cores usable, {env['memory_bytes'] / 2**30:.0f} GiB); ISA: {isa}",
        f"- {env['os']}, Python {env['python']}, torch {env['libraries'].get('torch')} "
        f"(threads {env['torch_threads']}, "
        f"{env['cpu_capability']}, oneDNN {env['onednn_version']}), onnxruntime {env['libraries'].get('onnxruntime')}, "
        f"transformers {env['libraries'].get('transformers')}",
        f"- GPU: {env['gpu']['name'] + ' (driver ' + str(env['gpu']['driver']) + ')' if env['gpu'] else 'none'}",
        "", "Ratios are speed-ups over the group's baseline in this run (> 1 is faster); times are medians "
        "[quartiles] over repeated runs after warm-up. Every speed is shown with its fidelity to fp32.", "",
        "## Targets", "", "| target | value | bar | status | evidence |", "| --- | --- | --- | --- | --- |",
    ]
    for t in report["targets"]:
        status = "met" if t["met"] else "**NOT MET**" if t["met"] is False else "not measured"
        lines.append(f"| {t['description']} | {_fmt(t['value'])} | {t['comparison']} {t['threshold']} | {status} "
                     f"| {t['evidence']} |")
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in report["results"]:
        groups[(r["suite"], r["group"])].append(r)
    suite_titles = {"ops": "Operators", "text": "Text encoder (MiniLM)", "audio": "Audio encoder (Whisper)",
                    "vision": "Vision encoder (DINOv2)", "llm": "Causal LM (SmolLM2-135M)",
                    "load": "Load: open to first output (fresh process)"}
    current = None
    for (suite, group), rows in groups.items():
        if suite != current:
            lines += ["", f"## {suite_titles.get(suite, suite)}"]
            current = suite
        lines += ["", f"### {group}", "", "| strategy | role | metric | median [p25-p75] | vs baseline | fidelity |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['strategy']} | {r['role']} | {r['metric']} | {r['status']}: {r['note'][:150]} "
                             "| - | - |")
                continue
            s = r["spread"]
            spread = f" [{_fmt(s['p25'])}-{_fmt(s['p75'])}]" if s else ""
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            lines.append(f"| {r['strategy']} | {r['role']} | {r['metric']} | {_fmt(r['value'])}{spread} {r['unit']} "
                         f"| {ratio} | {_fidelity_text(r)} |")
    if report["memory"]:
        lines += ["", "## Memory after open + first output (fresh process each)", "",
                  "| model | loader | anonymous | file-backed | peak RSS | weights resident / file |",
                  "| --- | --- | --- | --- | --- | --- |"]
        mib = 2**20
        for m in report["memory"]:
            lines.append(f"| {m['model']} | {m['strategy']} | {m['anon_bytes'] / mib:.1f} MiB | "
                         f"{m['file_bytes'] / mib:.1f} MiB | {m['peak_rss_bytes'] / mib:.0f} MiB | "
                         f"{m['model_resident_bytes'] / mib:.1f} / {m['model_file_bytes'] / mib:.1f} MiB |")
    return "\n".join(lines) + "\n"


def _save(fig: Any, path: Path) -> Path:
    """Lay out, write and close one figure; its path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    text = [r for r in report["results"] if r["suite"] == "text" and r["status"] == "ok"]
    by_strategy: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for r in text:
        by_strategy[r["strategy"]].append((r["params"]["batch_size"], r["value"]))
    sweeps = {k: sorted(v) for k, v in by_strategy.items() if len(v) > 1}
    if sweeps:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, points in sweeps.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
        ax.set(xscale="log", xlabel="batch size", ylabel="sentences/s", title="MiniLM throughput vs batch size")
        ax.set_xticks([1, 8, 32, 128], labels=["1", "8", "32", "128"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "throughput_vs_batch.png"))
    e2e = [(g, [r for r in report["results"] if r["suite"] == s and r["group"] == g and r["ratio"] is not None
                and (s != "llm" or r["metric"] == "decode")])
           for s, g in dict.fromkeys((r["suite"], r["group"]) for r in report["results"]
                                      if r["suite"] in ("text", "audio", "vision", "llm", "load"))]
    e2e = [(g, rows) for g, rows in e2e if len(rows) > 1 and ("batch=" not in g or g.endswith("batch=32"))]
    if e2e:
        cols = 2
        nrows = (len(e2e) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(13, 2.6 * nrows + 0.5), squeeze=False)
        for ax, (group, rows) in zip(axes.flat, e2e, strict=False):
            colors = {"baseline": "grey", "peer": "tab:orange", "ours": "tab:blue"}
            ax.barh([r["strategy"] for r in rows], [r["ratio"] for r in rows], color=[colors[r["role"]] for r in rows])
            ax.axvline(1.0, color="black", lw=0.8)
            ax.set_title(f"{group} ({rows[0]['metric']})", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("speed-up vs baseline", fontsize=8)
        for ax in list(axes.flat)[len(e2e):]:
            ax.axis("off")
        written.append(_save(fig, out / "speedup_vs_strategy.png"))
    if report["memory"]:
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(report["memory"]) + 1.5))
        labels = [f"{m['model']}: {m['strategy']}" for m in report["memory"]]
        anon = [m["anon_bytes"] / 2**20 for m in report["memory"]]
        filed = [m["file_bytes"] / 2**20 for m in report["memory"]]
        ax.barh(labels, anon, label="anonymous (private copies)")
        ax.barh(labels, filed, left=anon, label="file-backed (mapped, reclaimable)")
        ax.set_xlabel("MiB resident after open + first output")
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=8)
        written.append(_save(fig, out / "memory.png"))
    return written


def write_outputs(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Write ``report.json``, ``report.md`` and the PNG plots into ``out``; returns the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "report.json", out / "report.md"]
    files[0].write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    files[1].write_text(markdown(report), encoding="utf-8")
    return files + _plots(report, out)


def console_summary(report: dict[str, Any]) -> str:
    """Every ratio vs its baseline and every target, one line each (what the script prints)."""
    lines = []
    for r in report["results"]:
        if r["role"] == "baseline":
            continue
        if r["status"] != "ok":
            lines.append(f"{r['suite']:6s} {r['group'][:50]:50s} {r['strategy'][:40]:40s} {r['metric']:10s} "
                         f"{r['status']}")
            continue
        ratio = f"{r['ratio']:6.2f}x" if r["ratio"] is not None else "     -"
        lines.append(f"{r['suite']:6s} {r['group'][:50]:50s} {r['strategy'][:40]:40s} {r['metric']:10s} {ratio} vs "
                     f"{(r['baseline'] or '-')[:30]:30s} {_fidelity_text(r)}")
    lines.append("")
    for t in report["targets"]:
        status = "met" if t["met"] else "NOT MET" if t["met"] is False else "not measured"
        lines.append(f"target {t['name']}: {_fmt(t['value'])} (bar {t['comparison']} {t['threshold']}): {status}")
    return "\n".join(lines)
