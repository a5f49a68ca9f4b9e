"""``SyncClient``: one node's side of the sync protocol (push, pull, list, and ``sync`` over DoExchange).

Every call is recorded in the node's :class:`SyncLog` when one is given (bytes from the IPC messages written
and read, Flight's message counts, seconds, method, versions). Flight errors become federation errors whose
message says what to do: ``SyncRejectedError`` (the server refused: token, invalid update, size) and
``SyncUnavailableError`` (cannot connect: down, wrong address, TLS mismatch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.flight as flight

from federation.auth import auth_headers
from federation.card import CardMeta, LoRACard
from federation.delta import DeltaConfig, ErrorFeedback, apply_delta, encode_delta
from federation.errors import DeltaError, FederationError, SyncRejectedError, SyncUnavailableError
from federation.protocol import SyncReply, SyncRequest, Ticket, batch_bytes, schema_bytes
from federation.synclog import SyncLog, SyncRecord
from federation.wire import META_KIND, WireLimits, card_batches, card_from_batches, delta_batches, delta_from_batches

__all__ = ["ClientConfig", "SyncClient", "SyncResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClientConfig:
    """Where and how a node connects. ``tls_root_cert``: the CA (or self-signed) certificate to trust for a
    ``grpc+tls://`` location. ``max_message_bytes`` sets gRPC's send / receive limits (its receive default of
    4 MiB is a known trap); ``timeout_s`` bounds each call."""

    location: str
    node: str = "node"
    token: str | None = None
    tls_root_cert: str | os.PathLike[str] | None = None
    max_message_bytes: int = 64 << 20
    timeout_s: float = 120.0
    delta: DeltaConfig = field(default_factory=lambda: DeltaConfig(method="topk_int8"))
    limits: WireLimits = field(default_factory=WireLimits)


@dataclass(frozen=True)
class SyncResult:
    """The outcome of :meth:`SyncClient.sync`: the node's new base card (equal to the server's), how it got it
    and the bytes moved (every exchange and pull of the call, fallbacks included).

    ``status`` is ``ok`` (the merged update, as asked) or ``full_sync`` (a fallback ran). ``fallback`` says which:
    ``full_update`` (the delta failed on the server, R5.6: the whole card was sent instead and the merged card
    received whole) or ``pull`` (the base was stale, R5.8, or an update failed on receipt: the node's update is
    dropped and the current card fetched); ``reason`` says why.
    """

    card: LoRACard
    status: str
    bytes_sent: int
    bytes_received: int
    seconds: float
    fallback: str = ""
    reason: str = ""


class _Counter:
    """Bytes (IPC message sizes) and messages (Flight's own ``stats.num_messages``) of one call."""

    def __init__(self) -> None:
        self.sent = self.received = self.messages_sent = self.messages_received = 0

    def add(self, other: _Counter) -> None:
        self.sent += other.sent
        self.received += other.received
        self.messages_sent += other.messages_sent
        self.messages_received += other.messages_received


class SyncClient:
    """A connection to one sync server."""

    def __init__(self, config: ClientConfig, log: SyncLog | None = None) -> None:
        self.config = config
        self.log = log
        kwargs: dict[str, Any] = {"generic_options": [("grpc.max_receive_message_length", config.max_message_bytes),
                                                      ("grpc.max_send_message_length", config.max_message_bytes)]}
        if config.tls_root_cert:
            kwargs["tls_root_certs"] = Path(config.tls_root_cert).read_bytes()
        self._client = flight.FlightClient(config.location, **kwargs)
        self._options = flight.FlightCallOptions(headers=auth_headers(config.token), timeout=config.timeout_s)

    def close(self) -> None:
        """Close the connection."""
        self._client.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ errors and records
    @contextlib.contextmanager
    def _call(self, op: str, adapter: str, method: str, base_version: int | None) -> Iterator[dict[str, Any]]:
        started, counter = time.perf_counter(), _Counter()
        state: dict[str, Any] = {"status": "ok", "new_version": None, "counter": counter, "error": ""}
        error = ""
        try:
            yield state
        except flight.FlightUnauthenticatedError as exc:
            state["status"], error = "rejected", str(exc)
            raise SyncRejectedError(f"{self.config.location} refused the call: {_short(exc)}") from exc
        except flight.FlightUnavailableError as exc:
            state["status"], error = "error", str(exc)
            hint = ("; the server may require TLS (use grpc+tls:// and its certificate)"
                    if self.config.location.startswith("grpc+tcp") else
                    "; check the certificate (tls_root_cert) and that the server offers TLS")
            raise SyncUnavailableError(f"cannot reach the sync server at {self.config.location}: {_short(exc)}"
                                       f"{hint}") from exc
        except flight.FlightCancelledError as exc:  # gRPC cancels a call whose message is over the receive limit
            state["status"], error = "error", str(exc)
            raise SyncRejectedError(
                f"{op} of {adapter!r} was cancelled by gRPC: usually a message over this client's limit of "
                f"{self.config.max_message_bytes} bytes; raise ClientConfig.max_message_bytes (gRPC's default is "
                f"4 MiB) or have the server send smaller batches (WireLimits)") from exc
        except flight.FlightError as exc:
            state["status"], error = "rejected", str(exc)
            raise SyncRejectedError(f"the sync server refused {op} of {adapter!r}: {_short(exc)}") from exc
        except FederationError as exc:
            state["status"], error = "error", str(exc)
            raise
        finally:
            if self.log is not None:
                self.log.append(SyncRecord(
                    role="client", node=self.config.node, adapter=adapter, op=op, method=method,
                    status=state["status"], base_version=base_version, new_version=state["new_version"],
                    bytes_sent=counter.sent, bytes_received=counter.received, messages_sent=counter.messages_sent,
                    messages_received=counter.messages_received, seconds=time.perf_counter() - started,
                    error=error or state["error"]))

    # ------------------------------------------------------------------ whole cards
    def list_cards(self) -> list[CardMeta]:
        """The metadata of every adapter on the server (current versions)."""
        with self._call("list", "*", "full", None):
            infos = list(self._client.list_flights(options=self._options))
        return [CardMeta.from_json(info.schema.metadata[b"federation.card"]) for info in infos]

    def pull(self, adapter: str, version: int | None = None) -> LoRACard:
        """Fetch a card (a full sync) through ``do_get``."""
        return self._pull(adapter, version)[0]

    def _pull(self, adapter: str, version: int | None) -> tuple[LoRACard, _Counter]:
        with self._call("pull", adapter, "full", None) as state:
            reader = self._client.do_get(flight.Ticket(Ticket(adapter, version).to_bytes()), options=self._options)
            schema, batches = _read_all(reader, state["counter"])
            card = card_from_batches(schema, batches)
            state["new_version"] = card.meta.version
        return card, state["counter"]

    def push(self, card: LoRACard) -> None:
        """Store ``card`` on the server through ``do_put`` (the adapter's first or next version)."""
        with self._call("push", card.meta.adapter, "full", card.meta.version) as state:
            schema, batches = card_batches(card, self.config.limits)
            writer, _ = self._client.do_put(flight.FlightDescriptor.for_path(card.meta.adapter), schema,
                                            options=self._options)
            _write_all(writer, batches, state["counter"], schema, begin=False)
            writer.done_writing()
            state["counter"].messages_sent = writer.stats.num_messages
            writer.close()

    # ------------------------------------------------------------------ sync
    def sync(self, local: LoRACard, base: LoRACard, *, samples: int = 1, mode: str = "delta",
             feedback: ErrorFeedback | None = None) -> SyncResult:
        """Send ``local`` (trained from ``base``, the last version this node got from the server) and return the
        merged version. ``mode="delta"`` sends ``encode_delta(base, local)`` (with ``feedback``'s residuals) and
        receives the merged delta; ``"full"`` sends and receives whole cards.

        Fallbacks (the result's status is then ``full_sync``; ``feedback`` is reset): a delta the server could
        not apply (damaged, or ``base`` is not the server's card of that version) is sent again as the whole card
        (R5.6) when ``base`` is the server's current card, else the current card is fetched; a stale ``base``
        (R5.8), or a merged update that fails here, gets the current card by ``do_get``."""
        started = time.perf_counter()
        totals = _Counter()
        outcome = self._exchange(local, base, samples, mode, feedback, totals)
        fallback, reason = "", ""
        if isinstance(outcome, SyncReply) and mode == "delta" and outcome.version == base.meta.version \
                and outcome.checksum == base.checksum:
            fallback, reason = "full_update", outcome.reason
            logger.warning("node %s: the server could not apply the delta (%s); sending the whole card",
                           self.config.node, reason)
            outcome = self._exchange(local, base, samples, "full", None, totals)
        if not isinstance(outcome, LoRACard):
            failed = outcome.reason if isinstance(outcome, SyncReply) else outcome
            fallback, reason = "pull", f"{reason}; then: {failed}" if reason else failed
            logger.warning("node %s: %s; fetching the current card of %s", self.config.node, failed,
                           base.meta.adapter)
            outcome, pulled = self._pull(base.meta.adapter, None)
            totals.add(pulled)
        if fallback and feedback is not None:
            feedback.reset()  # the residuals belong to deltas from a base this node no longer builds on
        return SyncResult(outcome, "full_sync" if fallback else "ok", totals.sent, totals.received,
                          time.perf_counter() - started, fallback, reason)

    def _update_batches(self, local: LoRACard, base: LoRACard, mode: str, feedback: ErrorFeedback | None
                        ) -> tuple[pa.Schema, list[pa.RecordBatch]]:
        """The stream a sync sends: ``encode_delta(base, local)`` (``mode="delta"``) or the whole ``local`` card."""
        if mode == "delta":
            delta = encode_delta(base, local, config=self.config.delta, feedback=feedback)
            return delta_batches(delta, self.config.limits)
        return card_batches(local, self.config.limits)

    def _exchange(self, local: LoRACard, base: LoRACard, samples: int, mode: str, feedback: ErrorFeedback | None,
                  totals: _Counter) -> LoRACard | SyncReply | str:
        """One ``do_exchange``: the merged card, the server's ``full_sync_required`` reply, or why the merged
        update failed here (a string)."""
        request = SyncRequest(self.config.node, base.meta.adapter, base.meta.version, mode, samples)
        with self._call("sync", base.meta.adapter, mode, base.meta.version) as state:
            counter = state["counter"]
            schema, batches = self._update_batches(local, base, mode, feedback)
            writer, reader = self._client.do_exchange(flight.FlightDescriptor.for_command(request.to_bytes()),
                                                      options=self._options)
            _write_all(writer, batches, counter, schema, begin=True)
            commit = f'{{"batches":{len(batches)},"commit":true}}'.encode()
            writer.write_metadata(pa.py_buffer(commit))
            counter.sent += len(commit)
            writer.done_writing()
            counter.messages_sent = writer.stats.num_messages
            reply, schema_in, batches_in = _read_reply(reader, counter)
            writer.close()
            state["status"], state["new_version"] = reply.status, reply.version
            outcome: LoRACard | SyncReply | str = reply
            if reply.status == "ok":
                try:
                    if mode == "delta":
                        card = apply_delta(base, delta_from_batches(schema_in, batches_in), version=reply.version)
                    else:
                        card = card_from_batches(schema_in, batches_in)
                    if card.checksum != reply.checksum:
                        raise DeltaError(f"the merged card's checksum {card.checksum} is not the server's "
                                         f"{reply.checksum}")
                    outcome = card
                except FederationError as exc:  # R5.6 on receipt: nothing was applied here, fetch the card
                    state["status"], state["error"] = "apply_failed", str(exc)
                    outcome = f"the merged update failed here: {exc}"
        totals.add(counter)
        return outcome


def _short(exc: Exception) -> str:
    # Flight appends gRPC debug context after the message; what the server said comes first
    text = str(exc).split(". gRPC client debug context")[0].split(". Detail:")[0]
    return text.splitlines()[0] if text else type(exc).__name__


def _write_all(writer: Any, batches: list[pa.RecordBatch], counter: _Counter, schema: pa.Schema, *,
               begin: bool) -> None:
    if begin:  # do_put's writer was opened with the schema already
        writer.begin(schema)
    counter.sent += schema_bytes(schema)
    for batch in batches:
        writer.write_batch(batch)
        counter.sent += batch_bytes(batch)


def _read_all(reader: Any, counter: _Counter) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    schema = reader.schema
    counter.received += schema_bytes(schema)
    batches = []
    for chunk in reader:
        if chunk.data is not None:
            batches.append(chunk.data)
            counter.received += batch_bytes(chunk.data)
    counter.messages_received = reader.stats.num_messages
    return schema, batches


def _read_reply(reader: Any, counter: _Counter) -> tuple[SyncReply, pa.Schema | None, list[pa.RecordBatch]]:
    schema, batches, reply = None, [], None
    while True:
        try:
            chunk = reader.read_chunk()
        except StopIteration:
            break
        if chunk.data is not None:
            batches.append(chunk.data)
            counter.received += batch_bytes(chunk.data)
        if chunk.app_metadata is not None:
            counter.received += chunk.app_metadata.size
            reply = SyncReply.from_bytes(chunk.app_metadata.to_pybytes())
    if reply is None:
        raise SyncRejectedError("the sync server closed the exchange without a reply; retry")
    if batches:  # without a schema message there are no stats to read (pyarrow aborts): no IPC message came
        counter.messages_received = reader.stats.num_messages
        schema = reader.schema
        counter.received += schema_bytes(schema)
    if reply.status == "ok" and (schema is None or (schema.metadata or {}).get(META_KIND.encode()) is None):
        raise SyncRejectedError("the sync reply says ok but carries no update; retry")
    return reply, schema, batches
