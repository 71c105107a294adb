"""The bus envelope (``agentforge.events.v1.Event``), built and published one way.

Cross-service streams (``events.training``, ``events.model``, ``events.health``,
``events.alerts``, ``events.forge``) carry only ``Event`` envelopes, so any consumer can
read any of them: ``type`` names the payload, ``subject`` the resource it is about.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from google.protobuf import timestamp_pb2
from opentelemetry import trace
from google.protobuf.message import Message

from agentforge.common.v1 import common_pb2
from agentforge.events.v1 import event_pb2
from services.shared import tracing
from services.shared.bus import Cursor, EventBus

__all__ = ["envelope", "publish_event", "publish_events"]

_PAYLOAD_FIELDS = {
    f.message_type.full_name: f.name for f in event_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"].fields
}


def envelope(payload: Message, *, source: str, subject: str, traceparent: str | None = None) -> event_pb2.Event:
    """An ``Event`` carrying ``payload`` in its typed oneof field, with id, time and trace
    (``traceparent``, default: the current span's, :func:`services.shared.tracing.current_traceparent`)."""
    field = _PAYLOAD_FIELDS.get(payload.DESCRIPTOR.full_name)
    if field is None:
        raise TypeError(f"{payload.DESCRIPTOR.full_name} is not an agentforge.events.v1.Event payload")
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    event = event_pb2.Event(
        id=uuid.uuid4().hex,
        type=payload.DESCRIPTOR.full_name,
        source=source,
        time=now,
        subject=subject,
        trace_context=common_pb2.TraceContext(traceparent=traceparent or tracing.current_traceparent()),
    )
    getattr(event, field).CopyFrom(payload)
    return event


async def publish_event(bus: EventBus, stream: str, payload: Message, *, source: str, subject: str,
                        budget_s: float | None = None) -> Cursor:
    """Wrap ``payload`` in an envelope and publish it (the bus assigns the per-subject sequence).

    ``budget_s``: how long to retry while Redis is unreachable (see :meth:`EventBus.publish`).
    The publish runs in a ``send <stream>`` span; the envelope and the entry carry its context.
    """
    with tracing.producer_span(stream, subject=subject) as traceparent:
        event = envelope(payload, source=source, subject=subject, traceparent=traceparent)
        if tracing.enabled():
            trace.get_current_span().set_attribute("messaging.message.id", event.id)
        return await bus.publish(stream, event, subject=subject, event_id=event.id,
                                 trace_context=event.trace_context.traceparent, budget_s=budget_s)


async def publish_events(bus: EventBus, stream: str, payloads: Sequence[Message], *, source: str, subject: str,
                         budget_s: float | None = None) -> list[Cursor]:
    """:func:`publish_event` for several payloads about one subject, in order and in one
    round trip (:meth:`EventBus.publish_many`), in one ``send <stream>`` span whose
    context they all carry."""
    if not payloads:
        return []
    with tracing.producer_span(stream, subject=subject, count=len(payloads)) as traceparent:
        events = [envelope(p, source=source, subject=subject, traceparent=traceparent) for p in payloads]
        return await bus.publish_many(stream, events, subject=subject, event_ids=[e.id for e in events],
                                      trace_context=events[0].trace_context.traceparent or None,
                                      budget_s=budget_s)
