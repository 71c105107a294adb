"""AlertManager: alert rules CRUD, evaluation, alerts and their event history.

Evaluation runs on every component status change and every ``alert_eval_interval_s``
(so ``for_duration`` elapses without a change), with :func:`alerting.evaluate`. Only
component-status conditions are evaluated; rules with a metric condition are refused
with UNIMPLEMENTED rather than stored and never evaluated.

A default rule ``alertRules/component-not-serving`` (any component NOT_SERVING for
``default_rule_for_s``, CRITICAL) is installed once per database; deleting it sticks.

Every raise/acknowledge/resolve appends an :class:`AlertEvent` to the store's history
(sequence = its row id, cursor = ``<epoch>:<sequence>``) and publishes AlertRaised /
AlertResolved on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable

from google.protobuf import duration_pb2

from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2
from services.monitoring import alerting
from services.monitoring.convert import timestamp
from services.monitoring.events import EventPublisher
from services.monitoring.health import Change, Status
from services.monitoring.store import MonitoringStore
from services.monitoring.watcher import HealthWatcher
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unimplemented
from services.shared.fanout import Fanout, Gap
from services.shared.tasks import cancel_and_wait

__all__ = ["DEFAULT_RULE", "AlertManager", "Unimplemented"]

_log = logging.getLogger(__name__)

DEFAULT_RULE = "alertRules/component-not-serving"
_ALERTS_KEY = "alerts"
_MUTABLE = ("display_name", "description", "metric", "component_status", "severity", "enabled", "labels")




def _seconds(d: duration_pb2.Duration) -> float:
    return d.ToNanoseconds() / 1e9


def _to_domain(rule: alert_rule_pb2.AlertRule) -> alerting.ComponentRule | None:
    if not rule.HasField("component_status"):
        return None
    cond = rule.component_status
    return alerting.ComponentRule(rule.name, cond.component, Status(cond.status),
                                  _seconds(cond.for_duration), rule.enabled)


class AlertManager:
    """Owns rules and alerts (in :class:`MonitoringStore`) and evaluates them."""

    def __init__(
        self,
        store: MonitoringStore,
        watcher: HealthWatcher,
        *,
        publisher: EventPublisher | None = None,
        eval_interval_s: float = 1.0,
        default_rule_for_s: float = 5.0,
        history: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._watcher = watcher
        self._publisher = publisher
        self._interval = eval_interval_s
        self._history = history
        self._clock = clock
        #: Hands every alert event to the WatchAlerts streams.
        self.fanout: Fanout[str, alert_pb2.AlertEvent] = Fanout("alerts")
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()
        if store.meta("default_rules") is None:
            self._install_default(default_rule_for_s)
            store.set_meta("default_rules", "1")

    def _install_default(self, for_s: float) -> None:
        now = timestamp(self._clock())
        rule = alert_rule_pb2.AlertRule(
            name=DEFAULT_RULE,
            display_name="Component not serving",
            description="A service, Valkey or Envoy is NOT_SERVING; check its process and logs.",
            severity=alert_pb2.ALERT_SEVERITY_CRITICAL,
            enabled=True,
            create_time=now,
            update_time=now,
        )
        rule.component_status.component = alerting.ANY_COMPONENT
        rule.component_status.status = int(Status.NOT_SERVING)
        rule.component_status.for_duration.FromNanoseconds(int(for_s * 1e9))
        self._store.put_rule(rule)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._watcher.add_listener(self._on_change)
        self._tasks.append(asyncio.ensure_future(self._loop()))
        if self._publisher is not None:
            self._tasks.append(asyncio.ensure_future(self._publisher.run()))

    async def stop(self) -> None:
        self.fanout.close()
        tasks, self._tasks = [*self._tasks, *self._pending], []
        await cancel_and_wait(tasks)

    def _on_change(self, change: Change) -> None:
        task = asyncio.ensure_future(self.evaluate())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _loop(self) -> None:
        while True:
            try:
                await self.evaluate()
            except Exception:  # noqa: BLE001 - keep evaluating
                _log.exception("alert evaluation failed")
            await asyncio.sleep(self._interval)

    # -- evaluation ----------------------------------------------------------------
    async def evaluate(self) -> None:
        async with self._lock:
            rules = {r.name: r for r in self._store.rules()}
            domain = [d for d in (_to_domain(r) for r in rules.values()) if d is not None]
            open_alerts = {(rule, comp): alert for rule, comp, alert in self._store.open_alerts()}
            now = self._clock()
            components = self._watcher.book.snapshot()
            for decision in alerting.evaluate(domain, components, open_alerts, now):
                if isinstance(decision, alerting.Raise):
                    await self._raise(rules[decision.rule], decision, now)
                else:
                    alert = open_alerts[(decision.rule, decision.component)]
                    await self._resolve(alert, decision.component, decision.reason, now)

    async def _raise(self, rule: alert_rule_pb2.AlertRule, decision: alerting.Raise, now: float) -> None:
        comp = decision.component
        cond = rule.component_status
        alert = alert_pb2.Alert(
            name=f"alerts/{uuid.uuid4().hex}",
            rule=rule.name,
            severity=rule.severity,
            state=alert_pb2.ALERT_STATE_FIRING,
            summary=alerting.summary(Status(cond.status), comp.name, decision.held_s),
            description=" ".join(x for x in (rule.description, f"Probe: {comp.message}" if comp.message else "") if x),
            value=float(comp.status),
            fire_time=timestamp(now),
            update_time=timestamp(now),
        )
        alert.labels.update(rule.labels)
        alert.labels["component"] = comp.name
        self._store.put_alert(alert, comp.name)
        _log.warning("alert raised: %s (%s)", alert.summary, alert.name)
        await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_RAISED, now)

    async def _resolve(self, alert: alert_pb2.Alert, component: str, reason: str, now: float) -> None:
        alert.state = alert_pb2.ALERT_STATE_RESOLVED
        alert.resolve_time.CopyFrom(timestamp(now))
        alert.update_time.CopyFrom(timestamp(now))
        alert.description = (alert.description + f" Resolved: {reason}.").strip()
        self._store.put_alert(alert, component)
        _log.info("alert resolved: %s (%s)", alert.name, reason)
        await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_RESOLVED, now)

    async def _record(self, alert: alert_pb2.Alert, kind: int, now: float) -> None:
        event = alert_pb2.AlertEvent(alert=alert, kind=kind, time=timestamp(now))
        seq = self._store.append_event(event, self._history)
        self._stamp(event, seq)
        self.fanout.publish(_ALERTS_KEY, event)
        if self._publisher is not None and kind != alert_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED:
            envelope = self._publisher.envelope(alert.name)
            payload = envelope.alert_raised if kind == alert_pb2.ALERT_CHANGE_KIND_RAISED else envelope.alert_resolved
            payload.alert.CopyFrom(alert)
            self._publisher.submit(envelope)

    # -- rules ---------------------------------------------------------------------
    async def create_rule(self, rule: alert_rule_pb2.AlertRule, rule_id: str, request_id: str) -> alert_rule_pb2.AlertRule:
        if request_id:
            existing = self._store.rule_by_request_id(request_id)
            if existing is not None:
                return existing
        if rule.HasField("metric"):
            raise Unimplemented("metric conditions are not evaluated yet; use component_status",
                                reason="METRIC_RULES_UNIMPLEMENTED")
        name = f"alertRules/{rule_id or 'r' + uuid.uuid4().hex[:16]}"
        if self._store.rule(name) is not None:
            raise AlreadyExists(f"{name} already exists", reason="ALERT_RULE_EXISTS", metadata={"name": name})
        now = timestamp(self._clock())
        created = alert_rule_pb2.AlertRule()
        created.CopyFrom(rule)
        created.name = name
        created.create_time.CopyFrom(now)
        created.update_time.CopyFrom(now)
        self._store.put_rule(created, request_id or None)
        await self.evaluate()
        return created

    def get_rule(self, name: str) -> alert_rule_pb2.AlertRule:
        rule = self._store.rule(name)
        if rule is None:
            raise NotFound(f"no alert rule {name}", reason="ALERT_RULE_NOT_FOUND", metadata={"name": name})
        return rule

    def list_rules(self) -> list[alert_rule_pb2.AlertRule]:
        return self._store.rules()

    async def update_rule(self, patch: alert_rule_pb2.AlertRule, paths: list[str]) -> alert_rule_pb2.AlertRule:
        rule = self.get_rule(patch.name)
        fields = _MUTABLE if not paths or "*" in paths else tuple(paths)
        for f in fields:
            if f in ("metric", "component_status"):
                if patch.HasField(f):
                    getattr(rule, f).CopyFrom(getattr(patch, f))
                elif rule.WhichOneof("condition") == f:
                    rule.ClearField(f)
            elif f == "labels":
                rule.labels.clear()
                rule.labels.update(patch.labels)
            else:
                setattr(rule, f, getattr(patch, f))
        if rule.HasField("metric"):
            raise Unimplemented("metric conditions are not evaluated yet; use component_status",
                                reason="METRIC_RULES_UNIMPLEMENTED")
        if not rule.HasField("component_status"):
            raise InvalidArgument("the rule would have no condition",
                                  [("alert_rule.component_status", "a condition is required")])
        if rule.severity == alert_pb2.ALERT_SEVERITY_UNSPECIFIED:
            raise InvalidArgument("severity is required", [("alert_rule.severity", "severity is required")])
        rule.update_time.CopyFrom(timestamp(self._clock()))
        self._store.put_rule(rule)
        await self.evaluate()
        return rule

    async def delete_rule(self, name: str) -> None:
        if not self._store.delete_rule(name):
            raise NotFound(f"no alert rule {name}", reason="ALERT_RULE_NOT_FOUND", metadata={"name": name})
        await self.evaluate()  # resolves its open alerts

    # -- alerts --------------------------------------------------------------------
    def list_alerts(self, states: set[int], severities: set[int], rule: str) -> list[alert_pb2.Alert]:
        return [a for a in self._store.alerts()
                if (not states or a.state in states) and (not severities or a.severity in severities)
                and (not rule or a.rule == rule)]

    def get_alert(self, name: str) -> alert_pb2.Alert:
        alert = self._store.alert(name)
        if alert is None:
            raise NotFound(f"no alert {name}", reason="ALERT_NOT_FOUND", metadata={"name": name})
        return alert

    async def acknowledge(self, name: str, by: str, comment: str) -> alert_pb2.Alert:
        async with self._lock:
            alert = self.get_alert(name)
            if alert.state == alert_pb2.ALERT_STATE_RESOLVED:
                raise FailedPrecondition(f"{name} is resolved", reason="ALERT_RESOLVED")
            if alert.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED:
                return alert
            now = self._clock()
            alert.state = alert_pb2.ALERT_STATE_ACKNOWLEDGED
            alert.acknowledged_by = by
            alert.acknowledge_comment = comment
            alert.acknowledge_time.CopyFrom(timestamp(now))
            alert.update_time.CopyFrom(timestamp(now))
            self._store.put_alert(alert, alert.labels.get("component", ""))
            await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED, now)
            return alert

    # -- history -------------------------------------------------------------------
    def _start_seq(self, cursor: str) -> int:
        if not cursor:
            return 0
        epoch, sep, seq = cursor.rpartition(":")
        if not sep or not epoch or not seq.isdigit():
            raise InvalidArgument("malformed cursor", [("cursor", "not a cursor this server issued")])
        oldest = self._store.oldest_event_seq()
        if epoch != self._store.epoch or (oldest is not None and int(seq) < oldest - 1):
            return 0  # history lost or trimmed: start at the oldest retained event
        return int(seq)

    def _stamp(self, event: alert_pb2.AlertEvent, seq: int) -> None:
        event.sequence = seq
        event.epoch = self._store.epoch
        event.cursor = f"{self._store.epoch}:{seq}"

    async def follow(self, cursor: str) -> AsyncIterator[alert_pb2.AlertEvent]:
        """Retained events after ``cursor``, then live ones, until cancelled.

        Live events come through the one fan-out (:attr:`fanout`, fed by
        :meth:`_record`); the store is replayed at the start and after a gap (buffer
        overflow). Sequences are row ids: increasing, so nothing is sent twice.
        """
        seq = self._start_seq(cursor)
        watcher = await self.fanout.watch([_ALERTS_KEY])  # before the store: no gap
        try:
            replay = True
            while True:
                if replay:
                    batch = self._store.events_after(seq)
                    for s, event in batch:
                        self._stamp(event, s)
                        seq = s
                        yield event
                    if batch:
                        continue
                    replay = False
                got = await watcher.get(None)
                if isinstance(got, Gap):
                    replay = True
                    continue
                for _key, event in got or ():
                    if event.sequence > seq:
                        seq = event.sequence
                        yield event
        finally:
            await watcher.close()

