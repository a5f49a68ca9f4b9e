"""A classic integer arithmetic coder (Witten, Neal and Cleary, 1987) with 32-bit registers.

Symbols are coded from integer cumulative frequency tables: symbol ``s`` owns ``[cum[s], cum[s + 1])`` out of
``cum[-1]``. Integers only, so the coder itself is exact on every machine; only the tables must match on both
sides. Underflow (the interval straddling the midpoint) is handled with pending bits. The table total may be at
most ``2**30`` (a quarter of the register range), which guarantees that every symbol of frequency >= 1 keeps a
non-empty interval.

The encoder drops trailing zero bytes from its output, because the decoder reads past the end as zero bits.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MAX_TOTAL",
    "ArithmeticDecoder",
    "ArithmeticEncoder",
    "find_symbol",
]

_PRECISION = 32
_FULL = 1 << _PRECISION
_HALF = _FULL >> 1
_QUARTER = _FULL >> 2
_THREE_QUARTERS = _HALF + _QUARTER
_MASK = _FULL - 1

MAX_TOTAL = _QUARTER
"""Largest cumulative-frequency total the coder accepts."""


class _BitWriter:
    """Packs bits MSB-first into bytes."""

    def __init__(self) -> None:
        self._out = bytearray()
        self._acc = 0
        self._n = 0

    def write(self, bit: int, repeat: int = 1) -> None:
        for _ in range(repeat):
            self._acc = (self._acc << 1) | bit
            self._n += 1
            if self._n == 8:
                self._out.append(self._acc)
                self._acc = 0
                self._n = 0

    def getvalue(self) -> bytes:
        out = bytearray(self._out)
        if self._n:
            out.append(self._acc << (8 - self._n))
        return bytes(out)


class ArithmeticEncoder:
    """Encodes a sequence of ``(low, high, total)`` intervals into bytes; call :meth:`finish` once at the end."""

    def __init__(self) -> None:
        self._low = 0
        self._high = _MASK
        self._pending = 0
        self._bits = _BitWriter()
        self._finished = False

    def _emit(self, bit: int) -> None:
        self._bits.write(bit)
        if self._pending:
            self._bits.write(bit ^ 1, self._pending)
            self._pending = 0

    def encode(self, low: int, high: int, total: int) -> None:
        """Narrow the interval to the symbol owning ``[low, high)`` of ``total``."""
        assert not self._finished, "encoder already finished"
        assert 0 <= low < high <= total <= MAX_TOTAL, (low, high, total)
        span = self._high - self._low + 1
        self._high = self._low + span * high // total - 1
        self._low = self._low + span * low // total
        while True:
            if self._high < _HALF:
                self._emit(0)
            elif self._low >= _HALF:
                self._emit(1)
                self._low -= _HALF
                self._high -= _HALF
            elif self._low >= _QUARTER and self._high < _THREE_QUARTERS:
                # underflow: the interval straddles the midpoint; decide the bit later
                self._pending += 1
                self._low -= _QUARTER
                self._high -= _QUARTER
            else:
                break
            self._low <<= 1
            self._high = (self._high << 1) | 1

    def finish(self) -> bytes:
        """Flush enough bits to pin a value inside the final interval and return the code."""
        if not self._finished:
            self._finished = True
            self._pending += 1
            self._emit(0 if self._low < _QUARTER else 1)
        return self._bits.getvalue().rstrip(b"\x00")


class ArithmeticDecoder:
    """Decodes what :class:`ArithmeticEncoder` wrote, given the same sequence of frequency tables."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0  # next bit to read
        self._low = 0
        self._high = _MASK
        self._value = 0
        for _ in range(_PRECISION):
            self._value = (self._value << 1) | self._next_bit()

    def _next_bit(self) -> int:
        byte_index = self._pos >> 3
        bit = 0
        if byte_index < len(self._data):
            bit = (self._data[byte_index] >> (7 - (self._pos & 7))) & 1
        self._pos += 1
        return bit

    @property
    def bits_read(self) -> int:
        """Bits consumed so far, counting the zero bits implied past the end of the data."""
        return self._pos

    def target(self, total: int) -> int:
        """The cumulative count in ``[0, total)`` that the next symbol's interval contains."""
        span = self._high - self._low + 1
        return ((self._value - self._low + 1) * total - 1) // span

    def consume(self, low: int, high: int, total: int) -> None:
        """Advance past the symbol owning ``[low, high)`` of ``total`` (the one :meth:`target` pointed into)."""
        span = self._high - self._low + 1
        self._high = self._low + span * high // total - 1
        self._low = self._low + span * low // total
        while True:
            if self._high < _HALF:
                pass
            elif self._low >= _HALF:
                self._low -= _HALF
                self._high -= _HALF
                self._value -= _HALF
            elif self._low >= _QUARTER and self._high < _THREE_QUARTERS:
                self._low -= _QUARTER
                self._high -= _QUARTER
                self._value -= _QUARTER
            else:
                break
            self._low <<= 1
            self._high = (self._high << 1) | 1
            self._value = (self._value << 1) | self._next_bit()


def find_symbol(cumulative: np.ndarray, target: int) -> int:
    """The symbol ``s`` with ``cumulative[s] <= target < cumulative[s + 1]``."""
    return int(np.searchsorted(cumulative, target, side="right")) - 1
