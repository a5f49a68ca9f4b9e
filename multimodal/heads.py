"""The trained part of the joint space: audio and image projection heads and the fusion MLP.

Text needs no head: the joint space is the text encoder's space. Each head maps a frozen encoder's feature to a
unit vector in that space; :class:`FusionMLP` maps the projections of any non-empty subset of modalities (the
missing ones zeroed and flagged) to one unit vector, as a learned correction of their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from multimodal.config import MODALITIES, JointConfig

__all__ = ["FusionMLP", "JointHeads", "ProjectionHead"]


class ProjectionHead(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear, L2-normalised output.

    With ``passthrough`` > 0 the last ``passthrough`` input features are already a vector of the joint space
    (the embedded transcript of speech) and are added to the MLP's output, scaled by a learned ``gate``: the
    MLP learns what they miss instead of relearning the text space from a few thousand sentences.
    """

    def __init__(self, in_dim: int, hidden: int, out_dim: int, dropout: float = 0.0, passthrough: int = 0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)
        self.passthrough = passthrough
        if passthrough:
            self.gate = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, in_dim]`` features -> ``[n, out_dim]`` unit vectors."""
        out = self.fc2(self.dropout(F.gelu(self.fc1(self.norm(x)))))
        if self.passthrough:
            out = out + self.gate * x[:, -self.passthrough :]
        return F.normalize(out, dim=-1)


class FusionMLP(nn.Module):
    """Fuses per-modality unit vectors ``[n, 3, dim]`` with a presence mask ``[n, 3]`` into ``[n, dim]``.

    The output is ``normalize(mean of present vectors + MLP(vectors, mask))``: with the MLP at zero it is the
    plain average, which is already a sound fusion; training teaches the correction. Missing modalities enter as
    zeros, so the result does not depend on the order of the arguments, only on which modalities are present.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        n = len(MODALITIES)
        self.fc1 = nn.Linear(n * dim + n, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Fuse ``vectors [n, 3, dim]`` (zeros where ``mask [n, 3]`` is 0) into unit vectors ``[n, dim]``."""
        mask = mask.to(vectors.dtype)
        vectors = vectors * mask.unsqueeze(-1)
        mean = vectors.sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
        x = torch.cat([vectors.flatten(1), mask], dim=1)
        return F.normalize(mean + self.fc2(self.dropout(F.gelu(self.fc1(x)))), dim=-1)


class JointHeads(nn.Module):
    """The audio head, the image head and the fusion MLP of one :class:`JointConfig` (a state dict of tensors)."""

    def __init__(self, config: JointConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        self.audio = ProjectionHead(config.audio_feature_dim, config.hidden, config.dim, dropout,
                                    passthrough=config.dim if config.audio_transcript else 0)
        self.image = ProjectionHead(config.image_dim, config.hidden, config.dim, dropout)
        self.fusion = FusionMLP(config.dim, config.fusion_hidden, dropout)

    def project(self, modality: str, features: torch.Tensor) -> torch.Tensor:
        """Unit vectors in the joint space for one modality's features (text features are already there)."""
        if modality == "text":
            return F.normalize(features, dim=-1)
        return getattr(self, modality)(features)
