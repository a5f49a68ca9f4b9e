"""Lossless text coding with an arithmetic coder driven by a causal LM's next-token probabilities.

Encoding a message: condition the LM on the context prefix, then for each token quantise the float32 logits
into an integer frequency table (every symbol >= 1) and code the token; the stop token ends the message. The
decoder repeats the very same computation (same prefix forward, same one-token steps, same quantisation), so
it recovers the tokens exactly. Text whose tokenization does not round-trip (or that contains the stop token)
takes the byte path instead: its UTF-8 bytes coded with an adaptive order-0 model.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from memory.compression.arithmetic import MAX_TOTAL, ArithmeticDecoder, ArithmeticEncoder, find_symbol
from memory.compression.errors import CorruptPayloadError, InvalidCoderSettingError
from memory.compression.lm_model import TokenStepper

__all__ = [
    "LM_CODER_VERSION",
    "PATH_BPE",
    "PATH_BYTES",
    "LMArithmeticCoder",
    "LMCode",
    "frequencies_from_logits",
]

LM_CODER_VERSION = 1
"""Bumped whenever framing, quantisation or the byte model changes: old records then refuse to decode."""

PATH_BPE = "bpe"
PATH_BYTES = "bytes"

_BYTE_INCREMENT = 24  # adaptive order-0 byte model: start every count at 1, add this per byte seen


def frequencies_from_logits(logits: np.ndarray, total_bits: int = 24) -> np.ndarray:
    """Cumulative integer frequencies (length ``V + 1``) of ``softmax(logits)``; every symbol gets >= 1.

    Deterministic given the same float32 logits: float64 softmax in a fixed order, floor rounding, then +1 so
    no symbol is impossible. The total is at most ``2**total_bits``.
    """
    x = np.asarray(logits, dtype=np.float64)
    vocab = x.shape[0]
    budget = (1 << total_bits) - vocab
    if budget <= 0 or (1 << total_bits) > MAX_TOTAL:
        raise InvalidCoderSettingError(f"total_bits={total_bits} cannot hold a vocabulary of {vocab}; use 17..30")
    p = np.exp(x - x.max())
    p /= p.sum()
    freq = np.floor(p * budget).astype(np.int64) + 1
    cumulative = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(freq, out=cumulative[1:])
    return cumulative


@dataclass(frozen=True)
class LMCode:
    """The output of :meth:`LMArithmeticCoder.encode`: the code and what the decoder must be told."""

    payload: bytes
    path: str
    context_checksum: int
    n_symbols: int


def context_checksum(prefix_ids: Sequence[int]) -> int:
    """CRC32 of the prefix token ids, so a record decoded against another context fails loudly."""
    return zlib.crc32(np.asarray(prefix_ids, dtype="<i8").tobytes())


class LMArithmeticCoder:
    """Codes text against a :class:`~memory.compression.lm_model.TokenStepper` (see module docstring)."""

    def __init__(self, lm: TokenStepper, *, total_bits: int = 24) -> None:
        self.lm = lm
        self.total_bits = total_bits

    @property
    def checksum(self) -> str:
        """The model's checksum (weights and tokenizer)."""
        return self.lm.checksum

    def encode(self, text: str, context: Sequence[str] = ()) -> LMCode:
        """Code ``text`` given the ``context`` messages (the context itself is not coded)."""
        prefix = self.lm.prefix_ids(context)
        ctx = context_checksum(prefix)
        ids = self.lm.tokenize(text)
        if ids is None:
            data = text.encode("utf-8")
            return LMCode(_encode_bytes(data), PATH_BYTES, ctx, len(data))
        encoder = ArithmeticEncoder()
        logits = self.lm.begin(prefix)
        for position, token in enumerate([*ids, self.lm.stop_id]):
            cumulative = frequencies_from_logits(logits, self.total_bits)
            encoder.encode(int(cumulative[token]), int(cumulative[token + 1]), int(cumulative[-1]))
            if position < len(ids):
                logits = self.lm.next_token_logits(token)
        return LMCode(encoder.finish(), PATH_BPE, ctx, len(ids) + 1)

    def decode(self, payload: bytes, path: str, original_length: int, context: Sequence[str] = ()) -> str:
        """Invert :meth:`encode`; ``original_length`` is the UTF-8 byte length of the text."""
        if path == PATH_BYTES:
            try:
                return _decode_bytes(payload, original_length).decode("utf-8", errors="strict")
            except UnicodeDecodeError as exc:
                raise CorruptPayloadError(
                    f"byte-path payload of {len(payload)} bytes decodes to invalid UTF-8 ({exc.reason}): "
                    "the payload is corrupted"
                ) from None
        if path != PATH_BPE:
            raise CorruptPayloadError(f"unknown tokenization path {path!r} in record; expected 'bpe' or 'bytes'")
        decoder = ArithmeticDecoder(payload)
        ids: list[int] = []
        logits = self.lm.begin(self.lm.prefix_ids(context))
        # every byte-level BPE token is at least one byte, so a valid code ends within original_length tokens
        for _ in range(original_length + 1):
            cumulative = frequencies_from_logits(logits, self.total_bits)
            total = int(cumulative[-1])
            token = find_symbol(cumulative, decoder.target(total))
            decoder.consume(int(cumulative[token]), int(cumulative[token + 1]), total)
            if token == self.lm.stop_id:
                return self.lm.detokenize(ids)
            ids.append(token)
            logits = self.lm.next_token_logits(token)
        raise CorruptPayloadError(
            f"LM payload of {len(payload)} bytes did not reach the end-of-message token within "
            f"{original_length + 1} tokens: the payload is corrupted or the context differs"
        )


def _byte_table(counts: np.ndarray) -> np.ndarray:
    cumulative = np.zeros(257, dtype=np.int64)
    np.cumsum(counts, out=cumulative[1:])
    return cumulative


def _encode_bytes(data: bytes) -> bytes:
    encoder = ArithmeticEncoder()
    counts = np.ones(256, dtype=np.int64)
    for byte in data:
        cumulative = _byte_table(counts)
        encoder.encode(int(cumulative[byte]), int(cumulative[byte + 1]), int(cumulative[-1]))
        counts[byte] += _BYTE_INCREMENT
    return encoder.finish()


def _decode_bytes(payload: bytes, length: int) -> bytes:
    decoder = ArithmeticDecoder(payload)
    counts = np.ones(256, dtype=np.int64)
    out = bytearray()
    for _ in range(length):
        cumulative = _byte_table(counts)
        total = int(cumulative[-1])
        byte = find_symbol(cumulative, decoder.target(total))
        decoder.consume(int(cumulative[byte]), int(cumulative[byte + 1]), total)
        out.append(byte)
        counts[byte] += _BYTE_INCREMENT
    return bytes(out)
