"""Alert rules CRUD, alerts raised/resolved by component status, WatchAlerts, AcknowledgeAlert."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import duration_pb2, field_mask_pb2

from agentforge.monitoring.v1 import alert_pb2, alert_rule_pb2, health_pb2
from agentforge.monitoring.v1 import request_response_pb2 as rr
from services.monitoring.alerts import DEFAULT_RULE, TRAINING_RULES
from tests.support import violation_map
from services.monitoring.config import Target
from services.shared.server import Service

from .conftest import PeerProcess


def component_rule(component: str = "components/valkey", seconds: int = 30) -> alert_rule_pb2.AlertRule:
    rule = alert_rule_pb2.AlertRule(display_name="valkey down", severity=alert_pb2.ALERT_SEVERITY_WARNING,
                                    enabled=True, labels={"team": "infra"})
    rule.component_status.component = component
    rule.component_status.status = health_pb2.HEALTH_STATUS_NOT_SERVING
    rule.component_status.for_duration.CopyFrom(duration_pb2.Duration(seconds=seconds))
    return rule


async def expect_code(call: Any, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() == code, info.value.details()


async def test_alert_rule_crud(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    stub = stub_factory(mon.port)
    created = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(
        alert_rule=component_rule(), alert_rule_id="valkey-down", request_id="req-1"))
    assert created.name == "alertRules/valkey-down" and created.create_time.seconds > 0
    again = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(
        alert_rule=component_rule(), alert_rule_id="valkey-down", request_id="req-1"))
    assert again == created  # idempotent per request_id
    # The same request_id with a different request is a client bug, not a retry (issue 8).
    await expect_code(stub.CreateAlertRule(rr.CreateAlertRuleRequest(
        alert_rule=component_rule(), alert_rule_id="other", request_id="req-1")), grpc.StatusCode.INVALID_ARGUMENT)
    await expect_code(stub.CreateAlertRule(rr.CreateAlertRuleRequest(
        alert_rule=component_rule(), alert_rule_id="valkey-down")), grpc.StatusCode.ALREADY_EXISTS)

    assert await stub.GetAlertRule(rr.GetAlertRuleRequest(name=created.name)) == created
    listed = await stub.ListAlertRules(rr.ListAlertRulesRequest())
    everything = sorted([DEFAULT_RULE, *TRAINING_RULES, created.name])
    assert [r.name for r in listed.alert_rules] == everything
    first = await stub.ListAlertRules(rr.ListAlertRulesRequest(page_size=4))
    second = await stub.ListAlertRules(rr.ListAlertRulesRequest(page_size=4, page_token=first.next_page_token))
    assert [r.name for r in (*first.alert_rules, *second.alert_rules)] == everything
    assert second.next_page_token == ""

    patch = alert_rule_pb2.AlertRule(name=created.name, enabled=False, display_name="ignored")
    updated = await stub.UpdateAlertRule(rr.UpdateAlertRuleRequest(
        alert_rule=patch, update_mask=field_mask_pb2.FieldMask(paths=["enabled"])))
    assert updated.enabled is False and updated.display_name == "valkey down"
    assert updated.component_status == created.component_status

    await stub.DeleteAlertRule(rr.DeleteAlertRuleRequest(name=created.name))
    await expect_code(stub.GetAlertRule(rr.GetAlertRuleRequest(name=created.name)), grpc.StatusCode.NOT_FOUND)
    await expect_code(stub.DeleteAlertRule(rr.DeleteAlertRuleRequest(name=created.name)), grpc.StatusCode.NOT_FOUND)
    await expect_code(stub.ListAlertRules(rr.ListAlertRulesRequest(page_token="garbage")),
                      grpc.StatusCode.INVALID_ARGUMENT)


async def test_metric_rules_are_checked_beyond_buf_validate(monitoring_factory: Any, stub_factory: Any) -> None:
    mon = await monitoring_factory()
    stub = stub_factory(mon.port)
    before = [r.name for r in (await stub.ListAlertRules(rr.ListAlertRulesRequest())).alert_rules]

    def rule() -> alert_rule_pb2.AlertRule:
        r = alert_rule_pb2.AlertRule(severity=alert_pb2.ALERT_SEVERITY_INFO, enabled=True)
        r.metric.metric = "grpc_server_handling_seconds"
        r.metric.comparison = alert_rule_pb2.COMPARISON_GREATER_THAN
        r.metric.threshold = 0.5
        return r

    no_window = rule()
    no_window.metric.quantile = 0.99
    bad_regex = rule()
    bad_regex.metric.rate_window.FromSeconds(60)
    bad_regex.metric.matchers.add(name="grpc_code", type=alert_rule_pb2.LABEL_MATCH_TYPE_REGEX, value="(OK")
    for bad, field in ((no_window, "alert_rule.metric.rate_window"),
                       (bad_regex, "alert_rule.metric.matchers[0].value")):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.CreateAlertRule(rr.CreateAlertRuleRequest(alert_rule=bad))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in violation_map(info.value)
    assert [r.name for r in (await stub.ListAlertRules(rr.ListAlertRulesRequest())).alert_rules] == before

    p99 = rule()
    p99.metric.quantile = 0.99
    p99.metric.rate_window.FromSeconds(60)
    p99.metric.group_by.extend(["service", "grpc_method"])
    created = await stub.CreateAlertRule(rr.CreateAlertRuleRequest(alert_rule=p99, alert_rule_id="p99"))
    assert created.metric == p99.metric and created.name == "alertRules/p99"


async def test_killed_service_raises_then_resolves_an_alert(
    monitoring_factory: Any, stub_factory: Any, peer_process: PeerProcess, peer_inproc: list[Service],
) -> None:
    mon = await monitoring_factory(targets=(Target("model", peer_process.address),), default_rule_for_s=0.5)
    stub = stub_factory(mon.port)
    events = stub.WatchAlerts(rr.WatchAlertsRequest())

    async def next_event() -> alert_pb2.AlertEvent:
        return await asyncio.wait_for(events.read(), 5)

    peer_process.kill()
    raised = await next_event()
    assert raised.kind == alert_pb2.ALERT_CHANGE_KIND_RAISED and raised.sequence == 1
    alert = raised.alert
    assert alert.rule == DEFAULT_RULE and alert.state == alert_pb2.ALERT_STATE_FIRING
    assert alert.labels["component"] == "components/model"
    assert alert.severity == alert_pb2.ALERT_SEVERITY_CRITICAL
    assert alert.summary.startswith("components/model NOT_SERVING for")
    assert alert.value == health_pb2.HEALTH_STATUS_NOT_SERVING

    acked = await stub.AcknowledgeAlert(rr.AcknowledgeAlertRequest(name=alert.name, acknowledged_by="ops", comment="on it"))
    assert acked.state == alert_pb2.ALERT_STATE_ACKNOWLEDGED and acked.acknowledged_by == "ops"
    again = await stub.AcknowledgeAlert(rr.AcknowledgeAlertRequest(name=alert.name, acknowledged_by="other"))
    assert again == acked  # acknowledging twice changes nothing
    assert (await next_event()).kind == alert_pb2.ALERT_CHANGE_KIND_ACKNOWLEDGED

    peer_process.start()
    resolved = await next_event()
    assert resolved.kind == alert_pb2.ALERT_CHANGE_KIND_RESOLVED and resolved.sequence == 3
    assert resolved.alert.state == alert_pb2.ALERT_STATE_RESOLVED and resolved.alert.resolve_time.seconds > 0
    events.cancel()

    await expect_code(stub.AcknowledgeAlert(rr.AcknowledgeAlertRequest(name=alert.name, acknowledged_by="ops")),
                      grpc.StatusCode.FAILED_PRECONDITION)
    listed = await stub.ListAlerts(rr.ListAlertsRequest(states=[alert_pb2.ALERT_STATE_RESOLVED]))
    assert [a.name for a in listed.alerts] == [alert.name]
    assert (await stub.ListAlerts(rr.ListAlertsRequest(states=[alert_pb2.ALERT_STATE_FIRING]))).alerts == []
    assert (await stub.GetAlert(rr.GetAlertRequest(name=alert.name))).state == alert_pb2.ALERT_STATE_RESOLVED

    # Resuming from the first event's cursor replays only what came after it.
    resumed = stub.WatchAlerts(rr.WatchAlertsRequest(cursor=raised.cursor))
    replay = [await asyncio.wait_for(resumed.read(), 5) for _ in range(2)]
    assert [e.sequence for e in replay] == [2, 3] and {e.epoch for e in replay} == {raised.epoch}
    resumed.cancel()
    await expect_code(stub.GetAlert(rr.GetAlertRequest(name="alerts/nope")), grpc.StatusCode.NOT_FOUND)
    bad = stub.WatchAlerts(rr.WatchAlertsRequest(cursor="garbage"))
    await expect_code(bad.read(), grpc.StatusCode.INVALID_ARGUMENT)
