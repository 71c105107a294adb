"""Metric-threshold alert rules: the PromQL functions (unit), and rules on a real
service's Prometheus metrics that fire and resolve (error ratio, p99 latency), with their
AlertRaised/AlertResolved events on the bus."""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import json_format

from agentforge.events.v1 import event_pb2
from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.monitoring.alerts import DEFAULT_RULE
from services.monitoring.metric_rules import describe, evaluate_query, query_from_proto
from services.monitoring.series import (
    Matcher,
    MatchType,
    RegexError,
    SeriesHistory,
    bucket_quantile,
    extrapolated_rate,
)
from services.shared.errors import InvalidArgument
from services.shared.bus import BusConfig, EventBus
from services.shared.valkey import EmbeddedValkey

MONITORING = "agentforge.monitoring.v1.MonitoringService"


# ------------------------------------------------------------------ PromQL functions
def test_rate_matches_prometheus_extrapolation() -> None:
    # One increment per second, scraped every 2 s from t=0 to t=10.
    points = [(float(t), float(t)) for t in range(0, 11, 2)]
    assert extrapolated_rate(points, 0.0, 10.0) == pytest.approx(1.0)
    # Range [-1, 11]: the end is extrapolated by 1 s; the start not at all, because the
    # counter was 0 at the first sample (durationToZero = 0).
    assert extrapolated_rate(points, -1.0, 11.0) == pytest.approx(10 * 11 / 10 / 12)
    # Gaps to the range's edges above 1.1× the sample interval extrapolate half an interval.
    shifted = [(t, v + 100) for t, v in points]
    assert extrapolated_rate(shifted, -5.0, 15.0) == pytest.approx(10 * (10 + 1 + 1) / 10 / 20)
    # increase() is rate() times the range.
    assert extrapolated_rate(points, 0.0, 10.0, is_rate=False) == pytest.approx(10.0)
    # A counter reset (the process restarted) counts the value before it.
    assert extrapolated_rate([(0.0, 5.0), (2.0, 7.0), (4.0, 1.0), (6.0, 3.0)], 0.0, 6.0) == pytest.approx(5 / 6)
    assert extrapolated_rate([(0.0, 5.0)], 0.0, 6.0) is None


def test_histogram_quantile_matches_prometheus() -> None:
    buckets = {0.1: 50.0, 0.5: 90.0, 1.0: 99.0, math.inf: 100.0}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.1)
    assert bucket_quantile(0.9, buckets) == pytest.approx(0.5)
    assert bucket_quantile(0.99, buckets) == pytest.approx(1.0)
    assert bucket_quantile(0.95, buckets) == pytest.approx(0.5 + 0.5 * 5 / 9)
    assert bucket_quantile(0.995, buckets) == pytest.approx(1.0)  # in +Inf: the highest finite bound
    assert bucket_quantile(0.5, {0.1: 1.0, 0.5: 2.0}) is None  # no +Inf bucket
    assert bucket_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None  # no observations
    assert bucket_quantile(0.5, {0.1: 5.0, 0.5: 4.9, math.inf: 10.0}) == pytest.approx(0.1)  # made monotonic


def test_matchers_are_anchored_and_missing_labels_are_empty() -> None:
    assert Matcher.of("code", MatchType.REGEX, "INTERNAL|UNAVAILABLE").matches({"code": "INTERNAL"})
    assert not Matcher.of("code", MatchType.REGEX, "INTERNAL").matches({"code": "INTERNAL_X"})
    assert Matcher.of("code", MatchType.NOT_REGEX, "OK").matches({"code": "NOT_FOUND"})
    assert Matcher.of("code", MatchType.EQUAL, "").matches({})
    assert Matcher.of("code", MatchType.NOT_EQUAL, "OK").matches({})


def test_matchers_are_re2_like_prometheus_and_never_backtrack() -> None:
    """An operator's pattern cannot stall the evaluation loop: with Python's backtracking
    ``re`` this one against a grpc_service label took hours (2^n); RE2 is linear."""
    # 29 characters: about a minute of backtracking on this machine (each one more doubles
    # it), microseconds for RE2; the bound is far from both.
    service = {"grpc_service": "agentforge.training.v1.Traini"}
    hostile = Matcher.of("grpc_service", MatchType.REGEX, r"([a-zA-Z.0-9]+)+x")
    start = time.monotonic()
    assert not hostile.matches(service)
    assert time.monotonic() - start < 5.0
    # Prometheus' semantics: RE2 syntax, "." matches a newline.
    assert Matcher.of("a", MatchType.REGEX, "x.y").matches({"a": "x\ny"})
    for perl_only in ("(?=a)a", r"(a)\1"):  # lookahead, backreference: not RE2
        with pytest.raises(RegexError):
            Matcher.of("a", MatchType.REGEX, perl_only)
    with pytest.raises(InvalidArgument) as bad:
        query_from_proto(_condition(metric="up", matchers=[alert_rule_pb2.LabelMatcher(
            name="a", type=alert_rule_pb2.LABEL_MATCH_TYPE_REGEX, value="(?=a)a")]))
    assert "alert_rule.metric.matchers[0].value" in str(bad.value.violations)


def _condition(**kw: Any) -> alert_rule_pb2.MetricCondition:
    c = alert_rule_pb2.MetricCondition(comparison=alert_rule_pb2.COMPARISON_GREATER_THAN, **kw)
    return c


def test_error_ratio_and_p99_over_scraped_series() -> None:
    history = SeriesHistory(clock=lambda: 100.0)
    history.want({"grpc_server_handled_total": 60.0, "grpc_server_handling_seconds_bucket": 60.0})
    bounds = ("0.01", "0.1", "1.0", "+Inf")
    for i, t in enumerate(range(60, 101, 10)):
        samples = [
            ("grpc_server_handled_total", {"grpc_method": "Get", "grpc_code": "OK"}, 30.0 * i),
            ("grpc_server_handled_total", {"grpc_method": "Get", "grpc_code": "INTERNAL"}, 10.0 * i),
            ("grpc_server_handled_total", {"grpc_method": "List", "grpc_code": "OK"}, 10.0 * i),
        ]
        # Get: per 10 s, 20 calls under 10 ms, 15 under 100 ms, 5 under 1 s.
        for le, n in zip(bounds, (20, 35, 40, 40), strict=True):
            samples.append(("grpc_server_handling_seconds_bucket", {"grpc_method": "Get", "le": le}, float(n * i)))
        history.ingest("model", float(t), samples)

    ratio = _condition(metric="grpc_server_handled_total", threshold=0.2, group_by=["grpc_method"])
    ratio.matchers.add(name="grpc_code", type=alert_rule_pb2.LABEL_MATCH_TYPE_REGEX, value="INTERNAL|UNAVAILABLE")
    ratio.denominator.SetInParent()
    ratio.rate_window.FromSeconds(30)
    q = query_from_proto(ratio)
    values = {g.labels["grpc_method"]: g.value for g in evaluate_query(q, history, 100.0)}
    assert values == pytest.approx({"Get": 0.25, "List": 0.0})  # List has no INTERNAL series: 0, not dropped
    assert describe(q) == ('sum by (grpc_method) (rate(grpc_server_handled_total{grpc_code=~"INTERNAL|UNAVAILABLE"}'
                           '[30s])) / sum by (grpc_method) (rate(grpc_server_handled_total[30s])) > 0.2')

    p99 = _condition(metric="grpc_server_handling_seconds", threshold=0.5, quantile=0.99)
    p99.rate_window.FromSeconds(30)
    [group] = evaluate_query(query_from_proto(p99), history, 100.0)
    assert group.value == pytest.approx(0.1 + 0.9 * (0.99 * 40 - 35) / 5)

    # A plain counter rate per series, and a gauge's current value.
    rate = _condition(metric="grpc_server_handled_total", threshold=0)
    rate.rate_window.FromSeconds(30)
    by_key = {g.labels["grpc_code"] + g.labels["grpc_method"]: g.value
              for g in evaluate_query(query_from_proto(rate), history, 100.0)}
    assert by_key == pytest.approx({"OKGet": 3.0, "INTERNALGet": 1.0, "OKList": 1.0})
    gauge = _condition(metric="grpc_server_handled_total", threshold=0, labels={"grpc_code": "INTERNAL"})
    [now] = evaluate_query(query_from_proto(gauge), history, 100.0)
    assert now.value == 40.0 and now.labels["service"] == "model"


def _documented_rules() -> dict[str, alert_rule_pb2.AlertRule]:
    """The REST bodies of docs/api.md's "Alert rules" examples, by display name."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    block = text.split("Examples (REST body of `POST /v1/alertRules`):", 1)[1]
    block = block.split("```json", 1)[1].split("```", 1)[0]
    decoder, rules, at = json.JSONDecoder(), {}, 0
    while block[at:].strip():
        at += len(block[at:]) - len(block[at:].lstrip())
        body, at = decoder.raw_decode(block, at)
        rules[body["displayName"]] = json_format.ParseDict(body, alert_rule_pb2.AlertRule())
    return rules


def test_the_documented_p99_rule_judges_unary_calls_not_open_streams() -> None:
    """docs/api.md's p99 example fired for every Watch stream (its handling time is how
    long it stayed open): it keeps to grpc_type="unary"."""
    rules = _documented_rules()
    assert set(rules) == {"error ratio", "p99 latency"}
    history = SeriesHistory(clock=lambda: 400.0)
    history.want({"grpc_server_handling_seconds_bucket": 300.0})
    bounds = ("0.01", "0.1", "1.0", "10.0", "+Inf")
    for i, t in enumerate(range(100, 401, 10)):
        samples = []
        # Get: fast unary calls; WatchAlerts: streams closed after minutes (+Inf bucket).
        for le, n in zip(bounds, (10, 10, 10, 10, 10), strict=True):
            samples.append(("grpc_server_handling_seconds_bucket",
                            {"grpc_type": "unary", "grpc_method": "Get", "le": le}, float(n * i)))
        for le, n in zip(bounds, (0, 0, 0, 0, 1), strict=True):
            samples.append(("grpc_server_handling_seconds_bucket",
                            {"grpc_type": "server_stream", "grpc_method": "WatchAlerts", "le": le}, float(n * i)))
        history.ingest("monitoring", float(t), samples)
    rule = rules["p99 latency"].metric
    groups = {g.labels["grpc_method"]: g.value for g in evaluate_query(query_from_proto(rule), history, 400.0)}
    assert groups == pytest.approx({"Get": 0.0099})
    assert all(value <= rule.threshold for value in groups.values())
    query_from_proto(rules["error ratio"].metric)  # valid as written


# ------------------------------------------------------------------ real service
def _rule(**kw: Any) -> alert_rule_pb2.AlertRule:
    rule = alert_rule_pb2.AlertRule(severity=alert_pb2.ALERT_SEVERITY_WARNING, enabled=True, labels={"team": "api"},
                                    **kw)
    return rule


class Alerts:
    """A WatchAlerts stream and every event read from it so far."""

    def __init__(self, stub: Any) -> None:
        self.call = stub.WatchAlerts(rr.WatchAlertsRequest())
        self.seen: list[alert_pb2.AlertEvent] = []

    async def until(self, rule: str, kind: int, timeout: float = 30.0, drive: Any = None) -> alert_pb2.AlertEvent:
        """The first event of ``rule`` of ``kind``, calling ``drive()`` while waiting."""
        def found() -> alert_pb2.AlertEvent | None:
            return next((e for e in self.seen if e.alert.rule == rule and e.kind == kind), None)

        async def read() -> None:
            while found() is None:
                self.seen.append(await self.call.read())

        reader = asyncio.ensure_future(read())
        try:
            async with asyncio.timeout(timeout):
                while not reader.done():
                    if drive is not None:
                        await drive()
                    await asyncio.wait([reader], timeout=0.05)
                reader.result()
        finally:
            reader.cancel()
        event = found()
        assert event is not None
        return event

    def cancel(self) -> None:
        self.call.cancel()


async def test_error_ratio_and_p99_rules_fire_and_resolve_on_real_calls(
    monitoring_factory: Any, stub_factory: Any, valkey: EmbeddedValkey, stream_prefix: str,
) -> None:
    alerts_stream = stream_prefix + "events.alerts"
    mon = await monitoring_factory(redis_url=valkey.url, alerts_stream=alerts_stream,
                                   events_stream=stream_prefix + "events.health",
                                   training_events_stream=stream_prefix + "events.training")
    stub = stub_factory(mon.port)
    events = Alerts(stub)

    # Error ratio of GetAlertRule on the monitoring service itself (scraping its own metrics).
    ratio = _rule(display_name="GetAlertRule errors")
    m = ratio.metric
    m.metric = "grpc_server_handled_total"
    m.labels.update({"grpc_service": MONITORING, "grpc_method": "GetAlertRule"})
    m.matchers.add(name="grpc_code", type=alert_rule_pb2.LABEL_MATCH_TYPE_NOT_EQUAL, value="OK")
    m.denominator.labels.update({"grpc_service": MONITORING, "grpc_method": "GetAlertRule"})
    m.group_by.extend(["service", "grpc_method"])
    m.comparison = alert_rule_pb2.COMPARISON_GREATER_THAN
    m.threshold = 0.5
    m.rate_window.FromSeconds(10)
    m.for_duration.FromSeconds(1)
    ratio = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(alert_rule=ratio, alert_rule_id="errors"))

    async def fail() -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetAlertRule(rr.GetAlertRuleRequest(name="alertRules/missing"))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND

    async def succeed() -> None:
        for _ in range(3):
            await stub.GetAlertRule(rr.GetAlertRuleRequest(name=DEFAULT_RULE))

    raised = await events.until(ratio.name, alert_pb2.ALERT_CHANGE_KIND_RAISED, drive=fail)
    alert = raised.alert
    assert alert.value == pytest.approx(1.0) and alert.severity == alert_pb2.ALERT_SEVERITY_WARNING
    assert alert.labels == {"team": "api", "service": "monitoring", "grpc_method": "GetAlertRule"}
    assert alert.summary.startswith("GetAlertRule errors: 1 for")
    assert "grpc_code!=\"OK\"" in alert.description
    # Successful calls bring the ratio under the threshold: resolved.
    resolved = await events.until(ratio.name, alert_pb2.ALERT_CHANGE_KIND_RESOLVED, drive=succeed)
    assert resolved.alert.name == alert.name and resolved.alert.state == alert_pb2.ALERT_STATE_RESOLVED
    assert "Resolved: value" in resolved.alert.description

    # p99 latency of the same method: every call takes > 0 s, so "> 0" holds ...
    p99 = _rule(display_name="GetAlertRule p99")
    p = p99.metric
    p.metric = "grpc_server_handling_seconds"
    p.labels.update({"grpc_service": MONITORING, "grpc_method": "GetAlertRule"})
    p.quantile = 0.99
    p.comparison = alert_rule_pb2.COMPARISON_GREATER_THAN
    p.threshold = 0.0
    p.rate_window.FromSeconds(10)
    p99 = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(alert_rule=p99, alert_rule_id="p99"))
    fired = await events.until(p99.name, alert_pb2.ALERT_CHANGE_KIND_RAISED, drive=succeed)
    assert 0 < fired.alert.value < 5  # seconds, interpolated inside a real bucket
    # ... until the rule is disabled.
    patch = alert_rule_pb2.AlertRule(name=p99.name, enabled=False)
    await stub.UpdateAlertRule(rr.UpdateAlertRuleRequest(alert_rule=patch, update_mask={"paths": ["enabled"]}))
    off = await events.until(p99.name, alert_pb2.ALERT_CHANGE_KIND_RESOLVED)
    assert "rule disabled" in off.alert.description
    events.cancel()

    listed = await stub.ListAlerts(rr.ListAlertsRequest(rule=ratio.name))
    assert [a.name for a in listed.alerts] == [alert.name]

    # Raised and resolved went out on the bus as well.
    async with EventBus(BusConfig(url=valkey.url)) as bus:
        async with asyncio.timeout(10):
            while True:
                kinds = []
                for item in await bus.read(alerts_stream, count=1000):
                    event = item.unpack(event_pb2.Event)
                    payload = event.WhichOneof("payload")
                    if getattr(event, payload).alert.name == alert.name:
                        kinds.append(payload)
                if kinds == ["alert_raised", "alert_resolved"]:
                    break
                await asyncio.sleep(0.1)


async def test_domain_gauge_rules_on_the_training_service(
    monitoring_factory: Any, stub_factory: Any, valkey: EmbeddedValkey, stream_prefix: str, tmp_path: Any,
) -> None:
    """Rules on the training service's own gauges (docs/metrics.md): jobs waiting with no
    worker to take them raise a queue-depth and a queued-jobs alert; cancelling them
    resolves the second."""
    from agentforge.training.v1 import request_response_pb2 as trr
    from agentforge.training.v1 import training_job_pb2 as job_pb
    from agentforge.training.v1 import training_service_pb2_grpc
    from services.monitoring.config import Target
    from services.shared.config import ServerConfig
    from services.training.config import TrainingConfig
    from services.training.server import create_server
    from tests.training.conftest import tiny_spec

    config = TrainingConfig(data_dir=tmp_path / "training", redis_url=valkey.url, workers=0, key_prefix=stream_prefix)
    service, app = await create_server(config, ServerConfig(host="127.0.0.1", port=0, metrics_host="127.0.0.1",
                                                            metrics_port=0, grace_seconds=0.5, log_level="WARNING"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        training = training_service_pb2_grpc.TrainingServiceStub(channel)
        mon = await monitoring_factory(
            targets=(Target("training", f"127.0.0.1:{service.port}", f"127.0.0.1:{service.metrics_port}"),),
            redis_url=valkey.url, alerts_stream=stream_prefix + "events.alerts",
            events_stream=stream_prefix + "events.health", training_events_stream=stream_prefix + "events.training")
        stub = stub_factory(mon.port)
        events = Alerts(stub)

        def gauge_rule(metric: str, labels: dict[str, str]) -> alert_rule_pb2.AlertRule:
            rule = _rule()
            rule.metric.metric = metric
            rule.metric.labels.update(labels)
            rule.metric.comparison = alert_rule_pb2.COMPARISON_GREATER_THAN_OR_EQUAL
            rule.metric.threshold = 2
            return rule

        depth = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(
            alert_rule=gauge_rule("agentforge_training_queue_depth", {"priority": "normal"}), alert_rule_id="depth"))
        queued = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(
            alert_rule=gauge_rule("agentforge_training_jobs", {"state": "queued"}), alert_rule_id="queued"))
        jobs = [await training.CreateTrainingJob(trr.CreateTrainingJobRequest(
            training_job=job_pb.TrainingJob(spec=tiny_spec()))) for _ in range(2)]

        raised = {rule.name: (await events.until(rule.name, alert_pb2.ALERT_CHANGE_KIND_RAISED)).alert
                  for rule in (depth, queued)}
        assert raised[depth.name].value == 2 and raised[depth.name].labels["priority"] == "normal"
        assert raised[queued.name].labels["service"] == "training" and raised[queued.name].value == 2
        for job in jobs:
            await training.CancelTrainingJob(trr.CancelTrainingJobRequest(name=job.name))
        resolved = await events.until(queued.name, alert_pb2.ALERT_CHANGE_KIND_RESOLVED)
        assert resolved.alert.name == raised[queued.name].name
        # Resolved at the first evaluation under the threshold: after one cancel (1) or both (0).
        below = re.search(r"Resolved: value (\S+?)\.?$", resolved.alert.description)
        assert below is not None and float(below.group(1)) < 2, resolved.alert.description
        events.cancel()
    finally:
        await channel.close()
        await service.shutdown(0.5)
        await app.aclose()
