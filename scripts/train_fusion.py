"""Train the joint space's heads (the same job as ``arrowengine fusion train``) and write its report.

    python scripts/train_fusion.py [--out models/joint-fusion] [--force] [--quick] [--report-dir DIR]

Writes the model directory and, under ``--report-dir`` (default ``docs/benchmarks/multimodal``), the held-out
recall table as JSON, markdown and a PNG, plus each modality's encoding throughput measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _throughput(model_dir: Path, models_dir: Path) -> dict[str, float]:
    """Items per second through ``JointEncoder`` for each modality on real inputs (one thread pool, this box)."""
    from sklearn.datasets import load_digits

    from multimodal import JointEncoder
    from multimodal.data import DataConfig, fsdd_dir, synthesize

    joint = JointEncoder(model_dir, models_dir=models_dir)
    texts = [f"the number {w} is on the door" for w in ("one", "two", "three", "four")] * 8
    clips = sorted(fsdd_dir(DataConfig()).glob("*_jackson_1*.wav"))[:16]
    sentences = synthesize(["can we meet at the cafe tomorrow morning", "I finally finished the book you lent me"]
                           * 4, ["en-us+f3"])
    images = [1.0 - im / 16.0 for im in load_digits().images[:16]]
    joint.encode_text(texts[:2]), joint.encode_audio(clips[:2]), joint.encode_image(images[:2])  # warm up
    out = {}
    for name, fn, items in (("text", joint.encode_text, texts), ("audio_digit_clips", joint.encode_audio, clips),
                            ("audio_sentences", joint.encode_audio, sentences),
                            ("image", joint.encode_image, images)):
        start = time.perf_counter()
        fn(items)
        out[name] = round(len(items) / (time.perf_counter() - start), 2)
    return out


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["tasks"])
    r1 = [report["tasks"][n]["recall@1"] for n in names]
    r5 = [report["tasks"][n]["recall@5"] for n in names]
    c1 = [report["tasks"][n]["chance@1"] for n in names]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(names) + 1.5))
    y = range(len(names))
    ax.barh([i + 0.2 for i in y], r5, height=0.4, label="recall@5", color="#9ecae1")
    ax.barh([i - 0.2 for i in y], r1, height=0.4, label="recall@1", color="#3182bd")
    ax.scatter(c1, [i - 0.2 for i in y], marker="|", s=200, color="black", label="chance@1")
    ax.set_yticks(list(y), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("held-out recall")
    ax.set_title("joint space: held-out cross-modal recall\n(unseen speakers, voices, sentences and images)",
                 fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    """Train, evaluate, measure throughput, write the report; returns the exit code."""
    from arrowengine.config import resolve_models_dir
    from arrowengine.errors import EngineError
    from arrowengine.logging_setup import configure_logging
    from multimodal.cli import report_markdown
    from multimodal.config import TrainConfig
    from multimodal.data import DataConfig
    from multimodal.train import train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="model directory (default: models/joint-fusion)")
    ap.add_argument("--force", action="store_true", help="replace an existing model directory")
    ap.add_argument("--quick", action="store_true", help="a fraction of the data (smoke run)")
    ap.add_argument("--cache", default=None, help="feature cache directory")
    ap.add_argument("--report-dir", default=str(REPO / "docs" / "benchmarks" / "multimodal"))
    args = ap.parse_args(argv)
    configure_logging("WARNING")
    models_dir = resolve_models_dir()
    out = Path(args.out) if args.out else models_dir / "joint-fusion"
    data = DataConfig()
    if args.quick:
        data = DataConfig(fsdd_takes=10, images_per_class=40, sentences_train=200, sentences_test=50)
    start = time.perf_counter()
    try:
        _, report = train(out, models_dir=models_dir, data=data, config=TrainConfig(), cache_dir=args.cache,
                          force=args.force, progress=True)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report["seconds"]["total_with_feature_cache_state_as_found"] = round(time.perf_counter() - start, 1)
    report["throughput_items_per_s"] = _throughput(out, models_dir)
    report_dir = Path(args.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "joint_fusion.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    table = report_markdown(report)
    speeds = "\n".join(f"| {k} | {v} |" for k, v in report["throughput_items_per_s"].items())
    (report_dir / "joint_fusion.md").write_text(
        f"# Joint space: held-out cross-modal recall\n\nCommand: `python scripts/train_fusion.py`. Data: "
        f"{json.dumps(report['data'])}; seconds: {json.dumps(report['seconds'])}.\n\n{table}\n\n"
        f"Encoding throughput through `JointEncoder` (items/s, this machine):\n\n| modality | items/s |\n"
        f"| --- | --- |\n{speeds}\n", encoding="utf-8")
    _plot(report, report_dir / "joint_fusion.png")
    print(table)
    print(f"wrote {out} and {report_dir}/joint_fusion.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
