"""zstd coding of single messages, plain or with a dictionary trained on the store's own text.

Short chat messages are smaller than a zstd frame's own overhead; a dictionary trained on earlier messages
gives the coder a shared history to point into. Frames omit the checksum and dictionary id (the record carries a
CRC32 of the original and the dictionary's checksum instead) but keep the content size.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import xxhash
import zstandard

from memory.compression.errors import CompressionError, CorruptPayloadError

__all__ = ["ZSTD_CODER_VERSION", "ZstdDictionary", "zstd_compress", "zstd_decompress"]

logger = logging.getLogger(__name__)

ZSTD_CODER_VERSION = 1
"""zstd frame format 1 (RFC 8878) with the frame options above."""


def _compressor(level: int, dict_data: zstandard.ZstdCompressionDict | None = None) -> zstandard.ZstdCompressor:
    return zstandard.ZstdCompressor(
        level=level, dict_data=dict_data, write_checksum=False, write_content_size=True, write_dict_id=False
    )


def zstd_compress(data: bytes, level: int = 19) -> bytes:
    """One zstd frame of ``data`` (no dictionary)."""
    return _compressor(level).compress(data)


def zstd_decompress(frame: bytes, original_length: int, dictionary: ZstdDictionary | None = None) -> bytes:
    """Decompress one frame of at most ``original_length`` bytes; a damaged frame raises CorruptPayloadError."""
    dict_data = dictionary.zstd_dict if dictionary is not None else None
    decompressor = zstandard.ZstdDecompressor(dict_data=dict_data) if dict_data else zstandard.ZstdDecompressor()
    try:
        return decompressor.decompress(frame, max_output_size=max(original_length, 1))
    except zstandard.ZstdError as exc:
        raise CorruptPayloadError(f"zstd payload of {len(frame)} bytes does not decompress: {exc}") from None


class ZstdDictionary:
    """A trained zstd dictionary, identified by a checksum of its bytes (stored in each record it codes)."""

    def __init__(self, data: bytes, *, level: int = 19) -> None:
        if not data:
            raise CompressionError("zstd dictionary is empty; train one with ZstdDictionary.train(texts)")
        self.data = bytes(data)
        self.level = level
        self.zstd_dict = zstandard.ZstdCompressionDict(self.data)
        self.checksum = f"zstd-dict:{xxhash.xxh3_64_hexdigest(self.data)}"
        self._compressor = _compressor(level, self.zstd_dict)

    @classmethod
    def train(cls, texts: Sequence[str], *, size: int = 16384, level: int = 19) -> ZstdDictionary:
        """Train a dictionary of at most ``size`` bytes on ``texts`` (the store's own messages)."""
        samples = [t.encode("utf-8") for t in texts if t]
        try:
            trained = zstandard.train_dictionary(size, samples)
        except zstandard.ZstdError as exc:
            raise CompressionError(
                f"cannot train a {size}-byte zstd dictionary on {len(samples)} texts "
                f"({sum(map(len, samples))} bytes): {exc}; give more text or a smaller size"
            ) from None
        logger.info("trained a %d-byte zstd dictionary on %d texts", len(trained.as_bytes()), len(samples))
        return cls(trained.as_bytes(), level=level)

    def compress(self, data: bytes) -> bytes:
        """One zstd frame of ``data`` coded against this dictionary."""
        return self._compressor.compress(data)
