"""Calibration inputs for the int8 encoder precisions, and a cache of what they calibrate.

The int8 projections of the lean encoder forwards are SmoothQuant-ed: per-input-channel scales measured on
example inputs (:func:`arrowengine.runtime.fixed_linear.calibrated_smooth_scales`). The defaults need no data
package and no download:

* text: ``calibration_text.txt`` shipped with the package, a few hundred sentences of ordinary chat-like English
  written for this project (hand-written lines and sentences generated from templates);
* speech: :func:`synthetic_speech`, deterministic speech-like signals (voiced harmonics under moving formants,
  noise bursts, pauses).

The scales depend only on the model's weights, the calibration inputs and the recipe, so they are cached on disk
(``<runtime.cache_dir>/calibration``, by default ``~/.cache/arrowengine/calibration``) under a key built from
the weight file's stored per-tensor checksums (:func:`calibration_key`): a second construction skips the
calibration forward passes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Hashable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "cached_scales",
    "calibration_cache_dir",
    "calibration_key",
    "default_calibration_texts",
    "synthetic_speech",
]

logger = logging.getLogger(__name__)

_TEXT_RESOURCE = "calibration_text.txt"


def default_calibration_texts() -> list[str]:
    """The calibration sentences shipped with arrowengine (package data, one per line)."""
    text = resources.files("arrowengine.runtime").joinpath(_TEXT_RESOURCE).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def synthetic_speech(clips: int = 4, seconds: float = 6.0, sampling_rate: int = 16_000, seed: int = 0
                     ) -> list[np.ndarray]:
    """Deterministic speech-like waveforms (float32 in [-1, 1]) for audio calibration.

    Each clip alternates syllable-length segments: voiced ones (a glottal-like pulse train at a gliding 90-250 Hz
    pitch, shaped by three formant resonances that move between vowel positions), unvoiced noise bursts
    (fricatives) and short pauses, under a syllable-rate amplitude envelope. It is not speech, but it drives the
    encoder's channels over the ranges real speech does, which is all SmoothQuant's per-channel maxima need.
    """
    from scipy.signal import lfilter

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(clips):
        pieces = []
        total = int(seconds * sampling_rate)
        while sum(len(p) for p in pieces) < total:
            n = int(rng.uniform(0.08, 0.3) * sampling_rate)
            kind = rng.choice(["voiced", "voiced", "voiced", "noise", "pause"])
            if kind == "pause":
                pieces.append(rng.normal(0, 1e-3, n).astype(np.float32))
                continue
            if kind == "noise":
                source = rng.normal(0, 1, n)
                formants = [rng.uniform(2500, 6000)]
            else:
                pitch = np.linspace(rng.uniform(90, 250), rng.uniform(90, 250), n)
                phase = np.cumsum(2 * np.pi * pitch / sampling_rate)
                source = np.sign(np.sin(phase)) * (np.sin(phase) ** 8) + 0.02 * rng.normal(0, 1, n)
                formants = [rng.uniform(300, 900), rng.uniform(900, 2500), rng.uniform(2500, 3500)]
            signal = np.zeros(n)
            for freq in formants:  # two-pole resonator per formant
                r = np.exp(-np.pi * rng.uniform(60, 200) / sampling_rate)
                theta = 2 * np.pi * freq / sampling_rate
                signal += lfilter([1 - r], [1, -2 * r * np.cos(theta), r * r], source)
            envelope = np.sin(np.linspace(0, np.pi, n)) ** 0.5
            signal = signal * envelope
            pieces.append((signal / max(np.abs(signal).max(), 1e-9) * rng.uniform(0.1, 0.6)).astype(np.float32))
        out.append(np.concatenate(pieces)[:total])
    return out


def calibration_cache_dir() -> Path:
    """``<runtime.cache_dir>/calibration`` (by default ``~/.cache/arrowengine/calibration``)."""
    from arrowengine.config import load_config

    cache_dir = load_config().runtime.cache_dir
    return Path(cache_dir or Path.home() / ".cache" / "arrowengine") / "calibration"


def calibration_key(weights: Any, recipe: dict[str, Any], inputs: Iterable[bytes]) -> str:
    """A cache key: the weight file's stored per-tensor checksums (no data read), the recipe and the inputs."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        digest.update(name.encode() + repr(weights.info(name).checksums).encode())
    digest.update(repr(sorted(recipe.items())).encode())
    for item in inputs:
        digest.update(hashlib.sha256(item).digest())
    return digest.hexdigest()[:32]


def cached_scales(key: str | None, compute: Callable[[], dict[Hashable, torch.Tensor]]
                  ) -> dict[Hashable, torch.Tensor]:
    """``compute()``'s scales, read from the calibration cache when ``key`` is stored there, else stored.

    Keys of the returned dict are ``(layer index, projection kind)`` tuples. An unreadable cache entry is
    recomputed (logged); a cache directory that cannot be written only costs the next construction its time.
    """
    if key is None:
        return compute()
    path = calibration_cache_dir() / f"smooth-{key}.pt"
    if path.is_file():
        try:
            stored = torch.load(path, weights_only=True)
            logger.info("SmoothQuant scales from the calibration cache (%s)", path)
            return {(int(k.split(":")[0]), k.split(":")[1]): v for k, v in stored.items()}
        except (OSError, EOFError, RuntimeError, ValueError, IndexError, pickle.UnpicklingError) as exc:
            logger.warning("calibration cache entry %s is unreadable (%s); calibrating again", path, exc)
    scales = compute()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
            torch.save({f"{index}:{kind}": value for (index, kind), value in scales.items()}, handle)
        os.replace(handle.name, path)
    except OSError as exc:
        logger.warning("could not store calibration results in %s (%s); the next construction calibrates again",
                       path.parent, exc)
    return scales
