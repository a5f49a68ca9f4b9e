"""Waveform handling and Whisper's log-mel features, batched in torch (no torchaudio needed).

The features follow Whisper's reference recipe (and ``transformers``' ``WhisperFeatureExtractor``): pad or cut
to 30 s at 16 kHz, 400-point Hann STFT with hop 160, power spectrum through a Slaney mel filter bank, log10,
clamp to 8 below each example's maximum, then ``(x + 4) / 4``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from arrowengine.errors import ConfigError

__all__ = ["WHISPER_SAMPLE_RATE", "LogMelConfig", "as_waveform", "load_wav", "log_mel", "resample"]

logger = logging.getLogger(__name__)

WHISPER_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class LogMelConfig:
    """Whisper's feature settings (read from ``preprocessor_config.json``; defaults are Whisper's own)."""

    n_mels: int = 80
    sampling_rate: int = WHISPER_SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160
    chunk_seconds: int = 30

    @property
    def n_samples(self) -> int:
        """Samples in one window (480,000 for 30 s at 16 kHz)."""
        return self.chunk_seconds * self.sampling_rate

    @property
    def n_frames(self) -> int:
        """Mel frames in one window (3,000)."""
        return self.n_samples // self.hop_length

    @classmethod
    def from_dict(cls, d: dict) -> LogMelConfig:
        """Build from a ``WhisperFeatureExtractor`` config dict, ignoring keys that are not ours."""
        return cls(
            n_mels=int(d.get("feature_size", cls.n_mels)),
            sampling_rate=int(d.get("sampling_rate", WHISPER_SAMPLE_RATE)),
            n_fft=int(d.get("n_fft", cls.n_fft)),
            hop_length=int(d.get("hop_length", cls.hop_length)),
            chunk_seconds=int(d.get("chunk_length", cls.chunk_seconds)),
        )


def load_wav(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read a WAV file as mono float32 in [-1, 1] and its sample rate."""
    from scipy.io import wavfile

    rate, data = wavfile.read(Path(path))
    return as_waveform(data), int(rate)


def as_waveform(data: np.ndarray | torch.Tensor | Sequence[float]) -> np.ndarray:
    """Mono float32 samples in [-1, 1] from int PCM or float data; channels (last axis) are averaged."""
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    if arr.ndim not in (1, 2):
        raise ConfigError(f"a waveform must be 1-D (or 2-D with channels), got shape {arr.shape}")
    if arr.dtype == np.uint8:  # 8-bit WAV is unsigned with its zero at 128
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max + 1)
    if arr.ndim == 2:
        # (samples, channels) as wavfile returns it, or (channels, samples) as torch audio code keeps it
        arr = arr.mean(axis=1 if arr.shape[1] <= arr.shape[0] else 0)
    return arr.astype(np.float32, copy=False)


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int = WHISPER_SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``, Kaiser window) from ``orig_rate`` to ``target_rate``."""
    if orig_rate == target_rate:
        return waveform
    if orig_rate <= 0:
        raise ConfigError(f"sampling rate must be positive, got {orig_rate}")
    from scipy.signal import resample_poly

    g = math.gcd(int(orig_rate), int(target_rate))
    return resample_poly(waveform, target_rate // g, orig_rate // g).astype(np.float32)


@lru_cache(maxsize=8)
def _mel_filters(n_mels: int, n_fft: int, sampling_rate: int) -> torch.Tensor:
    from transformers.audio_utils import mel_filter_bank

    bank = mel_filter_bank(num_frequency_bins=1 + n_fft // 2, num_mel_filters=n_mels, min_frequency=0.0,
                           max_frequency=sampling_rate / 2, sampling_rate=sampling_rate, norm="slaney",
                           mel_scale="slaney")
    return torch.from_numpy(bank.T.astype(np.float32))  # (n_mels, n_freq)


def log_mel(waveforms: Sequence[np.ndarray], config: LogMelConfig = LogMelConfig()) -> tuple[torch.Tensor, list[int]]:
    """Log-mel features ``(batch, n_mels, n_frames)`` of 16 kHz waveforms and each one's valid frame count.

    Waveforms longer than one window are cut to it; the caller decides whether to chunk.
    """
    batch = torch.zeros(len(waveforms), config.n_samples, dtype=torch.float32)
    valid: list[int] = []
    for i, w in enumerate(waveforms):
        n = min(len(w), config.n_samples)
        batch[i, :n] = torch.from_numpy(np.ascontiguousarray(w[:n], dtype=np.float32))
        valid.append(max(1, math.ceil(n / config.hop_length)))
    window = torch.hann_window(config.n_fft)
    stft = torch.stft(batch, config.n_fft, config.hop_length, window=window, return_complex=True)
    power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame so 30 s gives exactly 3,000
    mel = _mel_filters(config.n_mels, config.n_fft, config.sampling_rate) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    peak = log_spec.amax(dim=(1, 2), keepdim=True)
    log_spec = torch.maximum(log_spec, peak - 8.0)
    return (log_spec + 4.0) / 4.0, valid
