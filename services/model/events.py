"""Publishing the registry's events: an outbox relay onto the bus.

A change and its event are committed in one SQLite transaction (the ``outbox`` table,
see :mod:`services.model.store`); :class:`OutboxRelay` publishes the entries in order as
``agentforge.events.v1.Event`` envelopes (``model_version_created``, ``alias_moved``) and
deletes each once Redis accepted it. An event is never lost when Redis is down or the
process dies between commit and publish; it may be published twice (same event id), which
consumers drop by id.
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf.timestamp_pb2 import Timestamp

from agentforge.events.v1 import event_pb2
from agentforge.model.v1 import model_version_pb2
from services.model.convert import version_to_proto
from services.model.store import OutboxEntry, Registry
from services.shared.bus import EventBus
from services.shared.errors import NotFound

__all__ = ["OutboxRelay", "build_event"]

_log = logging.getLogger(__name__)
SOURCE = "model"


async def build_event(store: Registry, entry: OutboxEntry) -> event_pb2.Event:
    """The envelope of one outbox entry (a created version is sent as it is now)."""
    time = Timestamp()
    time.FromMicroseconds(entry.create_time)
    event = event_pb2.Event(id=entry.event_id, source=SOURCE, time=time, subject=entry.subject)
    data = entry.data
    if data.get("traceparent"):  # the span that made the change (services.model.store)
        event.trace_context.traceparent = data["traceparent"]
    if entry.kind == "version_created":
        try:
            version = version_to_proto(await store.get_version(data["model_id"], int(data["version"])))
        except NotFound:  # deleted before we got to publish it
            version = model_version_pb2.ModelVersion(name=entry.subject)
        event.model_version_created.model_version.CopyFrom(version)
        event.type = event_pb2.ModelVersionCreated.DESCRIPTOR.full_name
    elif entry.kind == "alias_moved":
        event.alias_moved.CopyFrom(event_pb2.AliasMoved(
            model=f"models/{data['model_id']}", alias=data["alias"],
            from_version="" if data.get("from") is None else str(data["from"]),
            to_version="" if data.get("to") is None else str(data["to"])))
        event.type = event_pb2.AliasMoved.DESCRIPTOR.full_name
    else:
        raise ValueError(f"unknown outbox kind {entry.kind!r}")
    return event


class OutboxRelay:
    """Drains the outbox onto ``stream``; :meth:`notify` (thread-safe) wakes it."""

    def __init__(self, store: Registry, bus: EventBus, stream: str, *, poll_s: float = 1.0) -> None:
        self._store = store
        self._bus = bus
        self._stream = stream
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def notify(self) -> None:
        """Safe from any thread (the store calls it from its worker thread)."""
        self._loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> int:
        """Publish everything pending now; returns how many were published."""
        sent = 0
        while entries := await self._store.pending_events():
            for entry in entries:
                event = await build_event(self._store, entry)
                await self._bus.publish(self._stream, event, subject=entry.subject, event_id=entry.event_id,
                                        trace_context=event.trace_context.traceparent or None)
                await self._store.ack_event(entry.id)
                sent += 1
        return sent

    async def run(self) -> None:
        """Relay until cancelled; failures are logged and retried on the next wake/poll."""
        while True:
            self._wake.clear()
            try:
                await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep relaying; the entries stay in the outbox
                _log.exception("outbox relay: publish failed; retrying")
            try:
                await asyncio.wait_for(self._wake.wait(), self._poll_s)
            except TimeoutError:
                pass
