"""Republish mesh events from bus streams to topics, for dashboards.

Each :class:`BridgeRoute` names a source stream and a topic template. The bridge reads
every source with a consumer group (:meth:`EventBus.consume`: at-least-once, XACK,
NOGROUP recreated after a Redis restart; one group shared by all realtime instances,
so each event is bridged once) and publishes the event to the topic as a ``Message``
whose ``payload`` is the event packed as ``google.protobuf.Any``. Redeliveries are
dropped by the publish idempotency record keyed by the bus event id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agentforge.realtime.v1 import message_pb2
from services.realtime.config import BridgeRoute
from services.realtime.store import TopicStore
from services.realtime.topics import is_topic
from services.shared.bus import Envelope

__all__ = ["Bridge"]

log = logging.getLogger(__name__)


class Bridge:
    """Follows the configured source streams until :meth:`close`."""

    def __init__(self, store: TopicStore, routes: tuple[BridgeRoute, ...], *, group: str, consumer: str) -> None:
        self._store = store
        self._routes = routes
        self._group = group
        self._consumer = consumer
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for route in self._routes:
            self._tasks.append(asyncio.create_task(self._follow(route), name=f"realtime-bridge:{route.stream}"))

    async def close(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()

    async def _follow(self, route: BridgeRoute) -> None:
        async def handle(envelope: Envelope) -> None:
            await self.republish(route, envelope)

        while not self._stop.is_set():
            try:
                await self._store.bus.consume(route.stream, self._group, self._consumer, handle, stop=self._stop)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - keep bridging after unexpected Redis replies
                log.exception("realtime: bridge of %s failed; restarting", route.stream)
                await asyncio.sleep(1.0)

    async def republish(self, route: BridgeRoute, envelope: Envelope) -> None:
        """Publish one bus event to its topic (at most once per event id)."""
        try:
            topic = route.topic_for(envelope.subject)
        except (KeyError, IndexError, ValueError):
            topic = ""
        if not is_topic(topic):
            log.warning("realtime: bridge %s: no valid topic for subject %r (template %r); dropped",
                        route.stream, envelope.subject, route.template)
            return
        message = message_pb2.Message(topic=topic, publisher=f"bus:{route.stream}")
        message.payload.type_url = f"type.googleapis.com/{envelope.type}"
        message.payload.value = envelope.data
        message.publish_time.FromMilliseconds(envelope.time)
        await self._store.publish_once(message, f"bridge-{envelope.id}")
