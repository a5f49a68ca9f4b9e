"""``Compressor``: turns memories into :class:`CompressedMemory` records, lossless or semantic.

Lossless records restore the exact text (LM arithmetic coder, zstd with a trained dictionary, or zstd).
Semantic records keep a summary and the exact key entities (coded together with zstd -19, against the trained
dictionary when there is one) and the original's embedding (binary or int8); the extractive summary is sized so
the whole row meets ``semantic_target_ratio``. Each is scored at compression time (cosine of original vs
reconstruction embeddings, entity retention) and a record under the quality threshold is flagged and keeps the
raw text (zstd) instead of losing it.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np

from memory.compression import semantic
from memory.compression import semantic_codec as codec
from memory.compression.coders import CoderSet
from memory.compression.entities import entity_retention, extract_entities
from memory.compression.errors import (
    CorruptPayloadError,
    EmptyContentError,
    InvalidContentError,
    MissingCoderError,
)
from memory.compression.lm_coder import LM_CODER_VERSION
from memory.compression.records import CompressedMemory
from memory.compression.text_model import ContextTextModel
from memory.compression.zstd_dict import ZSTD_CODER_VERSION, ZstdDictionary, _compressor, zstd_compress

__all__ = ["Compressor", "as_context", "validate_texts"]

logger = logging.getLogger(__name__)

SEMANTIC_CODER_VERSION = 2


def validate_texts(items: object, what: str = "memory") -> list[str]:
    """``items`` as a list of non-empty UTF-8-encodable strings, or the error that says which one is wrong."""
    if isinstance(items, (bytes, bytearray)) or not isinstance(items, Sequence):
        raise InvalidContentError(
            f"{what} content is {type(items).__name__}, expected str or a list of str; decode bytes or "
            "serialise objects to text first"
        )
    texts = list(items)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidContentError(
                f"{what} {i} is {type(text).__name__}, expected str; decode bytes or serialise objects to text "
                "first"
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidContentError(
                f"{what} {i} holds a character that is not valid UTF-8 (index {exc.start}: a lone surrogate); "
                "it cannot be stored"
            ) from None
    return texts


def as_context(context: str | Sequence[str] | None) -> list:
    """The context messages as a list (a single ``str`` is one message, ``None`` none)."""
    if context is None:
        return []
    return [context] if isinstance(context, str) else list(context)


class Compressor(CoderSet):
    """Compresses memories (see module docstring and :class:`~memory.compression.coders.CoderSet` for the
    models it takes: ``lm``, ``embedder``, ``llm``, ``dictionary``, ``text_model``)."""

    def train_dictionary(self, texts: Sequence[str]) -> ZstdDictionary:
        """Train (and keep) a zstd dictionary on the store's own texts; returns it for saving with the state."""
        texts = validate_texts(texts, "training text")
        self.dictionary = ZstdDictionary.train(
            texts, size=self.config.dictionary_size, level=self.config.zstd_level
        )
        return self.dictionary

    def train_text_model(self, texts: Sequence[str], *, order: int = 4) -> ContextTextModel:
        """Train (and keep) the semantic tier's payload model on the store's own texts; save it with the state."""
        self.text_model = ContextTextModel.train(validate_texts(texts, "training text"), order=order)
        return self.text_model

    def lossless_method(self) -> str:
        """The lossless method this compressor uses, after resolving ``auto``."""
        method = self.config.lossless_method
        if method == "auto":
            return "lm" if self._coder else "zstd_dict" if self.dictionary else "zstd"
        if method == "lm" and self._coder is None:
            raise MissingCoderError("lossless_method='lm' needs an LM: pass lm=HFCausalLM(model, tokenizer)")
        if method == "zstd_dict" and self.dictionary is None:
            raise MissingCoderError(
                "lossless_method='zstd_dict' needs a dictionary: call train_dictionary(texts) or pass dictionary="
            )
        return method

    def compress(
        self, memories: str | Sequence[str], tier: str = "lossless", context: str | Sequence[str] | None = None
    ) -> CompressedMemory | list[CompressedMemory]:
        """Compress one memory (a ``str``) or several (a list, returned as a list).

        Lossless: item ``i`` of a list is coded with ``context + memories[:i]`` as its LM context (a
        conversation); pass the same ``context`` to the reconstructor. Semantic: each item is one memory.
        """
        single = isinstance(memories, str)
        texts = validate_texts([memories] if single else memories)
        if not texts:
            raise EmptyContentError("no memories to compress: got an empty list")
        for i, text in enumerate(texts):
            if not text:
                raise EmptyContentError(f"memory {i} is empty; there is nothing to compress")
        ctx = validate_texts(as_context(context), "context message")
        if tier == "lossless":
            out = [self._lossless(text, [*ctx, *texts[:i]]) for i, text in enumerate(texts)]
        elif tier == "semantic":
            out = [self._semantic(text) for text in texts]
        else:
            raise InvalidContentError(f"unknown tier {tier!r}; expected 'lossless' or 'semantic'")
        return out[0] if single else out

    def _lossless(self, text: str, context: list[str]) -> CompressedMemory:
        start = time.perf_counter()
        data = text.encode("utf-8")
        method = self.lossless_method()
        common = {"original_length": len(data), "content_crc32": zlib.crc32(data), "cosine": 1.0,
                  "entity_retention": 1.0}
        if method == "lm":
            assert self._coder is not None
            code = self._coder.encode(text, context)
            record = CompressedMemory(
                method="lm", coder_version=LM_CODER_VERSION, payload=code.payload,
                model_checksum=self._coder.checksum, context_checksum=code.context_checksum,
                token_path=code.path, **common,
            )
        elif method == "zstd_dict":
            assert self.dictionary is not None
            record = CompressedMemory(
                method="zstd_dict", coder_version=ZSTD_CODER_VERSION, payload=self.dictionary.compress(data),
                model_checksum=self.dictionary.checksum, **common,
            )
        else:
            record = CompressedMemory(
                method="zstd", coder_version=ZSTD_CODER_VERSION,
                payload=zstd_compress(data, self.config.zstd_level), **common,
            )
        if self.config.verify_lossless:
            from memory.compression.reconstructor import Reconstructor

            restored = Reconstructor(self.config, lm=self.lm, dictionary=self.dictionary).reconstruct(
                record, context=context
            )
            if restored != text:
                raise CorruptPayloadError(f"{method} round trip differs from the original ({len(data)} bytes)")
        return self._finish(record, start)

    def _finish(self, record: CompressedMemory, start: float) -> CompressedMemory:
        # the metric fields are fixed-width, so the row size does not depend on the values written into them
        ratio = record.original_length / record.stored_bytes
        return record.with_metrics(ratio=ratio, latency_ms=(time.perf_counter() - start) * 1000.0)

    def _semantic_coding(self, coding: str, entities: tuple[str, ...], base: int, limit: int
                         ) -> tuple[Callable[[str], bytes | None], Callable[[str], bool]]:
        """``(payload_of(summary), fits(summary))`` for a semantic payload coded with ``coding``."""
        if coding == "ctx":
            model = self.text_model
            assert model is not None
            # unit code lengths add up (each unit starts from a line-start context), so sizing is exact and cheap
            entity_bits = sum(model.unit_bits(e) for e in entities) + 2 * model.unit_bits("")

            def payload_of_ctx(summary: str) -> bytes | None:
                return model.encode_units(codec.pack_units(summary, entities))

            def fits_ctx(summary: str) -> bool:
                lines = summary.split("\n") if summary else []
                bits = entity_bits + sum(model.unit_bits(line) for line in lines)
                return base + math.ceil(bits / 8.0) + 4 <= limit

            return payload_of_ctx, fits_ctx
        cfg = self.config

        def payload_of(summary: str) -> bytes | None:
            packed = codec.pack_parts(summary, entities)
            if packed is None:
                return None
            return self.dictionary.compress(packed) if self.dictionary is not None else zstd_compress(
                packed, cfg.zstd_level)

        # the search sizes drafts with a fast zstd level (level 19 sets up its tables per call, ~ms); the final
        # payload is coded at the configured level and trimmed if it still runs over
        fast = _compressor(3, self.dictionary.zstd_dict if self.dictionary is not None else None)

        def fits(summary: str) -> bool:
            packed = codec.pack_parts(summary, entities)
            if packed is None:
                return False
            estimate = base + len(fast.compress(packed))
            if estimate <= limit or base + 0.75 * (estimate - base) > limit:
                return estimate <= limit
            return base + len(payload_of(summary) or packed) <= limit

        return payload_of, fits

    def _semantic(self, text: str) -> CompressedMemory:
        if self.embedder is None:
            raise MissingCoderError(
                "the semantic tier needs an embedder (anything with encode(list[str]) -> ndarray); pass embedder="
            )
        start = time.perf_counter()
        cfg = self.config
        data = text.encode("utf-8")
        entities = tuple(extract_entities(text))
        sentences = [s for s in semantic.split_sentences(text) if not any(c in s for c in codec.SEPARATORS)]
        original = semantic.embed_documents(self.embedder, [text])[0]
        embedding, scale = codec.quantize(original, cfg.semantic_embedding)
        coding = ("ctx" if self.text_model is not None else "zstd_dict" if self.dictionary is not None
                  else "zstd")
        checksum = {"ctx": self.text_model.checksum if self.text_model is not None else "",
                    "zstd_dict": self.dictionary.checksum if self.dictionary is not None else ""}.get(coding, "")
        skeleton = CompressedMemory(
            method="semantic", coder_version=SEMANTIC_CODER_VERSION, original_length=len(data),
            content_crc32=zlib.crc32(data), embedding=embedding, embedding_scale=scale,
            model_checksum=checksum, token_path=f"{coding}/{cfg.semantic_embedding}",
        )
        # a binary column grows by exactly the payload's length, so the row size is base + payload
        base, limit = skeleton.stored_bytes, int(len(data) / cfg.semantic_target_ratio)
        payload_of, fits = self._semantic_coding(coding, entities, base, limit)

        if self.llm is not None:
            summary = semantic.llm_summary(self.llm, text, cfg.summary_max_words, cfg.summary_max_new_tokens)
            if coding == "ctx":  # the text model codes non-blank lines only
                summary = "\n".join(codec.summary_lines(summary))
            reconstruction = semantic.llm_reconstruction(
                self.llm, summary, entities, cfg.reconstruction_max_new_tokens
            )
        elif sentences:
            vectors = np.asarray(self.embedder.encode(sentences), dtype=np.float32)
            summary = semantic.extractive_summary(
                sentences, vectors, original, fits, entities=entities, shortlist=cfg.summary_shortlist,
                embedder=self.embedder if cfg.summary_shortlist or cfg.summary_search_steps else None,
                search_steps=cfg.summary_search_steps,
            )
            reconstruction = semantic.render_reconstruction(summary, entities)
        else:
            summary = ""
            reconstruction = semantic.render_reconstruction(summary, entities)
        payload = payload_of(summary)
        while self.llm is None and payload is not None and base + len(payload) > limit and "\n" in summary:
            summary = summary.rsplit("\n", 1)[0]
            reconstruction = semantic.render_reconstruction(summary, entities)
            payload = payload_of(summary)
        cosine = float(semantic.embed_documents(self.embedder, [reconstruction])[0] @ original)
        retention = entity_retention(entities, reconstruction)
        flagged = payload is None or cosine < cfg.quality_threshold or retention < 1.0
        if flagged:
            logger.info("semantic compression flagged (cosine %.3f, retention %.2f): raw text kept", cosine,
                        retention)
            record = skeleton.with_metrics(
                payload=zstd_compress(data, cfg.zstd_level), model_checksum="",
                token_path=f"raw/{cfg.semantic_embedding}", flagged=True,
            )
        else:
            record = skeleton.with_metrics(payload=payload)
        record = record.with_metrics(cosine=cosine, entity_retention=retention)
        return self._finish(record, start)
