"""Transactional outbox relay: events committed with a change reach the bus, at least once.

The pattern (https://microservices.io/patterns/data/transactional-outbox.html): a
store writes each event another service depends on into an ``outbox`` table in the
same transaction as the change it reports, so the change and its event are both
stored or neither is. :class:`OutboxRelay` then publishes the entries, oldest first,
onto one bus stream and deletes each once Redis accepted it. While Redis is away the
entries wait in the database (a restarted process finds them there too) and go out, in
order, once it is back; nothing is lost and nothing waits in memory.

Delivery is at least once: a relay that dies between the publish and the delete sends
that entry again on its next start, and a second process relaying the same database
may send an entry twice. Each entry is a serialized ``agentforge.events.v1.Event``
whose ``id`` is fixed when the entry is written, and it is published with that id, so
consumers drop duplicates by ``Event.id`` (the realtime bridge's ``publish_once``) or
are idempotent (the registry's hand-off: one version per checkpoint).

The store supplies two functions, so any store can have an outbox:

* ``pending(limit) -> [(entry id, Event bytes), ...]``, oldest first;
* ``ack(entry ids)``, which deletes them.

Both are called on the event loop's thread (they must be quick: a SQLite read or
delete), or through ``run`` (the store's
:class:`~services.shared.dbthread.DatabaseThread`, as the training and model services do), off it. The relay is woken by :meth:`OutboxRelay.notify` (thread-safe; stores call it
after a commit that added entries) and also polls every ``poll_s``, for entries written
by other processes (training workers).

Metrics (when a registry is given): ``agentforge_outbox_published_total{stream}``,
``agentforge_outbox_pending_entries{stream}`` (entries waiting).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from agentforge.events.v1 import event_pb2

from agentforge.client.retry import backoff_delay
from services.shared.bus import EventBus
from services.shared.errors import Unavailable, as_domain_error

__all__ = ["OutboxRelay"]

_log = logging.getLogger(__name__)


class OutboxRelay:
    """Publishes a store's outbox onto ``stream`` in order; see the module doc.

    Args:
        name: the relay's name in logs (e.g. ``"training"``).
        pending: the oldest entries, ``(id, serialized Event)``, at most ``limit``.
        ack: delete published entries by id.
        bus: where to publish (the service's own :class:`EventBus`).
        stream: the bus stream, e.g. ``events.training``.
        poll_s: seconds between passes when not woken (entries of other processes).
        publish_budget_s: how long one publish retries while Redis is unreachable before
            the pass gives up; the entry stays and the next pass tries again.
        max_backoff_s: longest wait between passes while Redis stays away.
        batch: entries read per query.
        size: how many entries wait now (for the gauge; read on scrape, from the metrics
            thread); without it the gauge shows what the last pass saw (at most ``batch``).
    """

    def __init__(self, name: str, *, pending: Callable[[int], Sequence[tuple[int, bytes]]],
                 ack: Callable[[Sequence[int]], None], bus: EventBus, stream: str, poll_s: float = 0.25,
                 publish_budget_s: float = 1.0, max_backoff_s: float = 2.0, batch: int = 100,
                 size: Callable[[], int] | None = None, registry: object | None = None,
                 run: Callable[..., Awaitable[Any]] | None = None) -> None:
        self.name = name
        #: How ``pending``/``ack`` are called: ``run(fn, *args)``, e.g. the store's
        #: :class:`~services.shared.dbthread.DatabaseThread`; None: on the loop.
        self._run = run
        self.stream = stream
        self._pending = pending
        self._ack = ack
        self._bus = bus
        self._poll_s = poll_s
        self._budget_s = publish_budget_s
        self._max_backoff_s = max(max_backoff_s, poll_s)
        self._batch = batch
        self._size = size
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[None] | None = None
        #: Entries published since start.
        self.published = 0
        #: Entries seen waiting at the start of the last pass.
        self.waiting = 0
        self._metrics: tuple[object, object] | None = None
        if registry is not None:
            self.bind_metrics(registry)

    def bind_metrics(self, registry: object) -> None:
        from prometheus_client import Counter, Gauge

        published = Counter("agentforge_outbox_published", "Outbox entries published to the bus.",
                            ("stream",), registry=registry)
        waiting = Gauge("agentforge_outbox_pending_entries",
                        "Outbox entries waiting to be published (at the relay's last pass).",
                        ("stream",), registry=registry)
        waiting.labels(self.stream).set_function(self._size or (lambda: self.waiting))
        self._metrics = (published.labels(self.stream), waiting)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args) if self._run is None else await self._run(fn, *args)

    def notify(self) -> None:
        """Wake the relay now; safe from any thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._wake.set)

    async def drain(self) -> int:
        """Publish everything pending now, oldest first; how many were published.

        Raises what the bus raised (``BusUnavailable`` while Redis is away): the entry
        that failed and all after it stay in the outbox.
        """
        sent = 0
        while entries := await self._call(self._pending, self._batch):
            if sent == 0:
                self.waiting = len(entries)
            for entry_id, data in entries:
                event = event_pb2.Event()
                event.ParseFromString(data)
                await self._bus.publish(self.stream, event, subject=event.subject, event_id=event.id,
                                        trace_context=event.trace_context.traceparent or None,
                                        budget_s=self._budget_s)
                await self._call(self._ack, [entry_id])
                sent += 1
                self.published += 1
                if self._metrics is not None:
                    self._metrics[0].inc()  # type: ignore[attr-defined]
        self.waiting = 0
        return sent

    async def run(self) -> None:
        """Relay until cancelled. Redis away: retried with backoff, logged once per outage."""
        wait = self._poll_s
        failed = 0  # passes failed in a row
        away = False
        while True:
            self._wake.clear()
            try:
                sent = await self.drain()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the entries stay; the next pass retries
                if isinstance(as_domain_error(exc), Unavailable):
                    if not away:
                        _log.warning("outbox %s: Redis unavailable (%r); %s event(s) wait in the outbox",
                                     self.name, exc, self.waiting or "some")
                    away = True
                else:
                    _log.exception("outbox %s: publish failed; retrying", self.name)
                failed += 1  # poll_s doubled per failed pass, up to max_backoff_s
                wait = backoff_delay(failed + 1, initial_s=self._poll_s, max_s=self._max_backoff_s, jitter=0.0)
            else:
                if away:
                    _log.info("outbox %s: Redis is back; published %d waiting event(s)", self.name, sent)
                away = False
                failed = 0
                wait = self._poll_s
            try:
                await asyncio.wait_for(self._wake.wait(), wait)
            except TimeoutError:
                pass

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name=f"outbox relay {self.name}")

    async def aclose(self) -> None:
        from services.shared.tasks import cancel_and_wait

        if self._task is not None:
            await cancel_and_wait([self._task])
            self._task = None
