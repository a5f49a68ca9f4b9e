"""``SyncServer``: the Arrow Flight endpoint nodes sync LoRA adapters through (docs/federation_protocol.md).

* ``do_exchange``: a node streams its update (a delta, or its whole card for a full sync) made on a base
  version; the server checks it completely (checksums, parts, shapes, NaN / Inf, size limits, the commit
  message) before anything changes, adds it to the round (``RoundAggregator``) and streams the merged update
  back. A stale base (R5.8) or a delta that fails (damaged in transit, or made against another card of the
  same version; R5.6) gets ``full_sync_required`` and no change; an invalid update (NaN / Inf, wrong shape,
  oversized) is refused with a Flight error and no change.
* ``do_get`` / ``do_put`` / ``list_flights``: whole cards.
* Bearer-token middleware (``federation.auth``) and TLS when a certificate is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight
import torch

from federation.aggregate import RoundAggregator, RoundResult
from federation.auth import TokenMiddlewareFactory
from federation.card import LoRACard
from federation.delta import DeltaConfig, decode_delta
from federation.errors import BaseVersionMismatchError, DeltaIntegrityError, FederationError
from federation.protocol import SyncReply, SyncRequest, Ticket, batch_bytes, schema_bytes
from federation.store import CardStore
from federation.synclog import SyncLog, SyncRecord
from federation.wire import WireLimits, card_batches, card_from_batches, card_schema, delta_batches, delta_from_batches

__all__ = ["ServerConfig", "SyncServer"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """Settings of a :class:`SyncServer`.

    ``max_message_bytes`` bounds one incoming IPC message (gRPC's own default is 4 MiB, so cards are cut into
    batches well below it); ``max_stream_bytes`` one whole incoming stream. ``round_size`` nodes make a round
    (``round_timeout_s`` closes it with fewer). ``broadcast`` encodes the merged update sent back.
    """

    root: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    tls_cert: str | os.PathLike[str] | None = None
    tls_key: str | os.PathLike[str] | None = None
    round_size: int = 1
    round_timeout_s: float = 30.0
    max_message_bytes: int = 4 << 20
    max_stream_bytes: int = 512 << 20
    broadcast: DeltaConfig = field(default_factory=lambda: DeltaConfig(method="dense"))
    limits: WireLimits = field(default_factory=WireLimits)

    @property
    def location(self) -> str:
        """The URI the server binds (port 0: any free port)."""
        scheme = "grpc+tls" if self.tls_cert else "grpc+tcp"
        return f"{scheme}://{self.host}:{self.port}"


def _committed(metadata: list[bytes], batches: list[pa.RecordBatch]) -> bool:
    """True when the last metadata message commits exactly the batches received."""
    try:
        last = json.loads(metadata[-1]) if metadata else None
    except ValueError:
        return False
    return isinstance(last, dict) and last.get("commit") is True and last.get("batches") == len(batches)


def _reject(message: str) -> flight.FlightServerError:
    logger.warning("sync server: rejected: %s", message)
    return flight.FlightServerError(f"rejected: {message}; the server's adapter is unchanged")


class SyncServer(flight.FlightServerBase):
    """The sync endpoint over ``config.root`` (a :class:`CardStore`); ``serve()`` blocks, ``shutdown()`` stops."""

    def __init__(self, config: ServerConfig) -> None:
        tls = None
        if config.tls_cert:
            tls = [flight.CertKeyPair(cert=Path(config.tls_cert).read_bytes(), key=Path(config.tls_key).read_bytes())]
        middleware = {"auth": TokenMiddlewareFactory(config.token)} if config.token else None
        super().__init__(config.location, tls_certificates=tls, middleware=middleware)
        self.config = config
        self.store = CardStore(config.root)
        self.aggregator = RoundAggregator(self.store, round_size=config.round_size,
                                          round_timeout_s=config.round_timeout_s, broadcast=config.broadcast)
        self.log = SyncLog(Path(config.root) / "_synclog")
        logger.info("sync server on %s (tls=%s, token=%s, round of %d)", self.location, bool(tls),
                    bool(config.token), config.round_size)

    @property
    def location(self) -> str:
        """The URI clients connect to (with the bound port)."""
        scheme = "grpc+tls" if self.config.tls_cert else "grpc+tcp"
        return f"{scheme}://{self.config.host}:{self.port}"

    # ------------------------------------------------------------------ reading with limits
    def _read_stream(self, reader: Any) -> tuple[pa.Schema, list[pa.RecordBatch], list[bytes], int, int]:
        """Every batch and metadata message of an incoming stream, refused past the size limits. Returns the
        schema, batches, metadata, bytes (IPC message sizes) and Flight's own count of IPC messages read."""
        try:
            schema = reader.schema
        except (OSError, pa.ArrowException) as exc:  # a stream of metadata only: Flight has no schema to give
            raise _reject("the stream has no schema message; begin it with the delta or card stream schema") from exc
        batches, metadata = [], []
        total = schema_bytes(schema)
        while True:
            try:
                chunk = reader.read_chunk()
            except StopIteration:
                break
            if chunk.data is not None:
                size = batch_bytes(chunk.data)
                if size > self.config.max_message_bytes:
                    raise _reject(f"a message of {size} bytes exceeds the server's limit of "
                                  f"{self.config.max_message_bytes} bytes; split the stream into smaller batches")
                total += size
                batches.append(chunk.data)
            if chunk.app_metadata is not None:
                total += chunk.app_metadata.size
                metadata.append(chunk.app_metadata.to_pybytes())
            if total > self.config.max_stream_bytes:
                raise _reject(f"the stream exceeds the server's limit of {self.config.max_stream_bytes} bytes")
        return schema, batches, metadata, total, reader.stats.num_messages

    # ------------------------------------------------------------------ exchange: sync
    def do_exchange(self, context: Any, descriptor: flight.FlightDescriptor, reader: Any, writer: Any) -> None:
        """One sync round trip; see the module docstring and docs/federation_protocol.md."""
        started = time.perf_counter()
        try:
            request = SyncRequest.from_bytes(descriptor.command or b"")
            base = self.store.current(request.adapter)
        except FederationError as exc:
            raise _reject(str(exc)) from exc
        schema, batches, metadata, received, messages_in = self._read_stream(reader)
        if not _committed(metadata, batches):
            raise _reject(f"the stream of {len(batches)} batches did not end with its commit message "
                          f'{{"batches":{len(batches)},"commit":true}} (cut short?)')
        sent = 0
        record = dict(role="server", node=request.node, adapter=request.adapter, op="sync", method=request.mode,
                      base_version=request.base_version)
        error = ""
        if request.base_version != base.meta.version:  # R5.8: the node trained on an old version
            reply = SyncReply("full_sync_required", base.meta.version, base.checksum,
                              reason=f"base version {request.base_version} is not current ({base.meta.version})")
        else:
            try:
                tensors = self._contribution(request, base, schema, batches)
            except (BaseVersionMismatchError, DeltaIntegrityError) as exc:  # R5.6: the delta failed, nothing changed
                tensors, error = None, str(exc)
                reply = SyncReply("full_sync_required", base.meta.version, base.checksum,
                                  reason=f"the delta failed: {exc}")
                logger.warning("sync server: %s's delta of %s failed (%s); asked for a full sync", request.node,
                               request.adapter, exc)
            except FederationError as exc:
                self._log(record, "rejected", None, received, 0, messages_in, 0, started, str(exc))
                raise _reject(str(exc)) from exc
            result = None if tensors is None else self.aggregator.submit(base, request.node, tensors,
                                                                         request.samples)
            if tensors is not None and result is None:
                current = self.store.current(request.adapter)
                reply = SyncReply("full_sync_required", current.meta.version, current.checksum,
                                  reason="the round closed before this update arrived")
            elif result is not None:
                out_schema, out = self._reply_batches(result, request.mode)
                writer.begin(out_schema)
                for batch in out:
                    writer.write_batch(batch)
                sent = schema_bytes(out_schema) + sum(batch_bytes(b) for b in out)
                reply = SyncReply("ok", result.card.meta.version, result.card.checksum, result.contributors)
        payload = reply.to_bytes()
        writer.write_metadata(pa.py_buffer(payload))
        # a writer never begun has no stats (pyarrow aborts on reading them): no IPC message was sent
        self._log(record, reply.status, reply.version, received, sent + len(payload), messages_in,
                  writer.stats.num_messages if sent else 0, started, error)

    def _reply_batches(self, result: RoundResult, mode: str) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        """The merged update as sent back: the round's delta (``mode="delta"``) or the new card."""
        if mode == "delta":
            return delta_batches(result.delta, self.config.limits)
        return card_batches(result.card, self.config.limits)

    def _contribution(self, request: SyncRequest, base: LoRACard, schema: pa.Schema,
                      batches: list[pa.RecordBatch]) -> dict[str, torch.Tensor]:
        """The node's card tensors, every check done (raises FederationError)."""
        from federation.errors import DeltaError

        if request.mode == "delta":
            changes = decode_delta(base, delta_from_batches(schema, batches))
            tensors = {n: base.tensors[n].float() + changes[n] for n in base.tensors}
        else:
            card = card_from_batches(schema, batches)
            if card.meta.base_checksum != base.meta.base_checksum:
                raise DeltaError(f"the card was trained on base {card.meta.base_checksum}, the server's adapter on "
                                 f"{base.meta.base_checksum}")
            if {n: tuple(t.shape) for n, t in card.tensors.items()} != {n: tuple(t.shape)
                                                                        for n, t in base.tensors.items()}:
                raise DeltaError("the card's tensor names or shapes differ from the server's adapter")
            tensors = {n: t.float() for n, t in card.tensors.items()}
        for name, t in tensors.items():
            if not bool(torch.isfinite(t).all()):
                raise DeltaError(f"{name}: the update holds NaN/Inf values")
        return tensors

    def _log(self, record: dict, status: str, new_version: int | None, received: int, sent: int, messages_in: int,
             messages_out: int, started: float, error: str = "") -> None:
        self.log.append(SyncRecord(**record, status=status, new_version=new_version, bytes_sent=sent,
                                   bytes_received=received, messages_sent=messages_out, messages_received=messages_in,
                                   seconds=time.perf_counter() - started, error=error))

    # ------------------------------------------------------------------ whole cards
    def list_flights(self, context: Any, criteria: bytes) -> Any:
        """One FlightInfo per adapter: the card schema (metadata: the card's meta) and a ticket for it."""
        for adapter in self.store.adapters():
            card = self.store.current(adapter)
            endpoint = flight.FlightEndpoint(Ticket(adapter, card.meta.version).to_bytes(), [])
            yield flight.FlightInfo(card_schema(card.meta), flight.FlightDescriptor.for_path(adapter), [endpoint],
                                    -1, card.nbytes)

    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> flight.FlightInfo:
        """The FlightInfo of the adapter named by a path descriptor."""
        adapter = descriptor.path[0].decode() if descriptor.path else ""
        try:
            card = self.store.current(adapter)
        except FederationError as exc:
            raise flight.FlightServerError(str(exc)) from exc
        endpoint = flight.FlightEndpoint(Ticket(adapter, card.meta.version).to_bytes(), [])
        return flight.FlightInfo(card_schema(card.meta), descriptor, [endpoint], -1, card.nbytes)

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        """Stream one card version (a full sync)."""
        started = time.perf_counter()
        try:
            request = Ticket.from_bytes(ticket.ticket)
            card = self.store.get(request.adapter, request.version)
        except FederationError as exc:
            raise flight.FlightServerError(str(exc)) from exc
        schema, batches = card_batches(card, self.config.limits)
        sent = schema_bytes(schema) + sum(batch_bytes(b) for b in batches)
        # RecordBatchStream writes after this returns; its message count is the schema and the batches
        self._log(dict(role="server", node="", adapter=request.adapter, op="pull", method="full",
                       base_version=None), "ok", card.meta.version, 0, sent, 0, 1 + len(batches), started)
        return flight.RecordBatchStream(pa.Table.from_batches(batches, schema=schema))

    def do_put(self, context: Any, descriptor: flight.FlightDescriptor, reader: Any, writer: Any) -> None:
        """Store a whole card as the adapter's next version (or its first)."""
        started = time.perf_counter()
        schema, batches, _meta, received, messages = self._read_stream(reader)
        try:
            card = card_from_batches(schema, batches)
            for name, t in card.tensors.items():
                if not bool(torch.isfinite(t).all()):
                    raise FederationError(f"{name}: the card holds NaN/Inf values")
        except FederationError as exc:
            raise _reject(str(exc)) from exc
        adapter = card.meta.adapter
        if adapter in self.store.adapters():  # a push replaces the adapter: it becomes the next version
            current = self.store.current(adapter).meta
            if card.meta.base_checksum != current.base_checksum:
                raise _reject(f"adapter {adapter!r} was trained on base {current.base_checksum}, the pushed card on "
                              f"{card.meta.base_checksum}; push it under another adapter name")
            meta = dataclasses.replace(card.meta, version=current.version + 1, parent_version=current.version)
            card = LoRACard(meta, card.tensors)
            self.aggregator.reset_feedback(adapter)
        self.store.commit(card)
        self._log(dict(role="server", node="", adapter=adapter, op="push", method="full", base_version=None), "ok",
                  card.meta.version, received, 0, messages, 0, started)
