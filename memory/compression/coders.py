"""What :class:`Compressor` and :class:`Reconstructor` share: the configuration and the models that code text.

Both sides must hold the same models (LM, zstd dictionary, text model) for a record to decode; keeping them in
one base class keeps the two constructors from drifting apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memory.compression.config import CompressionConfig
from memory.compression.lm_coder import LMArithmeticCoder

if TYPE_CHECKING:
    from memory.compression import semantic
    from memory.compression.lm_model import TokenStepper
    from memory.compression.text_model import ContextTextModel
    from memory.compression.zstd_dict import ZstdDictionary

__all__ = ["CoderSet"]


class CoderSet:
    """The configuration plus every optional model a record may have been coded with.

    ``lm`` is a :class:`~memory.compression.lm_model.TokenStepper` (lossless LM coder); ``embedder`` anything
    with ``encode(list[str])``; ``llm`` anything with ``generate(prompt, max_new_tokens=...)``; ``dictionary``
    a trained :class:`~memory.compression.zstd_dict.ZstdDictionary`; ``text_model`` a trained
    :class:`~memory.compression.text_model.ContextTextModel` (the semantic tier's payload coder).
    """

    def __init__(
        self,
        config: CompressionConfig | None = None,
        *,
        lm: TokenStepper | None = None,
        embedder: semantic.Embedder | None = None,
        llm: semantic.TextGenerator | None = None,
        dictionary: ZstdDictionary | None = None,
        text_model: ContextTextModel | None = None,
    ) -> None:
        self.config = config or CompressionConfig()
        self.lm = lm
        self.embedder = embedder
        self.llm = llm
        self.dictionary = dictionary
        self.text_model = text_model
        self._coder = LMArithmeticCoder(lm, total_bits=self.config.lm_total_bits) if lm is not None else None
