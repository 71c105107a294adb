"""AlertManager: alert rules CRUD, evaluation, alerts and their event history.

Evaluation runs on every component status change and every ``alert_eval_interval_s``
(so ``for_duration`` elapses without a change). Three kinds of condition:

* ``component_status`` — :func:`alerting.evaluate` over the health watcher's components;
* ``metric`` — :mod:`services.monitoring.metric_rules` over the samples scraped from
  every watched service's Prometheus endpoint (:class:`SeriesHistory`, fed by the
  watcher's metrics loop; only the metrics some enabled rule selects are kept);
* ``training_job`` — :mod:`services.monitoring.training_alerts` over the training jobs'
  events on the bus (evaluated once the retained history has been read).

Each fires one alert per component, series group or training job (the store's
``component`` column holds that key) and resolves it when the condition stops holding,
the rule is disabled or deleted.

Default rules, installed once per database (deleting one sticks):
``alertRules/component-not-serving`` (any component NOT_SERVING for
``default_rule_for_s``, CRITICAL) and the four built-in training rules
(:data:`TRAINING_RULES`), whose thresholds come from the config. A built-in training
rule nobody changed follows the config at every start; one changed with
``UpdateAlertRule`` keeps its change.

Every raise/acknowledge/resolve appends an :class:`AlertEvent` to the store's history
(sequence = its row id, cursor = ``<epoch>:<sequence>``) and publishes AlertRaised /
AlertResolved on the bus.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable

from google.protobuf import duration_pb2

from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2
from services.monitoring import alerting
from services.monitoring.config import MonitoringConfig
from services.monitoring.convert import timestamp
from services.monitoring.events import EventPublisher
from services.monitoring.health import Change, Status
from services.monitoring.metric_rules import MetricQuery, MetricRuleState, describe, evaluate_query, query_from_proto
from services.monitoring.metric_rules import wanted_samples
from services.monitoring.series import SeriesHistory
from services.monitoring.store import MonitoringStore
from services.monitoring.training_alerts import Finding, TrainingRules, TrainingTracker
from services.monitoring.watcher import HealthWatcher
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.shared.fanout import Fanout, Gap
from services.shared.tasks import cancel_and_wait

__all__ = ["DEFAULT_RULE", "TRAINING_RULES", "AlertManager", "training_rules"]

_log = logging.getLogger(__name__)

DEFAULT_RULE = "alertRules/component-not-serving"
_ALERTS_KEY = "alerts"
_MUTABLE = ("display_name", "description", "metric", "component_status", "training_job", "severity", "enabled",
            "labels")
_CONDITIONS = ("metric", "component_status", "training_job")

#: Names of the built-in training rules.
TRAINING_RULES = ("alertRules/training-job-stalled", "alertRules/training-job-diverged",
                  "alertRules/training-grokking-onset", "alertRules/training-train-val-gap")


def training_rules(config: MonitoringConfig) -> list[alert_rule_pb2.AlertRule]:
    """The built-in training rules with the config's thresholds (no times set)."""
    def rule(name: str, display: str, description: str, severity: int) -> alert_rule_pb2.AlertRule:
        return alert_rule_pb2.AlertRule(name=name, display_name=display, description=description,
                                        severity=severity, enabled=True)

    stalled = rule(TRAINING_RULES[0], "Training job stalled",
                   "A RUNNING job makes no progress: its worker may hang, wait on a lock or be stopped. "
                   "Check the worker process; pause and resume the job to move it.", alert_pb2.ALERT_SEVERITY_WARNING)
    stalled.training_job.stalled.no_step_for.FromNanoseconds(int(config.training_stall_after_s * 1e9))
    diverged = rule(TRAINING_RULES[1], "Training job diverged",
                    "The loss is not finite or far above chance: the run is wasting compute.",
                    alert_pb2.ALERT_SEVERITY_WARNING)
    diverged.training_job.diverged.max_loss = config.training_max_loss
    grok = rule(TRAINING_RULES[2], "Grokking onset",
                "Validation accuracy jumped after a memorization plateau: the model starts to generalize.",
                alert_pb2.ALERT_SEVERITY_INFO)
    g = grok.training_job.grokking_onset
    g.validation_accuracy = config.training_grok_validation_accuracy
    g.memorized_accuracy = config.training_grok_memorized_accuracy
    g.plateau_evaluations = config.training_grok_plateau_evaluations
    gap = rule(TRAINING_RULES[3], "Train/validation gap persists",
               "The model fits its training data but not the validation split.", alert_pb2.ALERT_SEVERITY_INFO)
    gap.training_job.train_val_gap.gap = config.training_gap
    gap.training_job.train_val_gap.for_duration.FromNanoseconds(int(config.training_gap_for_s * 1e9))
    return [stalled, diverged, grok, gap]




def _fmt(s: float) -> str:
    return f"{s:.0f}s" if s >= 10 else f"{s:.1f}s"


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
        tracker: TrainingTracker | None = None,
        config: MonitoringConfig | None = None,
        eval_interval_s: float = 1.0,
        default_rule_for_s: float = 5.0,
        history: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        config = config or MonitoringConfig(default_rule_for_s=default_rule_for_s)
        self._store = store
        #: Every store call after start runs here, off the event loop, in order.
        self._db = store.db
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
        #: Samples of the metrics that metric rules select (fed by the watcher's scrapes).
        self.series = SeriesHistory(clock=clock)
        self._scrape_margin_s = 3 * watcher.config.probe_interval_s
        watcher.add_scrape_listener(self.series.ingest)
        self._metric_state = MetricRuleState()
        self._queries: dict[str, tuple[bytes, MetricQuery]] = {}
        #: The latest value of every (metric rule, group), for resolve reasons.
        self._values: dict[tuple[str, str], float] = {}
        #: Training jobs as the bus tells them (None: no bus, training rules never hold).
        self.tracker = tracker
        self._training = TrainingRules(tracker) if tracker is not None else None
        if store.meta("default_rules") is None:
            self._install_default(default_rule_for_s)
            store.set_meta("default_rules", "1")
        self._sync_training_rules(config)

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

    def _sync_training_rules(self, config: MonitoringConfig) -> None:
        """Install the built-in training rules once; make untouched ones follow the config.

        ``meta["builtin:<rule>"]`` holds the condition last taken from the config: a
        stored rule whose condition still equals it was not changed by anyone and gets
        the config's current thresholds; a deleted one stays deleted.
        """
        now = timestamp(self._clock())
        for rule in training_rules(config):
            wanted = rule.training_job.SerializeToString(deterministic=True)
            key = f"builtin:{rule.name}"
            last = self._store.meta(key)
            stored = self._store.rule(rule.name)
            if last is None:
                if stored is None:
                    rule.create_time.CopyFrom(now)
                    rule.update_time.CopyFrom(now)
                    self._store.put_rule(rule)
            elif stored is None or bytes.fromhex(last) == wanted:
                continue
            elif (stored.HasField("training_job")
                  and stored.training_job.SerializeToString(deterministic=True) == bytes.fromhex(last)):
                stored.training_job.CopyFrom(rule.training_job)
                stored.update_time.CopyFrom(now)
                self._store.put_rule(stored)
            else:
                continue  # changed by someone: theirs wins
            self._store.set_meta(key, wanted.hex())

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._watcher.add_listener(self._on_change)
        self._tasks.append(asyncio.ensure_future(self._loop()))
        if self._publisher is not None:
            self._tasks.append(asyncio.ensure_future(self._publisher.run()))
        if self.tracker is not None and self.tracker.ready is False:
            self._tasks.append(asyncio.ensure_future(self._follow_training()))

    async def _follow_training(self) -> None:
        """Keep the tracker following; an unexpected error restarts it (re-reading the
        retained history is harmless: replayed events change nothing)."""
        assert self.tracker is not None
        while True:
            try:
                await self.tracker.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - training alerts must not stop for good
                _log.exception("following the training events failed; restarting in 1 s")
                await asyncio.sleep(1.0)

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
            stored, opened = await self._db(lambda: (self._store.rules(), list(self._store.open_alerts())))
            rules = {r.name: r for r in stored}
            now = self._clock()
            # Component rules (and alerts of deleted rules, whatever their kind).
            domain = [d for d in (_to_domain(r) for r in rules.values()) if d is not None]
            open_alerts = {(rule, comp): alert for rule, comp, alert in opened
                           if rule not in rules or rules[rule].HasField("component_status")}
            components = self._watcher.book.snapshot()
            for decision in alerting.evaluate(domain, components, open_alerts, now):
                if isinstance(decision, alerting.Raise):
                    await self._raise(rules[decision.rule], decision, now)
                else:
                    alert = open_alerts[(decision.rule, decision.component)]
                    await self._resolve(alert, decision.component, decision.reason, now)
            await self._evaluate_findings(rules, opened, now)

    def _query(self, rule: alert_rule_pb2.AlertRule) -> MetricQuery:
        data = rule.metric.SerializeToString(deterministic=True)
        cached = self._queries.get(rule.name)
        if cached is None or cached[0] != data:
            cached = self._queries[rule.name] = (data, query_from_proto(rule.metric))
        return cached[1]

    def _findings(self, rules: dict[str, alert_rule_pb2.AlertRule], now: float
                  ) -> tuple[dict[tuple[str, str], tuple[Finding, dict[str, str]]], set[str]]:
        """Metric and training findings of enabled rules: {(rule, key): (finding, labels)},
        and the rules judged this time (training rules wait for the tracker)."""
        found: dict[tuple[str, str], tuple[Finding, dict[str, str]]] = {}
        judged: set[str] = set()
        metric_rules = {n: r for n, r in rules.items() if r.enabled and r.HasField("metric")}
        queries = {}
        for name, rule in metric_rules.items():
            try:
                queries[name] = self._query(rule)
            except InvalidArgument as exc:  # stored before a check existed: skip, say why
                _log.warning("metric rule %s cannot be evaluated: %s", name, exc)
        self._queries = {n: q for n, q in self._queries.items() if n in queries}
        self.series.want(wanted_samples(list(queries.values()), self._scrape_margin_s))
        self._metric_state.forget(set(queries))
        self._values = {}
        for name, q in queries.items():
            judged.add(name)
            values = evaluate_query(q, self.series, now)
            self._values.update({(name, g.key): g.value for g in values})
            for group, since in self._metric_state.holding(name, q, values, now):
                if now - since < q.for_s:
                    continue
                expr = describe(q)
                where = group.key if group.labels else ""
                summary = f"{rules[name].display_name or name}: {group.value:.4g} for {_fmt(now - since)}"
                if where:
                    summary += f" ({where})"
                found[(name, group.key)] = (
                    Finding(group.key, since, group.value, summary, f"{expr}: value {group.value:.6g}."),
                    dict(group.labels))
        if self._training is not None:
            training = {n: r for n, r in rules.items() if r.enabled and r.HasField("training_job")}
            self._training.forget(set(training))
            if self.tracker is not None and self.tracker.ready:
                for name, rule in training.items():
                    judged.add(name)
                    for f in self._training.findings(name, rule.training_job, now):
                        found[(name, f.key)] = (f, {"training_job": f.key})
        return found, judged

    async def _evaluate_findings(self, rules: dict[str, alert_rule_pb2.AlertRule],
                                 opened: list[tuple[str, str, alert_pb2.Alert]], now: float) -> None:
        found, judged = self._findings(rules, now)
        open_keys = set()
        for rule_name, key, alert in opened:
            rule = rules.get(rule_name)
            if rule is None or rule.HasField("component_status"):
                continue  # handled above
            open_keys.add((rule_name, key))
            still = found.get((rule_name, key))
            if still is not None and rule.enabled:
                if still[0].value != alert.value and not (math.isnan(still[0].value) and math.isnan(alert.value)):
                    alert.value = still[0].value  # "the observed value ... at the latest evaluation"
                    alert.update_time.CopyFrom(timestamp(now))
                    await self._db(self._store.put_alert, alert, key)
                continue
            if not rule.enabled:
                await self._resolve(alert, key, "rule disabled", now)
            elif rule.WhichOneof("condition") is None:
                await self._resolve(alert, key, "rule has no condition", now)
            elif rule_name in judged and (rule_name, key) not in found:
                reason = "condition no longer holds"
                if rule.HasField("training_job") and self._training is not None:
                    reason = self._training.reason(rule_name, rule.training_job, key)
                elif (rule_name, key) in self._values:
                    reason = f"value {self._values[(rule_name, key)]:.4g}"
                else:
                    reason = "no data"
                await self._resolve(alert, key, reason, now)
        for (rule_name, key), (finding, labels) in sorted(found.items()):
            if (rule_name, key) not in open_keys:
                await self._raise_finding(rules[rule_name], finding, labels, now)

    async def _raise_finding(self, rule: alert_rule_pb2.AlertRule, finding: Finding, labels: dict[str, str],
                             now: float) -> None:
        alert = alert_pb2.Alert(
            name=f"alerts/{uuid.uuid4().hex}",
            rule=rule.name,
            severity=rule.severity,
            state=alert_pb2.ALERT_STATE_FIRING,
            summary=finding.summary,
            description=" ".join(x for x in (rule.description, finding.detail) if x),
            value=finding.value,
            fire_time=timestamp(now),
            update_time=timestamp(now),
        )
        alert.labels.update(rule.labels)
        alert.labels.update(labels)
        await self._db(self._store.put_alert, alert, finding.key)
        _log.warning("alert raised: %s (%s)", alert.summary, alert.name)
        await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_RAISED, now)

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
        await self._db(self._store.put_alert, alert, comp.name)
        _log.warning("alert raised: %s (%s)", alert.summary, alert.name)
        await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_RAISED, now)

    async def _resolve(self, alert: alert_pb2.Alert, component: str, reason: str, now: float) -> None:
        alert.state = alert_pb2.ALERT_STATE_RESOLVED
        alert.resolve_time.CopyFrom(timestamp(now))
        alert.update_time.CopyFrom(timestamp(now))
        alert.description = (alert.description + f" Resolved: {reason}.").strip()
        await self._db(self._store.put_alert, alert, component)
        _log.info("alert resolved: %s (%s)", alert.name, reason)
        await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_RESOLVED, now)

    async def _record(self, alert: alert_pb2.Alert, kind: int, now: float) -> None:
        event = alert_pb2.AlertEvent(alert=alert, kind=kind, time=timestamp(now))
        seq = await self._db(self._store.append_event, event, self._history)
        self._stamp(event, seq)
        self.fanout.publish(_ALERTS_KEY, event)
        if self._publisher is not None and kind != alert_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED:
            envelope = self._publisher.envelope(alert.name)
            payload = envelope.alert_raised if kind == alert_pb2.ALERT_CHANGE_KIND_RAISED else envelope.alert_resolved
            payload.alert.CopyFrom(alert)
            self._publisher.submit(envelope)

    # -- rules ---------------------------------------------------------------------
    async def create_rule(self, rule: alert_rule_pb2.AlertRule, rule_id: str, request_id: str) -> alert_rule_pb2.AlertRule:
        if rule.HasField("metric"):
            query_from_proto(rule.metric)  # InvalidArgument for what buf.validate cannot check
        name = f"alertRules/{rule_id or 'r' + uuid.uuid4().hex[:16]}"

        def create() -> alert_rule_pb2.AlertRule:  # one call on the store's thread: check and put
            if request_id:
                existing = self._store.rule_by_request_id(request_id)
                if existing is not None:
                    return existing
            if self._store.rule(name) is not None:
                raise AlreadyExists(f"{name} already exists", reason="ALERT_RULE_EXISTS", metadata={"name": name})
            now = timestamp(self._clock())
            created = alert_rule_pb2.AlertRule()
            created.CopyFrom(rule)
            created.name = name
            created.create_time.CopyFrom(now)
            created.update_time.CopyFrom(now)
            self._store.put_rule(created, request_id or None)
            return created

        created = await self._db(create)
        await self.evaluate()
        return created

    def _rule(self, name: str) -> alert_rule_pb2.AlertRule:
        rule = self._store.rule(name)
        if rule is None:
            raise NotFound(f"no alert rule {name}", reason="ALERT_RULE_NOT_FOUND", metadata={"name": name})
        return rule

    async def get_rule(self, name: str) -> alert_rule_pb2.AlertRule:
        return await self._db(self._rule, name)

    async def list_rules(self) -> list[alert_rule_pb2.AlertRule]:
        return await self._db(self._store.rules)

    async def update_rule(self, patch: alert_rule_pb2.AlertRule, paths: list[str]) -> alert_rule_pb2.AlertRule:
        # Read, patch, check and write in one call on the store's thread (no update between).
        rule = await self._db(self._patch_rule, patch, paths)
        await self.evaluate()
        return rule

    def _patch_rule(self, patch: alert_rule_pb2.AlertRule, paths: list[str]) -> alert_rule_pb2.AlertRule:
        rule = self._rule(patch.name)
        fields = _MUTABLE if not paths or "*" in paths else tuple(paths)
        for f in fields:
            if f in _CONDITIONS:
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
            query_from_proto(rule.metric)
        if rule.WhichOneof("condition") is None:
            raise InvalidArgument("the rule would have no condition",
                                  [("alert_rule.component_status", "a condition is required: metric, "
                                    "component_status or training_job")])
        if rule.severity == alert_pb2.ALERT_SEVERITY_UNSPECIFIED:
            raise InvalidArgument("severity is required", [("alert_rule.severity", "severity is required")])
        rule.update_time.CopyFrom(timestamp(self._clock()))
        self._store.put_rule(rule)
        return rule

    async def delete_rule(self, name: str) -> None:
        if not await self._db(self._store.delete_rule, name):
            raise NotFound(f"no alert rule {name}", reason="ALERT_RULE_NOT_FOUND", metadata={"name": name})
        await self.evaluate()  # resolves its open alerts

    # -- alerts --------------------------------------------------------------------
    async def list_alerts(self, states: set[int], severities: set[int], rule: str) -> list[alert_pb2.Alert]:
        return [a for a in await self._db(self._store.alerts)
                if (not states or a.state in states) and (not severities or a.severity in severities)
                and (not rule or a.rule == rule)]

    async def get_alert(self, name: str) -> alert_pb2.Alert:
        alert = await self._db(self._store.alert, name)
        if alert is None:
            raise NotFound(f"no alert {name}", reason="ALERT_NOT_FOUND", metadata={"name": name})
        return alert

    async def acknowledge(self, name: str, by: str, comment: str) -> alert_pb2.Alert:
        async with self._lock:
            alert = await self.get_alert(name)
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
            await self._db(self._store.put_alert, alert, alert.labels.get("component", ""))
            await self._record(alert, alert_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED, now)
            return alert

    # -- history -------------------------------------------------------------------
    async def _start_seq(self, cursor: str) -> int:
        if not cursor:
            return 0
        epoch, sep, seq = cursor.rpartition(":")
        if not sep or not epoch or not seq.isdigit():
            raise InvalidArgument("malformed cursor", [("cursor", "not a cursor this server issued")])
        oldest = await self._db(self._store.oldest_event_seq)
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
        seq = await self._start_seq(cursor)
        watcher = await self.fanout.watch([_ALERTS_KEY])  # before the store: no gap
        try:
            replay = True
            while True:
                if replay:
                    batch = await self._db(self._store.events_after, seq)
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

