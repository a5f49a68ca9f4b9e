"""What a semantic record stores, in as few bytes as the objective allows.

* Payload, coded by the store's text model (``ctx``, :mod:`memory.compression.text_model`): the units
  ``summary lines..., "", entities..., ""`` (an empty unit ends each list), each from a line-start context, so
  the payload's size is the sum of its units' code lengths. Without a text model: the summary and the entity list
  as one UTF-8 text (``summary \\x1e entity \\x1f entity ...``) coded with zstd -19 against the store's trained
  dictionary (``zstd_dict``) or without one (``zstd``).
* Embedding of the original: ``int8`` (one byte per dimension + a float32 scale) or ``binary`` (one sign bit per
  dimension, 48 bytes for MiniLM's 384; Hamming/cosine retrieval on signs).
* ``token_path`` of a semantic record names both: ``"<codec>/<embedding format>"``, e.g. ``"zstd_dict/binary"``;
  a flagged record (raw text kept) has codec ``raw``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from memory.compression.errors import CorruptPayloadError

__all__ = [
    "EMBEDDING_FORMATS",
    "SEPARATORS",
    "dequantize",
    "pack_parts",
    "pack_units",
    "parse_token_path",
    "quantize",
    "summary_lines",
    "unpack_parts",
    "unpack_units",
]

CODINGS = ("ctx", "zstd", "zstd_dict", "raw")

EMBEDDING_FORMATS = ("int8", "binary")
_SUMMARY_END, _ENTITY_SEP = "\x1e", "\x1f"
SEPARATORS = (_SUMMARY_END, _ENTITY_SEP)
"""Characters the packed text reserves; a summary sentence holding one is never selected."""


def pack_parts(summary: str, entities: Sequence[str]) -> bytes | None:
    """``summary`` and ``entities`` as one UTF-8 text, or ``None`` when one of them holds a separator."""
    if any(sep in part for part in (summary, *entities) for sep in SEPARATORS):
        return None
    return (summary + _SUMMARY_END + _ENTITY_SEP.join(entities)).encode("utf-8")


def unpack_parts(data: bytes) -> tuple[str, tuple[str, ...]]:
    """Invert :func:`pack_parts`."""
    try:
        summary, _, rest = data.decode("utf-8").partition(_SUMMARY_END)
    except UnicodeDecodeError as exc:
        raise CorruptPayloadError(f"semantic payload is not UTF-8 ({exc.reason}): the payload is corrupted") from None
    if not _:
        raise CorruptPayloadError("semantic payload lacks its summary terminator: the payload is corrupted")
    return summary, tuple(rest.split(_ENTITY_SEP)) if rest else ()


def summary_lines(summary: str) -> list[str]:
    """The non-blank lines of ``summary``: what a text-model payload keeps of it (units cannot be empty)."""
    return [line for line in summary.split("\n") if line.strip()]


def pack_units(summary: str, entities: Sequence[str]) -> list[str]:
    """The units a text-model payload codes: summary lines, an empty end marker, entities, an end marker."""
    return [*summary_lines(summary), "", *entities, ""]


def units_complete(units: Sequence[str]) -> bool:
    """Whether decoded ``units`` hold both end markers (the decoder's stop test)."""
    return sum(1 for unit in units if unit == "") >= 2


def unpack_units(units: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Invert :func:`pack_units`."""
    if not units_complete(units):
        raise CorruptPayloadError("text-model payload lacks its end markers: the payload is corrupted")
    end = units.index("")
    return "\n".join(units[:end]), tuple(units[end + 1 : len(units) - 1])


def quantize(vector: np.ndarray, fmt: str) -> tuple[bytes, float]:
    """``(bytes, scale)`` of ``vector`` in ``fmt``: symmetric int8 with its scale, or packed sign bits (scale 0)."""
    v = np.asarray(vector, dtype=np.float32)
    if fmt == "binary":
        return np.packbits(v > 0).tobytes(), 0.0
    scale = float(np.abs(v).max()) / 127.0 if v.size else 0.0
    q = np.zeros_like(v, dtype=np.int8) if scale == 0.0 else np.clip(np.rint(v / scale), -127, 127).astype(np.int8)
    return q.tobytes(), scale


def dequantize(data: bytes, scale: float, fmt: str) -> np.ndarray:
    """Invert :func:`quantize` (a binary embedding becomes a unit vector of ``+-1/sqrt(d)``)."""
    if fmt == "binary":
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).astype(np.float32)
        return (bits * 2.0 - 1.0) / np.float32(np.sqrt(max(bits.size, 1)))
    return np.frombuffer(data, dtype=np.int8).astype(np.float32) * np.float32(scale)


def parse_token_path(token_path: str) -> tuple[str, str]:
    """``(codec, embedding format)`` of a semantic record's ``token_path`` (``"zstd_dict/binary"``...)."""
    codec, _, fmt = token_path.partition("/")
    if codec not in CODINGS or fmt not in EMBEDDING_FORMATS:
        raise CorruptPayloadError(
            f"semantic record has token_path {token_path!r}; expected '<ctx|zstd|zstd_dict|raw>/<int8|binary>'"
        )
    return codec, fmt
