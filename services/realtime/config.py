"""Configuration of the realtime service, read from the environment.

Every knob is documented once on :class:`RealtimeConfig`. Server knobs (port, grace,
limits, logging) come from :class:`ServerConfig` (``AF_REALTIME_PORT`` …), the Redis
connection and reconnect behaviour from :class:`BusConfig` (``REDIS_URL``, ``AF_BUS_*``).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from services.shared.bus import BusConfig
from services.shared.config import ServerConfig, env_overrides

__all__ = ["DEFAULT_BRIDGE_ROUTES", "BridgeRoute", "RealtimeConfig", "parse_routes"]

SERVICE_NAME = "realtime"

#: Mesh streams republished to topics unless ``AF_REALTIME_BRIDGE_ROUTES`` says otherwise.
#: ``{subject}`` is the bus event's subject (e.g. ``trainingJobs/42``), ``{subject_id}``
#: its last segment.
DEFAULT_BRIDGE_ROUTES = (
    "events.training={subject},"
    "events.health=health,"
    "events.alerts=alerts,"
    "events.forge={subject},"
    "events.model={subject}"
)


@dataclass(frozen=True, slots=True)
class BridgeRoute:
    """Republish every event of bus stream ``stream`` to the topic ``template`` names."""

    stream: str
    template: str

    def topic_for(self, subject: str) -> str:
        return self.template.format(subject=subject, subject_id=subject.rpartition("/")[2])


def parse_routes(text: str) -> tuple[BridgeRoute, ...]:
    """``stream=template,stream=template`` → routes (empty text → none)."""
    routes = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        stream, sep, template = item.partition("=")
        if not sep or not stream.strip() or not template.strip():
            raise ValueError(f"bridge route must be stream=template: {item!r}")
        routes.append(BridgeRoute(stream.strip(), template.strip()))
    return tuple(routes)


@dataclass(frozen=True, slots=True)
class RealtimeConfig:
    """Everything the realtime service needs; ``from_env()`` reads ``AF_REALTIME_*``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    #: Redis connection (its ``maxlen`` is replaced by ``topic_maxlen``).
    bus: BusConfig = field(default_factory=BusConfig)
    #: Prefix of every Redis key the service owns (``AF_REALTIME_KEY_PREFIX``).
    key_prefix: str = "rt:"
    #: Messages retained per topic for replay, ``XADD MAXLEN ~`` (``AF_REALTIME_TOPIC_MAXLEN``).
    topic_maxlen: int = 1000
    #: Largest serialized ``payload``/``data`` accepted by Publish, in bytes.
    max_message_bytes: int = 1024 * 1024
    #: Entries buffered per subscriber by the fan-out; a subscriber this far behind is
    #: ended with RESOURCE_EXHAUSTED (``AF_REALTIME_QUEUE_SIZE``).
    queue_size: int = 1000
    #: ... and at most this many bytes of message data (``AF_REALTIME_QUEUE_BYTES``):
    #: what one stalled subscriber can keep alive is bounded whatever the message size.
    queue_bytes: int = 16 * 1024 * 1024
    #: Fan-out reader connections, each following its share of the subscribed topic
    #: streams with one XREAD BLOCK (``AF_REALTIME_FANOUT_READERS``).
    fanout_readers: int = 2
    #: Pooled connections for the subscriptions' short catch-up reads
    #: (``AF_REALTIME_WATCH_CONNECTIONS``); unary calls have the bus's own pool.
    watch_connections: int = 16
    #: Heartbeat interval when the request sets none (s).
    default_heartbeat_s: float = 15.0
    #: Unused since subscriptions are fed by the fan-out (its readers block for the
    #: bus's ``block_ms``); kept so existing ``AF_REALTIME_BLOCK_MS`` settings still parse.
    block_ms: int = 500
    #: How often pattern subscriptions re-scan the topic registry (s). Only a safety
    #: net: new topics are announced on the store's ``topics.created`` stream, which
    #: pattern subscriptions follow through the fan-out (and they rescan at once after
    #: a gap in it, e.g. a Redis reconnect).
    rescan_interval_s: float = 60.0
    #: How often the fan-out compares the followed topics' epochs with the store (s;
    #: one MGET per reader), to notice a restarted store on idle topics.
    epoch_check_interval_s: float = 1.0
    #: Per-instance subscriber counts expire this long after the instance stops (s).
    presence_ttl_s: float = 30.0
    #: How long a Publish ``request_id`` is remembered (s).
    idempotency_ttl_s: int = 24 * 3600
    #: Id of this process in the subscriber-count hash.
    instance_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    #: Bus streams republished to topics (``AF_REALTIME_BRIDGE_ROUTES``, ``""`` = none).
    bridge_routes: tuple[BridgeRoute, ...] = parse_routes(DEFAULT_BRIDGE_ROUTES)
    #: Consumer group of the bridge (one delivery per event across instances).
    bridge_group: str = "realtime-bridge"

    def __post_init__(self) -> None:
        if self.queue_size < 1:
            raise ValueError("queue_size must be >= 1")
        if self.topic_maxlen < 1:
            raise ValueError("topic_maxlen must be >= 1")

    @property
    def topic_bus(self) -> BusConfig:
        """The bus config used for topic streams (retention = ``topic_maxlen``)."""
        return replace(self.bus, maxlen=self.topic_maxlen)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RealtimeConfig:
        environ = os.environ if env is None else env
        values = env_overrides(cls, SERVICE_NAME, environ)
        routes_raw = environ.get("AF_REALTIME_BRIDGE_ROUTES")
        if routes_raw is not None:
            values["bridge_routes"] = parse_routes(routes_raw)
        return cls(
            server=ServerConfig.from_env(SERVICE_NAME, environ),
            bus=BusConfig.from_env(environ),
            **values,
        )
