"""``agentforge.realtime.v1.RealtimeService``: proto ↔ domain, errors → statuses.

Request messages were already checked by protovalidate (ValidationInterceptor); this
layer adds what the rules cannot say (cursor and page-token contents, the 1 MiB content
limit) and maps Redis trouble to UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import grpc.aio
from google.protobuf.timestamp_pb2 import Timestamp
from redis import exceptions as redis_errors

from agentforge.realtime.v1 import (
    message_pb2,
    realtime_service_pb2_grpc,
    request_response_pb2,
    topic_pb2,
)
from services.realtime.config import RealtimeConfig
from services.realtime.cursor import CursorError, decode_cursor, decode_page_token, encode_page_token
from services.realtime.store import IdempotencyConflict, TopicInfo, TopicStore, timestamp_ms
from services.realtime.subscription import Hub, SubscriptionSpec
from services.realtime.topics import TopicPattern, publish_role, resource_name, topic_from_name
from services.shared.authz import current_principal
from services.shared.bus import BusUnavailable
from services.shared.errors import Aborted, InvalidArgument, NotFound, PermissionDenied, as_domain_error

__all__ = ["PUBLISHER_METADATA_KEY", "RealtimeServicer"]

#: Optional metadata naming the publisher (a service name); "client" when absent.
PUBLISHER_METADATA_KEY = "x-agentforge-publisher"
_DEFAULT_PAGE_SIZE = 50


@contextlib.contextmanager
def _store_errors() -> Iterator[None]:
    """Redis unreachable, restarting or hung → UNAVAILABLE with the shared reason
    ``DEPENDENCY_UNAVAILABLE`` (:func:`services.shared.errors.as_domain_error`)."""
    try:
        yield
    except (BusUnavailable, redis_errors.ConnectionError, redis_errors.TimeoutError, ConnectionError) as exc:
        raise as_domain_error(exc) from exc


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _topic_proto(info: TopicInfo, subscribers: int) -> topic_pb2.Topic:
    topic = topic_pb2.Topic(
        name=resource_name(info.topic),
        topic=info.topic,
        subscriber_count=subscribers,
        message_count=info.message_count,
        retained_count=info.retained_count,
        first_retained_sequence=info.first_retained_seq,
        epoch=info.epoch,
    )
    if info.last_publish_ms is not None:
        topic.last_publish_time.CopyFrom(timestamp_ms(info.last_publish_ms))
    if info.create_time_ms is not None:
        topic.create_time.CopyFrom(timestamp_ms(info.create_time_ms))
    return topic


class RealtimeServicer(realtime_service_pb2_grpc.RealtimeServiceServicer):
    def __init__(self, store: TopicStore, hub: Hub, config: RealtimeConfig) -> None:
        self._store = store
        self._hub = hub
        self._config = config

    # -- Subscribe ----------------------------------------------------------------
    @staticmethod
    def _spec(request: request_response_pb2.SubscribeRequest) -> SubscriptionSpec:
        cursor = None
        if request.cursor:
            try:
                cursor = decode_cursor(request.cursor)
            except CursorError as exc:
                raise InvalidArgument(f"malformed cursor: {exc}", [("cursor", str(exc))]) from exc
        patterns = []
        for i, text in enumerate(request.topic_patterns):
            try:
                patterns.append(TopicPattern.parse(text))
            except ValueError as exc:
                raise InvalidArgument(str(exc), [(f"topic_patterns[{i}]", str(exc))]) from exc
        return SubscriptionSpec(
            topics=tuple(request.topics),
            patterns=tuple(patterns),
            cursor=cursor,
            from_beginning=request.from_beginning,
        )

    async def Subscribe(  # noqa: N802 - gRPC method name
        self, request: request_response_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        # Written with context.write() rather than as an async generator: a cancelled
        # call then cancels this coroutine at once (an abandoned generator would only be
        # finalized later, after the call is gone), so the subscription is released now.
        spec = self._spec(request)
        interval = (
            request.heartbeat_interval.ToTimedelta().total_seconds()
            if request.HasField("heartbeat_interval")
            else self._config.default_heartbeat_s
        )
        with _store_errors():
            subscription = await self._hub.open(spec)
        loop = asyncio.get_running_loop()
        try:
            await context.write(self._heartbeat(subscription.cursor))
            last_sent = loop.time()
            while True:
                item = await subscription.next(interval - (loop.time() - last_sent))
                await context.write(item if item is not None else self._heartbeat(subscription.cursor))
                last_sent = loop.time()
        finally:
            await self._hub.release(subscription)

    @staticmethod
    def _heartbeat(cursor: str) -> request_response_pb2.SubscribeResponse:
        return request_response_pb2.SubscribeResponse(
            heartbeat=message_pb2.Heartbeat(time=_now(), cursor=cursor)
        )

    # -- Publish ------------------------------------------------------------------
    @staticmethod
    def _publisher(context: grpc.aio.ServicerContext) -> str:
        for item in context.invocation_metadata() or ():
            if item.key == PUBLISHER_METADATA_KEY and isinstance(item.value, str):
                value = item.value.strip()
                if 0 < len(value) <= 64 and value.isascii() and value.isprintable():
                    return value
        return "client"

    async def Publish(  # noqa: N802 - gRPC method name
        self, request: request_response_pb2.PublishRequest, context: grpc.aio.ServicerContext
    ) -> request_response_pb2.PublishResponse:
        principal = current_principal()
        needed = publish_role(request.topic)
        if principal is not None and not principal.at_least(needed):
            who = "the services" if needed == "service" else f"{needed}s"
            raise PermissionDenied(f"only {who} may publish to {request.topic!r}", reason="TOPIC_RESERVED",
                                   metadata={"topic": request.topic, "required_role": needed})
        kind = request.WhichOneof("content")
        content = request.payload if kind == "payload" else request.data
        size = content.ByteSize()
        limit = self._config.max_message_bytes
        if size > limit:
            description = f"must be at most {limit} bytes serialized, is {size}"
            raise InvalidArgument(f"{kind} too large: {description}", [(str(kind), description)])
        # A user's messages carry their token's subject; only the services name themselves.
        publisher = principal.subject if principal is not None and not principal.is_service else None
        message = message_pb2.Message(topic=request.topic, publisher=publisher or self._publisher(context),
                                      publish_time=_now())
        if kind == "payload":
            message.payload.CopyFrom(request.payload)
        else:
            message.data.CopyFrom(request.data)
        with _store_errors():
            if not request.request_id:
                return await self._store.publish(message)
            try:
                response, _published = await self._store.publish_once(message, request.request_id)
            except IdempotencyConflict as exc:
                raise Aborted(str(exc)) from exc
            return response

    # -- ListTopics / GetTopic ----------------------------------------------------
    async def ListTopics(  # noqa: N802 - gRPC method name
        self, request: request_response_pb2.ListTopicsRequest, context: grpc.aio.ServicerContext
    ) -> request_response_pb2.ListTopicsResponse:
        size = request.page_size or _DEFAULT_PAGE_SIZE
        pattern = TopicPattern.parse(request.topic_pattern) if request.topic_pattern else None
        after = None
        if request.page_token:
            try:
                token = decode_page_token(request.page_token)
            except CursorError as exc:
                raise InvalidArgument("malformed page_token", [("page_token", str(exc))]) from exc
            if token.pattern != request.topic_pattern:
                raise InvalidArgument(
                    "page_token belongs to a different topic_pattern",
                    [("page_token", "was issued for another topic_pattern")],
                )
            after = token.after
        with _store_errors():
            names = await self._store.page(pattern, after, size + 1)
            more = len(names) > size
            names = names[:size]
            infos = await asyncio.gather(*(self._store.info(t) for t in names))
            counts = await self._store.subscriber_counts(names)
        return request_response_pb2.ListTopicsResponse(
            topics=[_topic_proto(info, counts[info.topic]) for info in infos],
            next_page_token=encode_page_token(names[-1], request.topic_pattern) if more else "",
        )

    async def GetTopic(  # noqa: N802 - gRPC method name
        self, request: request_response_pb2.GetTopicRequest, context: grpc.aio.ServicerContext
    ) -> topic_pb2.Topic:
        topic = topic_from_name(request.name)
        if topic is None:
            raise InvalidArgument("name must be topics/{topic}", [("name", "must be topics/{topic}")])
        with _store_errors():
            if not await self._store.exists(topic):
                raise NotFound(f"topic {topic} was never used", reason="TOPIC_NOT_FOUND",
                               metadata={"name": request.name})
            info = await self._store.info(topic)
            counts = await self._store.subscriber_counts([topic])
        return _topic_proto(info, counts[topic])
