"""A static context model of the store's own text, for coding short units (sentences, entities) compactly.

The semantic tier stores a summary of whole sentences plus an entity list in a few hundred bytes; zstd with a
dictionary compresses such payloads least, an LM arithmetic coder most but at tens of ms per token. This model
sits between: an order-``K`` byte model (interpolated Witten-Bell: ``p_k(c) = (n_k(c) + u_k p_{k-1}(c)) / (n_k +
u_k)``, ``u_k`` the number of distinct bytes seen after the context) trained once on the store's messages and
then frozen, driving the integer arithmetic coder of :mod:`memory.compression.arithmetic`. Measured ratios and
speed of the three: ``docs/benchmarks/design_figures.md`` and ``docs/compression.md``.

Each unit is coded with its context reset to a line start and ends with a newline, so a unit's code length does
not depend on its neighbours: a summary's size is the sum of its sentences' sizes (plus <= 4 bytes of coder
flush), which makes budgeted sentence selection exact and cheap (:meth:`ContextTextModel.unit_bits`).

Probabilities are float64 element-wise operations only (no reductions whose order could vary), then floored to
integer frequencies, so encoder and decoder compute identical tables on any IEEE-754 machine.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc
import xxhash

from memory.compression.arithmetic import ArithmeticDecoder, ArithmeticEncoder, find_symbol
from memory.compression.errors import CompressionError, CorruptPayloadError

__all__ = ["TEXT_MODEL_VERSION", "ContextTextModel"]

logger = logging.getLogger(__name__)

TEXT_MODEL_VERSION = 1
"""Bumped whenever the blending, the frequency quantisation or the unit framing changes."""

_TOTAL_BITS = 22
_BUDGET = (1 << _TOTAL_BITS) - 256  # every byte keeps frequency >= 1
_LINE = 0x0A
_CACHE_LIMIT = 200_000  # entries per cache (contexts' tables, units' code lengths)
_SCHEMA = pa.schema([("order", pa.uint8()), ("context", pa.binary()), ("symbols", pa.binary()),
                     ("counts", pa.list_(pa.uint32()))],
                    metadata={"arrowengine.text_model.version": str(TEXT_MODEL_VERSION)})


class ContextTextModel:
    """A frozen order-``order`` byte model with unit coding (see module docstring).

    Build one with :meth:`train`, persist it with :meth:`save` / :meth:`load`; ``checksum`` identifies it in
    the records it codes.
    """

    def __init__(self, order: int, tables: Sequence[dict[bytes, tuple[np.ndarray, np.ndarray]]]) -> None:
        if not 0 <= order <= 8 or len(tables) != order + 1:
            raise CompressionError(f"a text model needs 0 <= order <= 8 and order + 1 tables, got order {order} "
                                   f"and {len(tables)} tables")
        self.order = order
        # per context: (symbols int64, counts float64, total count, distinct symbols)
        self._tables = [{ctx: (syms.astype(np.int64), cnts.astype(np.float64), float(cnts.sum()), float(len(syms)))
                         for ctx, (syms, cnts) in table.items()} for table in tables]
        self._cumulative_cache: dict[bytes, np.ndarray] = {}
        self._unit_bits: dict[str, float] = {}
        self.checksum = f"text-model:{self._digest()}"

    @classmethod
    def train(cls, texts: Sequence[str], *, order: int = 4) -> ContextTextModel:
        """Count every byte after each context of length 0..``order`` in ``texts`` (each text a line)."""
        counts: list[dict[bytes, dict[int, int]]] = [{} for _ in range(order + 1)]
        total = 0
        for text in texts:
            for line in text.splitlines():
                data = b"\n" + line.encode("utf-8") + b"\n"
                total += len(data) - 2  # content bytes; blank lines still teach the end-of-unit byte
                for i in range(1, len(data)):
                    for k in range(min(order, i) + 1):
                        slot = counts[k].setdefault(data[i - k : i], {})
                        slot[data[i]] = slot.get(data[i], 0) + 1
        if total == 0:
            raise CompressionError("cannot train a text model on no text; give the store's messages")
        tables = [{ctx: (np.fromiter(slot, np.int64), np.fromiter(slot.values(), np.float64))
                   for ctx, slot in table.items()} for table in counts]
        logger.info("trained an order-%d text model on %d bytes (%d contexts)", order, total,
                    sum(len(t) for t in tables))
        return cls(order, tables)

    def _digest(self) -> str:
        h = xxhash.xxh3_64(f"v{TEXT_MODEL_VERSION}|order={self.order}".encode())
        for k, table in enumerate(self._tables):
            for ctx in sorted(table):
                syms, cnts, _, _ = table[ctx]
                h.update(bytes([k]) + len(ctx).to_bytes(1, "little") + ctx)
                h.update(syms.astype(np.uint8).tobytes() + cnts.astype(np.uint32).tobytes())
        return h.hexdigest()

    def _advance(self, history: bytes, byte: int) -> bytes:
        """The context after ``byte``: the last ``order`` bytes (all a table lookup reads)."""
        return (history + bytes([byte]))[-self.order :] if self.order else b""

    def _cumulative(self, history: bytes) -> np.ndarray:
        """Integer cumulative frequencies ``[257]`` of the byte after ``history`` (its last ``order`` bytes)."""
        key = history[-self.order :] if self.order else b""
        table = self._cumulative_cache.get(key)
        if table is not None:
            return table
        p = np.full(256, 1.0 / 256.0)
        for k in range(min(self.order, len(key)) + 1):
            entry = self._tables[k].get(key[len(key) - k :] if k else b"")
            if entry is None:  # an unseen context has no longer seen extension either
                break
            syms, cnts, n, distinct = entry
            p *= distinct
            p[syms] += cnts
            p /= n + distinct
        freq = np.floor(p * _BUDGET).astype(np.int64) + 1
        table = np.zeros(257, dtype=np.int64)
        np.cumsum(freq, out=table[1:])
        if len(self._cumulative_cache) < _CACHE_LIMIT:
            self._cumulative_cache[key] = table
        return table

    @staticmethod
    def _unit_bytes(unit: str) -> bytes:
        data = unit.encode("utf-8")
        if _LINE in data:
            raise CompressionError(f"a coded unit cannot hold a newline (it ends each unit): {unit[:40]!r}")
        return data + b"\n"

    def unit_bits(self, unit: str) -> float:
        """Exact code length in bits of ``unit`` (plus its newline) under this model's integer tables."""
        bits = self._unit_bits.get(unit)
        if bits is None:
            history, bits = b"\n", 0.0
            for byte in self._unit_bytes(unit):
                table = self._cumulative(history)
                bits += math.log2(float(table[-1]) / float(table[byte + 1] - table[byte]))
                history = self._advance(history, byte)
            if len(self._unit_bits) < _CACHE_LIMIT:  # a long-lived store sees ever new sentences
                self._unit_bits[unit] = bits
        return bits

    def estimate_bytes(self, units: Sequence[str]) -> int:
        """An upper bound of :meth:`encode_units`' length: summed unit code lengths plus the coder's flush."""
        return math.ceil(sum(self.unit_bits(u) for u in units) / 8.0) + 4

    def encode_units(self, units: Sequence[str]) -> bytes:
        """Arithmetic-code ``units`` (no newlines inside), each from a line-start context."""
        encoder = ArithmeticEncoder()
        for unit in units:
            history = b"\n"
            for byte in self._unit_bytes(unit):
                table = self._cumulative(history)
                encoder.encode(int(table[byte]), int(table[byte + 1]), int(table[-1]))
                history = self._advance(history, byte)
        return encoder.finish()

    def decode_units(self, payload: bytes, done: Callable[[list[str]], bool], *, max_bytes: int) -> list[str]:
        """Decode units until ``done(units)`` holds; more than ``max_bytes`` decoded bytes means corruption."""
        decoder = ArithmeticDecoder(payload)
        units: list[str] = []
        current, history, produced = bytearray(), b"\n", 0
        while not done(units):
            if produced > max_bytes:
                raise CorruptPayloadError(f"text-model payload of {len(payload)} bytes decodes past {max_bytes} "
                                          "bytes without its end marker: the payload is corrupted")
            table = self._cumulative(history)
            total = int(table[-1])
            byte = find_symbol(table, decoder.target(total))
            decoder.consume(int(table[byte]), int(table[byte + 1]), total)
            produced += 1
            if byte == _LINE:
                try:
                    units.append(current.decode("utf-8"))
                except UnicodeDecodeError:
                    raise CorruptPayloadError("text-model payload decodes to invalid UTF-8: the payload is "
                                              "corrupted or was coded with another model") from None
                current, history = bytearray(), b"\n"
            else:
                current.append(byte)
                history = self._advance(history, byte)
        return units

    # -- persistence ---------------------------------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """The counts as an Arrow table: one row per (order, context)."""
        rows = [(k, ctx, syms.astype(np.uint8).tobytes(), cnts.astype(np.uint32))
                for k, table in enumerate(self._tables) for ctx, (syms, cnts, _, _) in sorted(table.items())]
        order, ctx, syms, cnts = zip(*rows, strict=True) if rows else ((), (), (), ())
        schema = _SCHEMA.with_metadata({**_SCHEMA.metadata, b"arrowengine.text_model.order": str(self.order)})
        return pa.table([pa.array(order, pa.uint8()), pa.array(ctx, pa.binary()), pa.array(syms, pa.binary()),
                         pa.array([c.tolist() for c in cnts], pa.list_(pa.uint32()))], schema=schema)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> ContextTextModel:
        """Invert :meth:`to_arrow`; a table of another layout or version is refused."""
        metadata = table.schema.metadata or {}
        version = metadata.get(b"arrowengine.text_model.version")
        if version != str(TEXT_MODEL_VERSION).encode() or table.schema.remove_metadata() != _SCHEMA.remove_metadata():
            raise CompressionError(f"not a version-{TEXT_MODEL_VERSION} text model table (version {version!r}, "
                                   f"columns {table.schema.names}); retrain it with ContextTextModel.train")
        order_col = table.column("order").to_numpy()
        order = int(metadata.get(b"arrowengine.text_model.order", b"-1"))
        tables: list[dict[bytes, tuple[np.ndarray, np.ndarray]]] = [{} for _ in range(order + 1)]
        for k, ctx, syms, cnts in zip(order_col, table.column("context").to_pylist(),
                                      table.column("symbols").to_pylist(), table.column("counts").to_pylist(),
                                      strict=True):
            tables[int(k)][ctx] = (np.frombuffer(syms, np.uint8), np.asarray(cnts, np.float64))
        return cls(order, tables)

    def save(self, path: str | Path) -> Path:
        """Write the model as an Arrow IPC file."""
        path = Path(path)
        table = self.to_arrow()
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ContextTextModel:
        """Read a model written by :meth:`save`."""
        with pa.memory_map(str(path), "r") as source:
            return cls.from_arrow(pa.ipc.open_file(source).read_all())
