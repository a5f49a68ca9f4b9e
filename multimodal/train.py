"""Train the joint space's heads on real pairs, judge them on held-out pairs, write ``models/joint-fusion/``.

The text encoder is frozen and *is* the joint space. Each head learns, with a multi-positive contrastive loss
(InfoNCE in both directions, positives = texts of the same meaning), to put its modality's feature next to the
texts that mean the same thing. The fusion MLP is then trained on composite inputs (digit speech + digit image +
a phrasing of the digit; sentence speech + the sentence) with modality dropout. Held-out speakers, voices,
sentences and images are scored by cross-modal recall@k (:func:`evaluate`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from multimodal.config import JOINT_MODEL_TYPE, MODALITIES, TrainConfig
from multimodal.data import (
    DIGIT_WORDS,
    DataConfig,
    Pair,
    digit_image_pairs,
    digit_texts,
    fsdd_pairs,
    librivox_pairs,
    sentence_speech_pairs,
)
from multimodal.errors import TrainingDataError
from multimodal.evaluate import recall_at_k
from multimodal.features import FeatureCache, FrozenEncoders
from multimodal.heads import JointHeads

__all__ = ["TextBank", "TrainingSet", "build_training_set", "evaluate", "save_model", "train", "train_heads"]

logger = logging.getLogger(__name__)


@dataclass
class TextBank:
    """Every text of every group, embedded once: ``texts[i]`` means ``groups[i]``."""

    texts: list[str]
    groups: list[str]
    vectors: np.ndarray

    def indices(self) -> dict[str, list[int]]:
        """group -> indices of its texts."""
        out: dict[str, list[int]] = {}
        for i, g in enumerate(self.groups):
            out.setdefault(g, []).append(i)
        return out


@dataclass
class TrainingSet:
    """Featurised pairs per modality (``pairs[m][i]`` has feature ``features[m][i]``) and their text bank."""

    pairs: dict[str, list[Pair]]
    features: dict[str, np.ndarray]
    bank: TextBank
    seconds: dict[str, float]

    def split(self, modality: str, split: str, prefix: str = "") -> np.ndarray:
        """Indices of ``modality``'s pairs in ``split`` whose key starts with ``prefix``."""
        return np.asarray([i for i, p in enumerate(self.pairs[modality])
                           if p.split == split and p.key.startswith(prefix)], dtype=np.int64)


def build_training_set(data: DataConfig, encoders: FrozenEncoders, cache_dir: str | os.PathLike[str]
                       ) -> TrainingSet:
    """Collect the real pairs of ``data``, compute (or read cached) frozen features and embed every text."""
    pairs: dict[str, list[Pair]] = {"audio": fsdd_pairs(data), "image": digit_image_pairs(data)}
    if data.sentences_train or data.sentences_test:
        pairs["audio"] += sentence_speech_pairs(data)
    if data.librivox:
        pairs["audio"] += librivox_pairs()
    cache = FeatureCache(cache_dir)
    features, seconds = {}, {}
    for modality, items in pairs.items():
        start = time.perf_counter()
        features[modality] = cache.features(encoders, modality, [p.key for p in items], lambda i, items=items:
                                            items[i].load(), desc=f"{modality} features")
        seconds[modality] = time.perf_counter() - start
    texts: dict[str, str] = {}
    for digit in range(10):
        texts.update(dict.fromkeys(digit_texts(digit), f"digit:{digit}"))
    for p in pairs["audio"]:
        texts.setdefault(p.text, p.group)
    start = time.perf_counter()
    vectors = encoders.text(list(texts))
    seconds["text"] = time.perf_counter() - start
    return TrainingSet(pairs, features, TextBank(list(texts), list(texts.values()), vectors), seconds)


def _contrastive(z: torch.Tensor, groups: torch.Tensor, candidates: torch.Tensor, candidate_groups: torch.Tensor,
                 temperature: float) -> torch.Tensor:
    """Symmetric multi-positive InfoNCE between unit vectors ``z`` and text ``candidates`` (positives: same group)."""
    logits = z @ candidates.T / temperature
    positive = groups[:, None] == candidate_groups[None, :]
    neg_inf = torch.finfo(logits.dtype).min
    rows = torch.logsumexp(logits, 1) - torch.logsumexp(logits.masked_fill(~positive, neg_inf), 1)
    cols = torch.logsumexp(logits.T, 1) - torch.logsumexp(logits.T.masked_fill(~positive.T, neg_inf), 1)
    return (rows.mean() + cols.mean()) / 2


class _Batches:
    """Random batches of sample indices, each with one random phrasing of each sample's meaning as its text."""

    def __init__(self, groups: Sequence[str], bank: TextBank, batch_size: int, generator: torch.Generator) -> None:
        names = sorted(set(bank.groups))
        self.group_id = {g: i for i, g in enumerate(names)}
        self.sample_groups = torch.tensor([self.group_id[g] for g in groups])
        by_group = bank.indices()
        self.options = [by_group[g] for g in names]
        self.bank_groups = torch.tensor([self.group_id[g] for g in bank.groups])
        self.bank = torch.from_numpy(bank.vectors)
        self.batch_size, self.generator = batch_size, generator

    def __iter__(self):
        n = len(self.sample_groups)
        order = torch.randperm(n, generator=self.generator)
        for start in range(0, n, self.batch_size):
            idx = order[start : start + self.batch_size]
            picks = [opts[int(torch.randint(len(opts), (1,), generator=self.generator))]
                     for opts in (self.options[int(g)] for g in self.sample_groups[idx])]
            text_idx = torch.tensor(sorted(set(picks)))
            yield idx, self.sample_groups[idx], self.bank[text_idx], self.bank_groups[text_idx], torch.tensor(picks)


def _fit(module: torch.nn.Module, steps: Any, epochs: int, config: TrainConfig, desc: str, progress: bool) -> float:
    """AdamW with cosine decay over ``epochs`` passes of ``steps()`` (each yields a loss); returns the last loss."""
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=config.lr,
                            weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    module.train()
    last = float("nan")
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress):
        for loss in steps():
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            last = float(loss.detach())
        sched.step()
    module.eval()
    return last


def train_heads(ts: TrainingSet, config: TrainConfig, *, progress: bool = False) -> tuple[JointHeads, dict]:
    """Train the audio and image heads, then the fusion MLP, on the ``train`` split of ``ts``."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    heads = JointHeads(config.joint, dropout=config.dropout)
    losses: dict[str, float] = {}
    for modality in ("audio", "image"):
        idx = ts.split(modality, "train")
        if not len(idx):
            raise TrainingDataError(f"no training pairs for {modality}")
        x = torch.from_numpy(ts.features[modality][idx])
        batches = _Batches([ts.pairs[modality][i].group for i in idx], ts.bank, config.batch_size, gen)
        head = getattr(heads, modality)

        def steps(x=x, batches=batches, head=head):
            for b, groups, cand, cand_groups, _ in batches:
                yield _contrastive(head(x[b]), groups, cand, cand_groups, config.temperature)

        losses[modality] = _fit(head, steps, config.epochs, config, f"train {modality} head", progress)
    losses["fusion"] = _train_fusion(heads, ts, config, gen, progress)
    heads.eval()
    return heads, losses


def _train_fusion(heads: JointHeads, ts: TrainingSet, config: TrainConfig, gen: torch.Generator,
                  progress: bool) -> float:
    """Fit the fusion MLP (heads frozen) on digit speech+image+text and sentence speech+text with dropout."""
    with torch.inference_mode():
        audio_idx, image_idx = ts.split("audio", "train"), ts.split("image", "train")
        audio = heads.audio(torch.from_numpy(ts.features["audio"][audio_idx])).clone()
        image = heads.image(torch.from_numpy(ts.features["image"][image_idx])).clone()
    groups = [ts.pairs["audio"][i].group for i in audio_idx]
    images_by_group: dict[str, list[int]] = {}
    for j, i in enumerate(image_idx):
        images_by_group.setdefault(ts.pairs["image"][i].group, []).append(j)
    has_image = torch.tensor([g in images_by_group for g in groups])
    batches = _Batches(groups, ts.bank, config.batch_size, gen)
    bank = torch.from_numpy(ts.bank.vectors)
    for p in (*heads.audio.parameters(), *heads.image.parameters()):
        p.requires_grad_(False)

    def steps():
        for b, g, cand, cand_groups, picks in batches:
            n = len(b)
            pick_image = [images_by_group.get(groups[int(i)], [0]) for i in b]
            img = image[[opts[int(torch.randint(len(opts), (1,), generator=gen))] for opts in pick_image]]
            vectors = torch.stack([bank[picks], audio[b], img], dim=1)
            mask = torch.ones(n, len(MODALITIES))
            mask[:, 2] = has_image[b].float()
            # modality dropout: drop each present modality with probability p, keeping at least two
            drop = torch.rand(n, len(MODALITIES), generator=gen) < config.modality_dropout
            keep = mask * (~drop).float()
            short = keep.sum(1) < 2
            keep[short] = mask[short]
            sentence = ~has_image[b]  # sentences have speech and text only: both always present
            keep[sentence] = mask[sentence]
            yield _contrastive(heads.fusion(vectors, keep), g, cand, cand_groups, config.temperature)

    return _fit(heads.fusion, steps, config.fusion_epochs, config, "train fusion", progress)


def _project(heads: JointHeads, modality: str, features: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return heads.project(modality, torch.from_numpy(np.ascontiguousarray(features))).numpy()


def evaluate(heads: JointHeads, ts: TrainingSet, seed: int = 0) -> dict[str, dict[str, float]]:
    """Held-out recall@1/@5 (with chance) for every cross-modal task the data allows."""
    tasks: dict[str, dict[str, float]] = {}
    words = [ts.bank.texts.index(w) for w in DIGIT_WORDS]
    word_vecs, word_groups = ts.bank.vectors[words], [f"digit:{d}" for d in range(10)]
    phrasings = [i for i, g in enumerate(ts.bank.groups) if g.startswith("digit:")]
    phrase_vecs, phrase_groups = ts.bank.vectors[phrasings], [ts.bank.groups[i] for i in phrasings]

    def task(name: str, q: np.ndarray, qg: list[str], g: np.ndarray, gg: list[str]) -> None:
        if len(q) and len(g):
            tasks[name] = {**recall_at_k(q, qg, g, gg), "queries": len(q), "gallery": len(g)}

    digit_audio = ts.split("audio", "test", "fsdd/")
    a_vecs = _project(heads, "audio", ts.features["audio"][digit_audio])
    a_groups = [ts.pairs["audio"][i].group for i in digit_audio]
    image_idx = ts.split("image", "test")
    i_vecs = _project(heads, "image", ts.features["image"][image_idx])
    i_groups = [ts.pairs["image"][i].group for i in image_idx]
    task("digits audio->text", a_vecs, a_groups, word_vecs, word_groups)
    task("digits text->audio", phrase_vecs, phrase_groups, a_vecs, a_groups)
    task("digits image->text", i_vecs, i_groups, word_vecs, word_groups)
    task("digits text->image", phrase_vecs, phrase_groups, i_vecs, i_groups)
    task("digits audio->image", a_vecs, a_groups, i_vecs, i_groups)
    task("digits image->audio", i_vecs, i_groups, a_vecs, a_groups)
    if len(digit_audio) and len(image_idx):
        rng = np.random.default_rng(seed)
        by_group: dict[str, list[int]] = {}
        for j, g in enumerate(i_groups):
            by_group.setdefault(g, []).append(j)
        paired = [(j, by_group[g][rng.integers(len(by_group[g]))]) for j, g in enumerate(a_groups) if g in by_group]
        groups = [a_groups[j] for j, _ in paired]
        stacked = np.stack([np.zeros_like(a_vecs[[j for j, _ in paired]]), a_vecs[[j for j, _ in paired]],
                            i_vecs[[k for _, k in paired]]], axis=1)
        for name, mask in (("audio+image", (0, 1, 1)), ("audio only", (0, 1, 0)), ("image only", (0, 0, 1))):
            with torch.inference_mode():
                fused = heads.fusion(torch.from_numpy(stacked),
                                     torch.tensor([mask] * len(stacked), dtype=torch.float32)).numpy()
            task(f"digits fused {name}->text", fused, groups, word_vecs, word_groups)
    # sentence galleries: every held-out sentence (espeak and LibriVox), so each query competes with all of them
    gallery_pairs = [p for p in (ts.pairs["audio"][i] for i in ts.split("audio", "test")) if p.key[:5] != "fsdd/"]
    gallery_texts = list(dict.fromkeys(p.text for p in gallery_pairs))
    for name, prefix in (("speech->sentence (espeak, held-out voices)", "espeak/"),
                         ("librivox->sentence", "librivox/")):
        s_idx = ts.split("audio", "test", prefix)
        if not len(s_idx):
            continue
        g_vecs = ts.bank.vectors[[ts.bank.texts.index(t) for t in gallery_texts]]
        g_groups = [ts.bank.groups[ts.bank.texts.index(t)] for t in gallery_texts]
        s_vecs = _project(heads, "audio", ts.features["audio"][s_idx])
        s_groups = [ts.pairs["audio"][i].group for i in s_idx]
        task(name, s_vecs, s_groups, g_vecs, g_groups)
        if prefix == "espeak/":
            task("sentence->speech (espeak, held-out voices)", g_vecs, g_groups, s_vecs, s_groups)
    return tasks


def save_model(heads: JointHeads, dst: str | os.PathLike[str], report: dict[str, Any], *, force: bool = False
               ) -> Path:
    """Write the heads as a schema-V1 model directory (weights.parquet, config.json, model_card.json)."""
    from arrowengine.converters.model_dir import write_model_dir
    from arrowengine.converters.source import ConvertedModel

    state = {k: v.detach().contiguous() for k, v in heads.state_dict().items()}
    config = {"model_type": JOINT_MODEL_TYPE, "architectures": ["JointHeads"], **heads.config.to_dict()}
    model = ConvertedModel(state, config, source="trained by arrowengine fusion train (multimodal.train)",
                           source_format="trained", license="CC-BY-SA-4.0",
                           card_extra={"training_report": report,
                                       "training_data_licenses": {"FSDD": "CC-BY-SA-4.0", "chitchat-dataset": "MIT",
                                                                  "scikit-learn digits": "BSD-3-Clause",
                                                                  "LibriVox (pocketsphinx-testdata)": "public domain"}})
    return write_model_dir(model, dst, force=force)


def train(dst: str | os.PathLike[str] | None, *, models_dir: str | os.PathLike[str], data: DataConfig | None = None,
          config: TrainConfig | None = None, cache_dir: str | os.PathLike[str] | None = None, force: bool = False,
          progress: bool = False) -> tuple[JointHeads, dict[str, Any]]:
    """The whole job: pairs -> cached features -> heads -> held-out recall -> ``dst`` (skipped when None).

    ``dst`` is checked before any work: an existing directory is refused unless ``force``.
    """
    from arrowengine.converters.destination import check_destination

    if dst is not None:
        check_destination(dst, force=force)
    data, config = data or DataConfig(), config or TrainConfig()
    start = time.perf_counter()
    encoders = FrozenEncoders(models_dir, config.joint, progress=progress)
    cache = Path(cache_dir) if cache_dir is not None else _default_cache()
    ts = build_training_set(data, encoders, cache)
    features_s = time.perf_counter() - start
    fit_start = time.perf_counter()
    heads, losses = train_heads(ts, config, progress=progress)
    fit_s = time.perf_counter() - fit_start
    report = {
        "tasks": evaluate(heads, ts, config.seed),
        "data": {m: {s: len(ts.split(m, s)) for s in ("train", "test")} for m in ts.pairs},
        "data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(data).items()},
        "train_config": {k: v for k, v in dataclasses.asdict(config).items() if k != "joint"},
        "final_loss": losses,
        "seconds": {"features": round(features_s, 1), "fit": round(fit_s, 1),
                    **{f"encode_{m}": round(s, 1) for m, s in ts.seconds.items()}},
    }
    if dst is not None:
        save_model(heads, dst, report, force=force)
    return heads, report


def _default_cache() -> Path:
    from arrowengine.config import load_config

    base = load_config().runtime.cache_dir or "~/.cache/arrowengine"
    return Path(base).expanduser() / "fusion-features"
