"""Frozen encoder features for the joint space: MiniLM text embeddings, pooled Whisper frames, DINOv2 tokens.

:class:`FrozenEncoders` loads each encoder from ``models/`` on first use. :class:`FeatureCache` keeps computed
features in one Parquet file per modality and encoder setting, so re-training skips the encoders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from multimodal.config import JointConfig
from multimodal.errors import ModalityInputError

__all__ = ["FeatureCache", "FrozenEncoders", "pool_frames", "window_for"]

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16_000


def window_for(samples: int, windows: Sequence[int]) -> int:
    """The shortest encoder window (seconds) that holds ``samples`` at 16 kHz; the longest when none does."""
    for w in windows:
        if samples <= w * SAMPLE_RATE:
            return int(w)
    return int(windows[-1])


def pool_frames(frames: np.ndarray, segments: int) -> np.ndarray:
    """``[mean, segment_1 mean, ..., segment_S mean]`` of encoder frames ``[T, d]``, flattened to ``(1+S)*d``.

    Segments split the valid frames into ``S`` equal runs in time (a clip shorter than ``S`` frames reuses its
    frames), so the feature keeps coarse word order that the plain mean loses.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if len(frames) < segments:
        frames = frames[np.linspace(0, len(frames) - 1, segments).round().astype(int)]
    parts = [frames.mean(axis=0)] + [p.mean(axis=0) for p in np.array_split(frames, segments)]
    return np.concatenate(parts).astype(np.float32)


class FrozenEncoders:
    """The frozen text, audio and image encoders of a :class:`JointConfig`, loaded from ``models_dir`` lazily.

    Args:
        models_dir: the converted-model store holding ``config.text_model`` etc.
        config: which encoders and how their outputs are pooled.
        progress: show tqdm bars for long feature runs.
    """

    def __init__(self, models_dir: str | os.PathLike[str], config: JointConfig, *, progress: bool = False) -> None:
        self.models_dir = Path(models_dir)
        self.config = config
        self.progress = progress
        self._text: Any = None
        self._audio: Any = None
        self._image: Any = None
        self.last_transcripts: list[str] = []  # of the latest audio() call, for inspection

    @property
    def text_encoder(self) -> Any:
        """The ``arrowengine.TextEncoder`` (loaded on first use)."""
        if self._text is None:
            from arrowengine.runtime.text_encoder import TextEncoder

            self._text = TextEncoder(self.models_dir / self.config.text_model)
        return self._text

    @property
    def audio_encoder(self) -> Any:
        """The ``arrowengine.AudioEncoder`` (loaded on first use)."""
        if self._audio is None:
            from arrowengine.runtime.audio_encoder import AudioEncoder

            self._audio = AudioEncoder(self.models_dir / self.config.audio_model)
        return self._audio

    @property
    def image_encoder(self) -> Any:
        """The ``arrowengine.ImageEncoder`` (loaded on first use)."""
        if self._image is None:
            from arrowengine.runtime.image_encoder import ImageEncoder

            self._image = ImageEncoder(self.models_dir / self.config.image_model, pooling=self.config.image_pooling,
                                       normalize=False)
        return self._image

    def signature(self, modality: str) -> str:
        """What a cached feature of ``modality`` depends on: encoder, pooling, window and precision."""
        c = self.config
        if modality == "text":
            enc = self.text_encoder
            parts = [c.text_model, getattr(enc, "precision", None)]
        elif modality == "audio":
            enc = self.audio_encoder
            parts = [c.audio_model, enc.precision, list(c.audio_windows), c.audio_segments]
            if c.audio_transcript:
                parts += ["transcript", c.transcript_min_seconds, c.text_model,
                          getattr(self.text_encoder, "precision", None)]
        else:
            enc = self.image_encoder
            parts = [c.image_model, enc.dtype, c.image_pooling]
        return hashlib.sha1(json.dumps([modality, *parts], default=str).encode()).hexdigest()[:16]

    def text(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalised text embeddings ``[n, dim]`` (the joint space itself)."""
        if not len(texts):
            return np.zeros((0, self.config.dim), np.float32)
        return np.ascontiguousarray(self.text_encoder.encode(list(texts)), dtype=np.float32)

    def audio(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Audio features ``[n, audio_feature_dim]`` of 16 kHz waveforms (one window bucket at a time): pooled
        Whisper frames, then (with ``audio_transcript``) the text embedding of Whisper's transcript."""
        c = self.config
        out = np.zeros((len(waves), c.audio_feature_dim), np.float32)
        buckets: dict[int, list[int]] = {}
        for i, w in enumerate(waves):
            w = np.asarray(w)
            if w.ndim != 1 or w.size == 0:
                raise ModalityInputError(f"audio input {i} must be a non-empty 1-D 16 kHz waveform, got shape "
                                         f"{w.shape}; read files with arrowengine.runtime.audio_features.load_wav")
            buckets.setdefault(window_for(len(w), c.audio_windows), []).append(i)
        enc = self.audio_encoder
        pooled = c.audio_dim * (1 + c.audio_segments)
        transcripts = [""] * len(waves)
        for window, idx in sorted(buckets.items()):
            frames = enc.hidden_states([waves[i] for i in idx], SAMPLE_RATE, window_s=window)
            for i, f in zip(idx, frames, strict=True):
                out[i, :pooled] = pool_frames(f, c.audio_segments)
            said = [i for i in idx if c.audio_transcript and len(waves[i]) >= c.transcript_min_seconds * SAMPLE_RATE]
            if said:  # ~4 tokens per second of speech; the cap stops a rare repetition loop on noise
                texts = enc.transcribe_many([waves[i] for i in said], SAMPLE_RATE, window_s=window,
                                            max_new_tokens=12 * window)
                for i, text in zip(said, texts, strict=True):
                    transcripts[i] = text.strip()
        worded = [i for i, t in enumerate(transcripts) if t]
        if worded:  # silence or noise gives no words: its transcript part stays zero
            out[worded, pooled:] = self.text([transcripts[i] for i in worded])
        self.last_transcripts = transcripts
        return out

    def image(self, images: Sequence[Any]) -> np.ndarray:
        """DINOv2 features ``[n, image_dim]`` (not normalised: the head's layer norm sees their scale)."""
        if not len(images):
            return np.zeros((0, self.config.image_dim), np.float32)
        return np.ascontiguousarray(self.image_encoder.encode(list(images)), dtype=np.float32)

    def encode(self, modality: str, inputs: Sequence[Any]) -> np.ndarray:
        """Features of ``inputs`` for ``modality`` (``text``, ``audio`` or ``image``)."""
        return {"text": self.text, "audio": self.audio, "image": self.image}[modality](inputs)


class FeatureCache:
    """Features by key in ``<root>/<modality>-<signature>/part-*.parquet``, computed in chunks with a progress bar.

    Each chunk is written as its own part (atomically), so an interrupted run keeps what it computed and a long
    run never rewrites what it already saved.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def features(self, encoders: FrozenEncoders, modality: str, keys: Sequence[str],
                 load: Callable[[int], Any], *, chunk: int = 64, desc: str | None = None) -> np.ndarray:
        """Features ``[len(keys), d]``; ``load(i)`` gives input ``i`` for the keys not cached yet."""
        folder = self.root / f"{modality}-{encoders.signature(modality)}"
        cached = self._read(folder)
        first: dict[str, int] = {}  # key -> its first position
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        missing = [i for k, i in first.items() if k not in cached]
        bar = tqdm(total=len(missing), desc=desc or f"{modality} features", unit="item",
                   disable=not encoders.progress or not missing)
        for start in range(0, len(missing), chunk):
            idx = missing[start : start + chunk]
            values = encoders.encode(modality, [load(i) for i in idx])
            part = {keys[i]: v for i, v in zip(idx, values, strict=True)}
            self._write(folder, part)
            cached.update(part)
            bar.update(len(idx))
        bar.close()
        if not keys:
            return np.zeros((0, 0), np.float32)
        return np.stack([cached[k] for k in keys]).astype(np.float32)

    @staticmethod
    def _read(folder: Path) -> dict[str, np.ndarray]:
        cached: dict[str, np.ndarray] = {}
        for path in sorted(folder.glob("part-*.parquet")):
            table = pq.read_table(path)
            dim = table.schema.field("feature").type.list_size
            values = table.column("feature").combine_chunks().flatten().to_numpy().reshape(-1, dim)
            cached.update(zip(table.column("key").to_pylist(), values, strict=True))
        return cached

    @staticmethod
    def _write(folder: Path, part: dict[str, np.ndarray]) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        matrix = np.stack(list(part.values())).astype(np.float32)
        flat = pa.array(matrix.ravel())
        table = pa.table({"key": list(part), "feature": pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])})
        name = f"part-{len(list(folder.glob('part-*.parquet'))):06d}"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, folder / f"{name}.parquet")
