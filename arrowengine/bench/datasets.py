"""Real inputs for the benchmark: chat messages, LibriVox speech, scikit-image photos, held-out chat text.

Nothing is downloaded: the chat messages come from the ``chitchat-dataset`` package, speech from Debian's
``pocketsphinx-testdata`` (LibriVox clips), photos from ``scikit-image``. A missing source raises
:class:`BenchInputError` naming the package to install, and the suite that needed it is reported as skipped.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

import numpy as np

from arrowengine.datasets import chitchat_conversations
from arrowengine.errors import EngineError

__all__ = ["INSTRUCTIONS", "BenchInputError", "chat_conversations", "chat_prompts", "held_out_text", "photos",
           "sentences", "speech_30s"]

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


class BenchInputError(EngineError, FileNotFoundError):
    """A benchmark input (data set, audio, photos) is not installed on this machine."""


def chat_conversations() -> tuple[tuple[str, ...], ...]:
    """Every chitchat-dataset conversation as a tuple of its non-empty messages, in the package's order
    (an ``OptionalDependencyError``, an ``ImportError``, when the package is missing: the suite is skipped)."""
    return chitchat_conversations()


def sentences(n: int, dataset: str = "chitchat") -> list[str]:
    """``n`` real sentences of varied length: chat messages, or the non-empty lines of a text file ``dataset``."""
    if dataset == "chitchat":
        texts = [m for conv in chat_conversations() for m in conv]
    else:
        path = Path(dataset)
        if not path.is_file():
            raise BenchInputError(f"--dataset {dataset!r} is neither 'chitchat' nor a text file; pass a file with "
                                  "one sentence per line")
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < n:
        raise BenchInputError(f"dataset {dataset!r} has {len(texts)} sentences, fewer than the {n} needed; "
                              "use a larger file or a smaller count")
    # every k-th text rather than the first n: the first conversations are not representative of length spread
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def held_out_text(conversations: int = 8, offset: int = 5000) -> str:
    """Real chat text for perplexity: ``conversations`` conversations from the far end of the data set."""
    convs = chat_conversations()
    start = min(offset, max(0, len(convs) - conversations))
    return "\n".join("\n".join(c) for c in convs[start : start + conversations])


INSTRUCTIONS = ("Write one sentence about Alice and Bob planning a trip.", "What is the capital of France?",
                "List three fruits.", "Explain gravity to a child in one sentence.")


def chat_prompts(tokenizer: Any, n: int = 20) -> list[list[int]]:
    """``n`` chat prompts as token ids: a few instructions, then real chitchat messages, each as the user turn of
    the tokenizer's chat template (a ``transformers`` tokenizer) with the assistant's turn opened."""
    from arrowengine.datasets import chitchat_messages

    texts = list(INSTRUCTIONS) + chitchat_messages(max(0, n - len(INSTRUCTIONS)))
    return [tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                    add_generation_prompt=True), add_special_tokens=False)["input_ids"]
            for t in texts[:n]]


def _load_wav(path: Path) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(str(path), "rb") as w:
        rate, width, channels, frames = w.getframerate(), w.getsampwidth(), w.getnchannels(), w.getnframes()
        raw = w.readframes(frames)
    if width != 2:
        raise BenchInputError(f"{path} is {8 * width}-bit audio; the benchmark reads 16-bit PCM WAV")
    pcm = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


@functools.cache
def speech_30s() -> np.ndarray:
    """30 s of real 16 kHz speech: the LibriVox clips of pocketsphinx's test data, concatenated and trimmed."""
    transcription = LIBRIVOX / "transcription"
    if not transcription.is_file():
        raise BenchInputError("LibriVox clips not found; apt-get install pocketsphinx-testdata")
    pieces = []
    for line in transcription.read_text().splitlines():
        m = re.match(r"<s>\s*(.*?)\s*</s>\s*\((\S+)\)", line)
        if m:
            wave_, rate = _load_wav(LIBRIVOX / f"{m.group(2)}.wav")
            if rate == 16_000:
                pieces.append(wave_)
    if not pieces:
        raise BenchInputError(f"no 16 kHz clips listed in {transcription}")
    speech = np.concatenate(pieces)
    while len(speech) < 30 * 16_000:  # the clips last ~25 s together: repeat to fill Whisper's 30 s window
        speech = np.concatenate([speech, speech])
    return speech[: 30 * 16_000].astype(np.float32)


@functools.cache
def photos() -> tuple[np.ndarray, ...]:
    """Real photos of different sizes, colour and grey, from scikit-image."""
    if importlib.util.find_spec("skimage") is None:
        raise BenchInputError("scikit-image is not installed; pip install scikit-image")
    from skimage import data

    return tuple(f() for f in (data.astronaut, data.chelsea, data.coffee, data.rocket, data.camera,
                               data.grass, data.gravel, data.hubble_deep_field))
