"""Configuration of the compression SDK (one frozen dataclass, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass

from memory.compression.errors import CompressionError

__all__ = ["LOSSLESS_METHODS", "CompressionConfig"]

LOSSLESS_METHODS = ("auto", "lm", "zstd_dict", "zstd")


@dataclass(frozen=True)
class CompressionConfig:
    """Settings shared by :class:`Compressor` and :class:`Reconstructor`.

    ``lossless_method="auto"`` uses the LM coder when an LM is given, else the trained zstd dictionary when
    there is one, else plain zstd. ``quality_threshold`` is the cosine under which a semantic compression is
    flagged and the raw text kept; ``semantic_target_ratio`` is the ratio (raw bytes / stored row bytes) the
    extractive summary is sized for, counting everything stored; ``semantic_embedding`` is how the original's
    embedding is kept (``"binary"``: sign bits, 48 bytes for 384 dimensions; ``"int8"``: 384 bytes + scale);
    ``summary_shortlist`` is how many candidate sentences per greedy step are re-scored on real embeddings (0:
    none); ``summary_search_steps`` bounds the local search (add / drop / swap sentences on the real embedding)
    that follows the greedy stage (0: greedy only).
    """

    lossless_method: str = "auto"
    zstd_level: int = 19
    dictionary_size: int = 16384
    lm_total_bits: int = 24
    quality_threshold: float = 0.85
    semantic_target_ratio: float = 10.0
    semantic_embedding: str = "binary"
    summary_shortlist: int = 0
    summary_search_steps: int = 4
    summary_max_words: int = 60
    summary_max_new_tokens: int = 96
    reconstruction_max_new_tokens: int = 192
    verify_lossless: bool = False

    def __post_init__(self) -> None:
        if self.lossless_method not in LOSSLESS_METHODS:
            raise CompressionError(
                f"lossless_method={self.lossless_method!r} is not one of {list(LOSSLESS_METHODS)}"
            )
        if not 1 <= self.zstd_level <= 22:
            raise CompressionError(f"zstd_level={self.zstd_level} is outside 1..22")
        if not 17 <= self.lm_total_bits <= 30:
            raise CompressionError(f"lm_total_bits={self.lm_total_bits} is outside 17..30")
        if not -1.0 <= self.quality_threshold <= 1.0:
            raise CompressionError(f"quality_threshold={self.quality_threshold} is outside -1..1 (a cosine)")
        if self.semantic_embedding not in ("int8", "binary"):
            raise CompressionError(
                f"semantic_embedding={self.semantic_embedding!r} is not one of ['int8', 'binary']"
            )
        if self.summary_shortlist < 0 or self.summary_search_steps < 0:
            raise CompressionError(
                f"summary_shortlist={self.summary_shortlist} and summary_search_steps={self.summary_search_steps} "
                "must be >= 0"
            )
        if self.semantic_target_ratio <= 1.0:
            raise CompressionError(f"semantic_target_ratio={self.semantic_target_ratio} must be above 1")
