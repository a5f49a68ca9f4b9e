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
from typing import TypeVar

import pyarrow as pa

from federation.errors import DeltaError

__all__ = ["PROTOCOL_VERSION", "SyncReply", "SyncRequest", "Ticket", "batch_bytes", "schema_bytes"]

PROTOCOL_VERSION = 1
MODES = ("delta", "full")


_M = TypeVar("_M", bound="_JsonMessage")


class _JsonMessage:
    """A dataclass sent as canonical JSON (sorted keys, no spaces); unknown keys from newer peers are ignored."""

    def to_bytes(self) -> bytes:
        """The message bytes."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls: type[_M], raw: bytes) -> _M:
        """Parse message bytes (raises DeltaError naming the message when malformed)."""
        try:
            data = json.loads(raw)
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, DeltaError):
                raise
            raise DeltaError(f"malformed {cls.__name__} message ({exc}); see docs/federation_protocol.md") from exc


@dataclass(frozen=True)
class SyncRequest(_JsonMessage):
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


@dataclass(frozen=True)
class SyncReply(_JsonMessage):
    """The server's last message: ``status`` ``ok`` (the batches before it are the merged update) or
    ``full_sync_required`` (no batches; fetch the current card with ``do_get``)."""

    status: str
    version: int
    checksum: str
    contributors: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Ticket(_JsonMessage):
    """A ``do_get`` ticket: one version of one adapter (None: the current one)."""

    adapter: str
    version: int | None = None


def batch_bytes(batch: pa.RecordBatch) -> int:
    """Bytes of ``batch`` as one IPC message (header, body and padding)."""
    return int(pa.ipc.get_record_batch_size(batch))


def schema_bytes(schema: pa.Schema) -> int:
    """Bytes of the schema message that opens a stream."""
    return int(schema.serialize().size)
