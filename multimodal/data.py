"""Real paired data for training and judging the joint space: every pair is real, none is made up by a model.

* FSDD spoken digits (``../shared/data/fsdd``, 6 speakers) with the digit's words: split by speaker.
* scikit-learn's handwritten digit images with the digit's words: split by a seeded permutation (the set keeps no
  writer ids).
* speech synthesised by espeak-ng from real chat sentences (chitchat-dataset) with those sentences: split by
  sentence *and* by voice (held-out sentences are spoken only by held-out voices).
* LibriVox clips with their transcripts (pocketsphinx-testdata): real read speech, held out only (five clips).

A :class:`Pair` names its meaning (``group``): two pairs with the same group mean the same thing, which is what
the contrastive loss and the recall metrics count as a match.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.errors import TrainingDataError

__all__ = ["DIGIT_WORDS", "LIBRIVOX", "DataConfig", "Pair", "digit_image_pairs", "digit_texts", "fsdd_dir",
           "fsdd_pairs", "librivox_pairs", "sentence_speech_pairs", "synthesize"]

logger = logging.getLogger(__name__)

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Pair:
    """One real example: a modality's input (loaded on demand) and the text it means.

    Attributes:
        modality: ``audio`` or ``image``.
        key: a stable unique id (cache key), e.g. ``fsdd/7_jackson_32``.
        group: the meaning; pairs (and texts) with equal groups match, e.g. ``digit:7``.
        text: the paired text (for digits, the digit's word).
        split: ``train`` or ``test``.
        load: returns the input: a 16 kHz float32 waveform or an image array.
    """

    modality: str
    key: str
    group: str
    text: str
    split: str
    load: Callable[[], Any] = field(repr=False, compare=False)


@dataclass(frozen=True)
class DataConfig:
    """Which real data to pair and how to split it (deterministic for a seed).

    ``fsdd_takes`` caps recordings per speaker and digit (FSDD has 50); ``test_speakers`` are never trained on.
    ``sentences_train`` / ``sentences_test`` real chat sentences are spoken by espeak-ng: training sentences by
    ``train_voices``, held-out sentences by ``test_voices`` only. ``images_test_fraction`` of the digit images
    are held out.
    """

    fsdd_path: str = ""  # empty: $ARROWENGINE_FSDD, else ../shared/data/fsdd beside the repo
    fsdd_takes: int = 50
    test_speakers: tuple[str, ...] = ("theo", "yweweler")
    images_per_class: int = 180
    images_test_fraction: float = 0.3
    sentences_train: int = 800
    sentences_test: int = 100
    train_voices: tuple[str, ...] = ("en-us+m1", "en-gb+f2", "en-gb-scotland+m3", "en-029+f1", "en-gb-x-rp+m4",
                                     "en-us+f4")
    test_voices: tuple[str, ...] = ("en-gb-x-gbcwmd+m2", "en-us+f3")
    librivox: bool = True
    seed: int = 0


def digit_texts(digit: int) -> tuple[str, ...]:
    """Texts that mean a digit: its word first (the evaluation's text), then phrasings used in training."""
    word = DIGIT_WORDS[digit]
    return (word, str(digit), f"the number {word}", f"the digit {word}", f"{word} ({digit})")


def fsdd_dir(config: DataConfig | None = None) -> Path:
    """Where the FSDD recordings are: ``config.fsdd_path``, ``$ARROWENGINE_FSDD`` or ``../shared/data/fsdd``."""
    for candidate in ((config.fsdd_path if config else ""), os.environ.get("ARROWENGINE_FSDD", ""),
                      str(_REPO.parent / "shared" / "data" / "fsdd")):
        if candidate and (Path(candidate) / "recordings").is_dir():
            return Path(candidate) / "recordings"
    raise TrainingDataError("the FSDD spoken digits were not found: set ARROWENGINE_FSDD (or DataConfig.fsdd_path) "
                            "to the folder holding recordings/ (github.com/Jakobovski/free-spoken-digit-dataset)")


def _wav_loader(path: Path) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from arrowengine.runtime.audio_features import load_wav, resample

        wave, rate = load_wav(path)
        return resample(wave, rate, 16_000)

    return load


def fsdd_pairs(config: DataConfig) -> list[Pair]:
    """Spoken digits with their words; speakers in ``config.test_speakers`` form the test split."""
    root = fsdd_dir(config)
    pairs = []
    for path in sorted(root.glob("*.wav")):
        m = re.fullmatch(r"(\d)_([a-z]+)_(\d+)", path.stem)
        if m is None or int(m.group(3)) >= config.fsdd_takes:
            continue
        digit, speaker = int(m.group(1)), m.group(2)
        split = "test" if speaker in config.test_speakers else "train"
        pairs.append(Pair("audio", f"fsdd/{path.stem}", f"digit:{digit}", DIGIT_WORDS[digit], split,
                          _wav_loader(path)))
    if not pairs:
        raise TrainingDataError(f"no FSDD recordings named DIGIT_SPEAKER_TAKE.wav in {root}")
    return pairs


def digit_image_pairs(config: DataConfig) -> list[Pair]:
    """scikit-learn's 8x8 handwritten digits (dark ink on white, as a person would see them) with their words."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(config.seed)
    pairs = []
    for digit in range(10):
        idx = np.flatnonzero(digits.target == digit)
        idx = rng.permutation(idx)[: config.images_per_class]
        n_test = round(len(idx) * config.images_test_fraction)
        for rank, i in enumerate(idx):
            image = (1.0 - digits.images[i] / 16.0).astype(np.float32)
            pairs.append(Pair("image", f"digits/{i}", f"digit:{digit}", DIGIT_WORDS[digit],
                              "test" if rank < n_test else "train", lambda image=image: image))
    return pairs


def synthesize(texts: Sequence[str], voices: Sequence[str], *, workers: int = 2) -> list[np.ndarray]:
    """16 kHz float32 speech of each text by espeak-ng, text ``i`` in voice ``voices[i % len(voices)]``."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise TrainingDataError("espeak-ng is not installed; apt-get install espeak-ng (it speaks the training "
                                "sentences)")
    from arrowengine.runtime.audio_features import load_wav, resample

    def one(i: int) -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "s.wav"
            subprocess.run([exe, "-v", voices[i % len(voices)], "-w", str(out), "--", texts[i]], check=True,
                           capture_output=True, timeout=60)
            wave, rate = load_wav(out)
        return resample(wave, rate, 16_000)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(texts))))


def _sentences(n: int, seed: int) -> list[str]:
    """``n`` distinct real chat sentences of 5-20 words (deterministic for a seed)."""
    from arrowengine.datasets import chitchat_messages

    seen: set[str] = set()
    pool = []
    for message in chitchat_messages():
        text = " ".join(message.split())
        words = len(text.split())
        if 5 <= words <= 20 and text.lower() not in seen and re.search(r"[a-zA-Z]", text):
            seen.add(text.lower())
            pool.append(text)
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


class _Speech:
    """Synthesises speech on first use, for all sentences of a split at once (espeak-ng calls run in parallel)."""

    def __init__(self, texts: list[str], voices: Sequence[str]) -> None:
        self.texts, self.voices = texts, tuple(voices)
        self._waves: list[np.ndarray] | None = None

    def __call__(self, i: int) -> np.ndarray:
        if self._waves is None:
            self._waves = synthesize(self.texts, self.voices)
        return self._waves[i]


def _group(text: str) -> str:
    return "sentence:" + hashlib.sha1(text.lower().encode()).hexdigest()[:16]


def sentence_speech_pairs(config: DataConfig) -> list[Pair]:
    """Real chat sentences spoken by espeak-ng: training sentences by training voices, held-out ones by others."""
    texts = _sentences(config.sentences_train + config.sentences_test, config.seed)
    if len(texts) < config.sentences_train + config.sentences_test:
        raise TrainingDataError(f"only {len(texts)} usable chat sentences; lower sentences_train/sentences_test")
    pairs = []
    for split, chunk, voices in (("test", texts[: config.sentences_test], config.test_voices),
                                 ("train", texts[config.sentences_test :], config.train_voices)):
        speech = _Speech(chunk, voices)
        for i, text in enumerate(chunk):
            voice = voices[i % len(voices)]
            key = f"espeak/{voice}/{hashlib.sha1(text.encode()).hexdigest()[:16]}"
            pairs.append(Pair("audio", key, _group(text), text, split, lambda i=i, speech=speech: speech(i)))
    return pairs


def librivox_pairs() -> list[Pair]:
    """The LibriVox clips of pocketsphinx-testdata with their transcripts (real read speech; test split only)."""
    transcription = LIBRIVOX / "transcription"
    if not transcription.is_file():
        return []
    pairs = []
    for line in transcription.read_text().splitlines():
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line)
        if m and (LIBRIVOX / f"{m.group(2)}.wav").is_file():
            text = m.group(1)
            pairs.append(Pair("audio", f"librivox/{m.group(2)}", _group(text), text, "test",
                              _wav_loader(LIBRIVOX / f"{m.group(2)}.wav")))
    return pairs
