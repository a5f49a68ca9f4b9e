"""Configuration of the joint embedding space and of its training (dataclasses, stored in the model's config)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from arrowengine.errors import ConfigError

__all__ = ["JOINT_MODEL_TYPE", "MODALITIES", "JointConfig", "TrainConfig"]

JOINT_MODEL_TYPE = "arrowengine-joint"
MODALITIES = ("text", "audio", "image")


@dataclass(frozen=True)
class JointConfig:
    """The joint space and the frozen encoders feeding it.

    The joint space is the text encoder's own space (``dim`` 384 for MiniLM), so text needs no projection and
    text memories already stored need no re-embedding; audio and image get trained projection heads, and a
    fusion MLP combines any two or three modalities.

    Audio features are Whisper encoder frames taken with the shortest window in ``audio_windows`` (seconds) that
    holds the clip (a 2 s window encodes a spoken digit ~25x faster than Whisper's 30 s), pooled as their mean
    plus ``audio_segments`` equal time segments' means (so word order is not lost); with ``audio_transcript``
    the same Whisper model's greedy transcript, embedded by the text encoder, is appended: it is already in the
    joint space and carries what was *said*, which pooled acoustics alone cannot pin down among many sentences.
    Clips shorter than ``transcript_min_seconds`` are not transcribed: Whisper's transcripts of isolated words
    are unreliable (FSDD: "two" -> "to", "five" -> "Bye") and the acoustic head recognises them better.
    Image features are DINOv2's ``image_pooling`` (CLS and mean patch token).
    """

    dim: int = 384
    hidden: int = 768
    fusion_hidden: int = 768
    text_model: str = "all-MiniLM-L6-v2"
    audio_model: str = "whisper-tiny.en"
    image_model: str = "dinov2-small"
    audio_windows: tuple[int, ...] = (2, 5, 10, 20, 30)
    audio_segments: int = 8
    image_pooling: str = "cls_mean"
    audio_transcript: bool = True  # also Whisper's own transcript, embedded by the text encoder
    transcript_min_seconds: float = 1.5  # shorter clips (single words) rely on acoustics alone
    audio_dim: int = 384  # the audio encoder's width (d_model)
    image_dim: int = 768  # the image feature width (2 x hidden for cls_mean)

    def __post_init__(self) -> None:
        if self.dim < 1 or self.hidden < 1 or self.fusion_hidden < 1 or self.audio_segments < 1:
            raise ConfigError(f"joint dims and audio_segments must be >= 1: {self}")
        if not self.audio_windows or list(self.audio_windows) != sorted(set(self.audio_windows)) or not (
                1 <= self.audio_windows[0] and self.audio_windows[-1] <= 30):
            raise ConfigError(f"audio_windows must be increasing whole seconds in 1..30, got {self.audio_windows}")

    @property
    def audio_feature_dim(self) -> int:
        """Width of the audio feature: the mean, one mean per segment, and the transcript's embedding."""
        return self.audio_dim * (1 + self.audio_segments) + (self.dim if self.audio_transcript else 0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (tuples as lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JointConfig:
        """Inverse of :meth:`to_dict`; unknown keys are ignored (newer files stay readable)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """How the heads are trained: AdamW on a multi-positive contrastive loss against the frozen text space.

    ``temperature`` scales cosine logits; ``modality_dropout`` is the chance each present modality is dropped
    from a fusion example (at least one always stays), which is what lets the fusion MLP take any subset.
    """

    epochs: int = 40
    fusion_epochs: int = 40
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.01
    temperature: float = 0.05
    dropout: float = 0.1
    modality_dropout: float = 0.4
    seed: int = 0
    joint: JointConfig = field(default_factory=JointConfig)
