"""Errors of the multimodal package; each derives from :class:`arrowengine.errors.EngineError` and the builtin a
caller would catch."""

from __future__ import annotations

from arrowengine.errors import EngineError

__all__ = ["JointModelMissingError", "ModalityInputError", "TrainingDataError"]


class JointModelMissingError(EngineError, FileNotFoundError):
    """No trained joint-fusion model where one was expected (train one with ``arrowengine fusion train``)."""


class ModalityInputError(EngineError, ValueError):
    """An ``encode`` call without any modality, or a modality value of the wrong shape or kind."""


class TrainingDataError(EngineError, FileNotFoundError):
    """Paired training data (FSDD, espeak-ng, the digit images) is missing or too small to train on."""
