"""The messages of the sync protocol besides the record batches (docs/federation_protocol.md is the spec).

* ``do_exchange`` descriptor: ``FlightDescriptor.for_command`` of :class:`SyncRequest` as JSON.
* The client ends its stream with one ``app_metadata`` message ``{"commit": true, "batches": N}``; without it
  the server treats the stream as cut short and changes nothing.
* The server ends its reply with one ``app_metadata`` message, the :class:`SyncReply` JSON.
* ``do_get`` ticket: ``{"adapter": name, "version": int or null}`` as JSON.
* Byte counts are IPC message sizes (``pa.ipc.get_record_batch_size``, the serialized schema, the metadata):
  what Flight puts in its data frames, without gRPC / HTTP/2 framing.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pyarrow as pa

from federation.errors import DeltaError

__all__ = ["PROTOCOL_VERSION", "SyncReply", "SyncRequest", "Ticket", "batch_bytes", "schema_bytes"]

PROTOCOL_VERSION = 1
MODES = ("delta", "full")


def _json(obj: object) -> bytes:
    return json.dumps(dataclasses.asdict(obj), sort_keys=True, separators=(",", ":")).encode()


def _parse(cls: type, raw: bytes, what: str):
    try:
        data = json.loads(raw)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
    except (TypeError, ValueError) as exc:
        raise DeltaError(f"malformed {what} ({exc}); see docs/federation_protocol.md") from exc


@dataclass(frozen=True)
class SyncRequest:
    """What a node asks of ``do_exchange``: merge my ``mode`` update of ``adapter`` made on ``base_version``."""

    node: str
    adapter: str
    base_version: int
    mode: str = "delta"
    samples: int = 1
    op: str = "sync"
    protocol: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if self.mode not in MODES or self.op != "sync" or self.samples < 1 or not self.node:
            raise DeltaError(f"sync request: mode must be one of {list(MODES)} (got {self.mode!r}), op 'sync' (got "
                             f"{self.op!r}), samples >= 1 (got {self.samples}), node non-empty")
        if self.protocol != PROTOCOL_VERSION:
            raise DeltaError(f"sync protocol {self.protocol} is not spoken here (server: {PROTOCOL_VERSION})")

    def to_bytes(self) -> bytes:
        """The descriptor command."""
        return _json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SyncRequest:
        """Parse a descriptor command."""
        return _parse(cls, raw, "sync request")


@dataclass(frozen=True)
class SyncReply:
    """The server's last message: ``status`` ``ok`` (the batches before it are the merged update) or
    ``full_sync_required`` (no batches; fetch the current card with ``do_get``)."""

    status: str
    version: int
    checksum: str
    contributors: int = 0
    reason: str = ""

    def to_bytes(self) -> bytes:
        """The app_metadata bytes."""
        return _json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> SyncReply:
        """Parse the app_metadata bytes."""
        return _parse(cls, raw, "sync reply")


@dataclass(frozen=True)
class Ticket:
    """A ``do_get`` ticket: one version of one adapter (None: the current one)."""

    adapter: str
    version: int | None = None

    def to_bytes(self) -> bytes:
        """The ticket bytes."""
        return _json(self)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Ticket:
        """Parse ticket bytes."""
        return _parse(cls, raw, "ticket")


def batch_bytes(batch: pa.RecordBatch) -> int:
    """Bytes of ``batch`` as one IPC message (header, body and padding)."""
    return int(pa.ipc.get_record_batch_size(batch))


def schema_bytes(schema: pa.Schema) -> int:
    """Bytes of the schema message that opens a stream."""
    return int(schema.serialize().size)
