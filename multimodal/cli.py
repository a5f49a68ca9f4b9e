"""``arrowengine fusion train``: train the joint space's heads on real pairs and write ``models/joint-fusion/``.

Registered as an ``arrowengine.commands`` plugin, so arrowengine never imports multimodal. The same job runs as
``python scripts/train_fusion.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

__all__ = ["register", "report_markdown"]

logger = logging.getLogger(__name__)

GOALS = {"digits audio->text": ("recall@1", 0.9), "speech->sentence (espeak, held-out voices)": ("recall@5", 0.8),
         "digits image->text": ("recall@1", 0.8)}


def report_markdown(report: dict[str, Any]) -> str:
    """The training report as a markdown table: recall@1/@5 beside chance, and the issue's goals."""
    lines = ["| task | queries x gallery | recall@1 | chance@1 | recall@5 | chance@5 | goal |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, t in report["tasks"].items():
        goal = GOALS.get(name)
        verdict = ""
        if goal:
            verdict = f"{goal[0]} >= {goal[1]}: {'met' if t[goal[0]] >= goal[1] else 'NOT met'}"
        lines.append(f"| {name} | {t['queries']} x {t['gallery']} | {t['recall@1']:.3f} | {t['chance@1']:.3f} | "
                     f"{t['recall@5']:.3f} | {t['chance@5']:.3f} | {verdict} |")
    return "\n".join(lines)


def _cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    from arrowengine.config import resolve_models_dir
    from multimodal.config import TrainConfig
    from multimodal.data import DataConfig
    from multimodal.train import train

    models_dir = Path(args.models_dir) if args.models_dir else resolve_models_dir()
    out = Path(args.out) if args.out else models_dir / "joint-fusion"
    data = DataConfig(seed=args.seed)
    if args.quick:  # a smoke run: a fraction of the data, a few minutes
        data = dataclasses.replace(data, fsdd_takes=10, images_per_class=40, sentences_train=200, sentences_test=50)
    if args.sentences is not None:
        data = dataclasses.replace(data, sentences_train=args.sentences)
    config = TrainConfig(seed=args.seed)
    _, report = train(out, models_dir=models_dir, data=data, config=config, cache_dir=args.cache, force=args.force,
                      progress=True)
    print(report_markdown(report))
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(f"wrote {out} (features {report['seconds']['features']} s, fit {report['seconds']['fit']} s)")
    return 0


def register(subparsers: Any) -> None:
    """Add the ``fusion`` command and its subcommands to the ``arrowengine`` parser."""
    fusion = subparsers.add_parser("fusion", help="the multimodal joint space: train its heads")
    sub = fusion.add_subparsers(dest="fusion_command", required=True)
    p = sub.add_parser("train", help="train the audio/image heads and the fusion MLP on real pairs")
    p.add_argument("--out", default=None, help="model directory to write (default: models/joint-fusion)")
    p.add_argument("--models-dir", default=None, help="where the frozen encoders are (default: the model store)")
    p.add_argument("--force", action="store_true", help="replace an existing model directory")
    p.add_argument("--cache", default=None,
                   help="feature cache directory (default: ~/.cache/arrowengine/fusion-features)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sentences", type=int, default=None, help="training sentences spoken by espeak-ng")
    p.add_argument("--quick", action="store_true", help="a smoke run on a fraction of the data")
    p.add_argument("--report", default=None, help="also write the training report as JSON here")
    p.set_defaults(func=_cmd_train)
