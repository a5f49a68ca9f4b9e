"""``Reconstructor``: turns :class:`CompressedMemory` records back into text.

Before decoding, every record is checked against what this reconstructor holds: coder version, model or
dictionary checksum, and (for the LM coder) the checksum of the context it was coded with. A mismatch raises
:class:`ModelMismatchError` instead of producing garbage; a payload that decodes to bytes whose length or CRC32
differ from the original's raises :class:`CorruptPayloadError`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

from memory.compression import semantic, semantic_codec
from memory.compression.coders import CoderSet
from memory.compression.compressor import SEMANTIC_CODER_VERSION, as_context, validate_texts
from memory.compression.errors import (
    CorruptPayloadError,
    InvalidContentError,
    MissingCoderError,
    ModelMismatchError,
    RecordFormatError,
)
from memory.compression.lm_coder import LM_CODER_VERSION, context_checksum
from memory.compression.records import METHODS, CompressedMemory
from memory.compression.zstd_dict import ZSTD_CODER_VERSION, zstd_decompress

__all__ = ["Reconstructor"]

_VERSIONS = {"zstd": ZSTD_CODER_VERSION, "zstd_dict": ZSTD_CODER_VERSION, "lm": LM_CODER_VERSION,
             "semantic": SEMANTIC_CODER_VERSION}


class Reconstructor(CoderSet):
    """Restores memories: exact text for lossless records, summary + entities for semantic ones.

    Give it the same ``lm``, ``dictionary`` and ``text_model`` the compressor used (see
    :class:`~memory.compression.coders.CoderSet`); ``llm`` (optional) rewrites semantic records into prose,
    otherwise a template joins the summary and the entities it lacks.
    """

    def reconstruct(
        self,
        compressed: CompressedMemory | Sequence[CompressedMemory],
        context: str | Sequence[str] | None = None,
    ) -> str | list[str]:
        """The text of one record, or of a list of records (item ``i`` decoded after ``context + texts[:i]``)."""
        ctx = validate_texts(as_context(context), "context message")
        if isinstance(compressed, CompressedMemory):
            return self._one(compressed, ctx)
        if isinstance(compressed, (str, bytes)) or not isinstance(compressed, Sequence):
            raise InvalidContentError(
                f"reconstruct() takes a CompressedMemory or a list of them, got {type(compressed).__name__}; "
                "read Arrow records with CompressedMemory.from_arrow first"
            )
        texts: list[str] = []
        for record in compressed:
            if not isinstance(record, CompressedMemory):
                raise InvalidContentError(f"expected CompressedMemory items, got {type(record).__name__}")
            texts.append(self._one(record, [*ctx, *texts]))
        return texts

    def _one(self, record: CompressedMemory, context: list[str]) -> str:
        if record.method not in METHODS:
            raise RecordFormatError(f"unknown compression method {record.method!r} in record; expected one of "
                                    f"{list(METHODS)}")
        expected = _VERSIONS[record.method]
        if record.coder_version != expected:
            raise ModelMismatchError(
                f"record was written by {record.method} coder version {record.coder_version}, this build decodes "
                f"version {expected}; decode it with the matching build or compress the text again"
            )
        if record.method == "semantic" and not record.flagged:
            return self._semantic(record)
        data = self._lossless_bytes(record, context)
        crc = zlib.crc32(data)
        if len(data) != record.original_length or crc != record.content_crc32:
            raise CorruptPayloadError(
                f"{record.method} payload decodes to {len(data)} bytes with CRC32 {crc:08x}, but the original had "
                f"{record.original_length} bytes with CRC32 {record.content_crc32:08x}: the payload is corrupted"
            )
        return data.decode("utf-8")

    def _lossless_bytes(self, record: CompressedMemory, context: list[str]) -> bytes:
        if record.method == "lm":
            if self._coder is None:
                raise MissingCoderError(
                    f"record was compressed with the LM coder (model {record.model_checksum}); pass lm= the same "
                    "model to the Reconstructor"
                )
            if record.model_checksum != self._coder.checksum:
                raise ModelMismatchError(
                    f"record was compressed with model {record.model_checksum}, but this reconstructor's model is "
                    f"{self._coder.checksum}; load the same weights and tokenizer to decode it"
                )
            ctx = context_checksum(self._coder.lm.prefix_ids(context))
            if ctx != record.context_checksum:
                raise ModelMismatchError(
                    f"record was compressed with context checksum {record.context_checksum:08x}, but the given "
                    f"context hashes to {ctx:08x}; pass the same previous messages (context=) used to compress it"
                )
            text = self._coder.decode(record.payload, record.token_path, record.original_length, context)
            return text.encode("utf-8")
        if record.method == "zstd_dict":
            if self.dictionary is None:
                raise MissingCoderError(
                    f"record was compressed with zstd dictionary {record.model_checksum}; pass dictionary= the "
                    "same ZstdDictionary to the Reconstructor"
                )
            if record.model_checksum != self.dictionary.checksum:
                raise ModelMismatchError(
                    f"record was compressed with dictionary {record.model_checksum}, but this reconstructor's "
                    f"dictionary is {self.dictionary.checksum}; load the dictionary the compressor trained"
                )
            return zstd_decompress(record.payload, record.original_length, self.dictionary)
        return zstd_decompress(record.payload, record.original_length)

    def semantic_parts(self, record: CompressedMemory) -> tuple[str, tuple[str, ...]]:
        """``(summary, entities)`` of an unflagged semantic record, decoded from its payload."""
        if record.method != "semantic" or record.flagged:
            raise InvalidContentError(
                f"semantic_parts() needs an unflagged semantic record, got method {record.method!r}"
                f"{' (flagged: it keeps the raw text)' if record.flagged else ''}; call reconstruct() instead"
            )
        coding, _ = semantic_codec.parse_token_path(record.token_path)
        limit = 4 * record.original_length + 1024  # summary + entities never exceed the original by this much
        if coding == "ctx":
            model = self._checked("text model", "text_model", self.text_model, record)
            units = model.decode_units(record.payload, semantic_codec.units_complete, max_bytes=limit)
            return semantic_codec.unpack_units(units)
        if coding == "zstd_dict":
            self._checked("zstd dictionary", "dictionary", self.dictionary, record)
        data = zstd_decompress(record.payload, limit, self.dictionary if coding == "zstd_dict" else None)
        return semantic_codec.unpack_parts(data)

    @staticmethod
    def _checked(what: str, argument: str, model: Any, record: CompressedMemory) -> Any:
        """``model`` if it is the one ``record`` was coded with, else the error that says which one to pass."""
        if model is None:
            raise MissingCoderError(
                f"semantic record was coded with {what} {record.model_checksum}; pass {argument}= the same one "
                "to the Reconstructor"
            )
        if record.model_checksum != model.checksum:
            raise ModelMismatchError(
                f"semantic record was coded with {what} {record.model_checksum}, but this reconstructor's is "
                f"{model.checksum}; load the {argument} the compressor trained"
            )
        return model

    def _semantic(self, record: CompressedMemory) -> str:
        summary, entities = self.semantic_parts(record)
        if self.llm is not None:
            return semantic.llm_reconstruction(
                self.llm, summary, entities, self.config.reconstruction_max_new_tokens
            )
        return semantic.render_reconstruction(summary, entities)
