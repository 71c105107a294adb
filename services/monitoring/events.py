"""Publishing monitoring events on the bus without ever blocking the probes.

Events go into a bounded in-memory queue; one task publishes them in order with
:meth:`services.shared.bus.EventBus.publish`. While Valkey is down a publish gives up
after the bus's ``publish_timeout_s`` and the event is dropped (logged): health keeps
being tracked and served, and the next change is published once Valkey is back. When
the queue is full the oldest event is dropped.

Every event is an ``agentforge.events.v1.Event`` envelope: ``subject`` is the resource
(``components/valkey``, ``alerts/…``), ``sequence`` counts per subject from 1 within
this process (it restarts with the process; the bus's own per-subject ``seq`` and epoch
are the durable order).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable

from agentforge.common.v1 import common_pb2
from agentforge.events.v1 import event_pb2
from services.shared.bus import BusError, EventBus
from services.shared.tracing import current_traceparent

from services.monitoring.convert import timestamp

__all__ = ["EventPublisher"]

_log = logging.getLogger(__name__)


class EventPublisher:
    """Queue + one publishing task for ``Event`` envelopes."""

    def __init__(
        self,
        bus: EventBus,
        stream: str,
        *,
        source: str = "monitoring",
        capacity: int = 1000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._bus = bus
        self.stream = stream
        self._source = source
        self._clock = clock
        self._queue: asyncio.Queue[event_pb2.Event] = asyncio.Queue(capacity)
        self._sequences: dict[str, int] = {}
        self.published = 0
        self.dropped = 0

    def envelope(self, subject: str) -> event_pb2.Event:
        """A new envelope for ``subject`` with id, time, trace and sequence filled in."""
        seq = self._sequences.get(subject, 0) + 1
        self._sequences[subject] = seq
        return event_pb2.Event(
            id=uuid.uuid4().hex,
            source=self._source,
            time=timestamp(self._clock()),
            trace_context=common_pb2.TraceContext(traceparent=current_traceparent()),
            subject=subject,
            sequence=seq,
        )

    def submit(self, event: event_pb2.Event) -> None:
        """Queue an event (``type`` is filled from the payload); never blocks."""
        payload = event.WhichOneof("payload")
        if payload is not None:
            event.type = getattr(event, payload).DESCRIPTOR.full_name
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
            _log.warning("event queue full; dropped the oldest event")
        self._queue.put_nowait(event)

    async def run(self) -> None:
        while True:
            event = await self._queue.get()
            try:
                await self._bus.publish(
                    self.stream, event, subject=event.subject, event_id=event.id,
                    trace_context=event.trace_context.traceparent,
                )
                self.published += 1
            except (BusError, OSError) as exc:
                self.dropped += 1
                _log.warning("could not publish %s for %s: %s", event.type, event.subject, exc)
            except Exception:  # noqa: BLE001 - keep publishing later events
                self.dropped += 1
                _log.exception("publishing %s failed", event.type)
