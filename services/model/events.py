"""The registry's events: envelopes of its outbox, relayed by the shared outbox relay.

A change and its event are committed in one SQLite transaction (the ``outbox`` table,
see :mod:`services.model.store`); the shared
:class:`~services.shared.outbox.OutboxRelay` publishes the entries in order as
``agentforge.events.v1.Event`` envelopes (``model_version_created``, ``alias_moved``) and
deletes each once Redis accepted it. An event is never lost when Redis is down or the
process dies between commit and publish; it may be published twice (same event id, fixed
when the entry was written), which consumers drop by id.

The envelope is built when the entry is relayed: a created version is sent as it is then
(its artifact state, aliases), or by name only once it was deleted.
"""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf.timestamp_pb2 import Timestamp

from agentforge.events.v1 import event_pb2
from agentforge.model.v1 import model_version_pb2
from services.model.convert import version_to_proto
from services.model.store import OutboxEntry, Registry, VersionRecord

__all__ = ["build_event", "outbox_pending"]

SOURCE = "model"


def build_event(entry: OutboxEntry, version: VersionRecord | None) -> event_pb2.Event:
    """The envelope of one outbox entry; ``version``: the created version as it is now
    (None once deleted: the event then names it only). ValueError: an unknown kind."""
    time = Timestamp()
    time.FromMicroseconds(entry.create_time)
    event = event_pb2.Event(id=entry.event_id, source=SOURCE, time=time, subject=entry.subject)
    data = entry.data
    if data.get("traceparent"):  # the span that made the change (services.model.store)
        event.trace_context.traceparent = data["traceparent"]
    if entry.kind == "version_created":
        proto = (model_version_pb2.ModelVersion(name=entry.subject) if version is None
                 else version_to_proto(version))
        event.model_version_created.model_version.CopyFrom(proto)
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


def outbox_pending(store: Registry) -> Callable[[int], list[tuple[int, bytes]]]:
    """The relay's ``pending(limit)`` for the registry: ``(entry id, serialized Event)``,
    oldest first. Blocking (one read transaction): the relay runs it on ``store.db``."""

    def pending(limit: int) -> list[tuple[int, bytes]]:
        return [(entry.id, build_event(entry, version).SerializeToString())
                for entry, version in store.outbox_entries(limit)]

    return pending
