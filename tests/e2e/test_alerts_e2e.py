"""Alert rules through the edge on the whole mesh: docs/api.md's metric rule examples over
REST, and a built-in training alert raised by a real diverging job (the launcher's
monitoring follows the real events.training)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from .conftest import tiny_job

pytestmark = pytest.mark.e2e

ERROR_RATIO = {
    "displayName": "error ratio", "severity": "ALERT_SEVERITY_WARNING", "enabled": True,
    "metric": {"metric": "grpc_server_handled_total",
               "matchers": [{"name": "grpc_code", "type": "LABEL_MATCH_TYPE_REGEX",
                             "value": "UNKNOWN|INTERNAL|UNAVAILABLE|DEADLINE_EXCEEDED|DATA_LOSS|UNIMPLEMENTED"}],
               "denominator": {}, "groupBy": ["service"],
               "comparison": "COMPARISON_GREATER_THAN", "threshold": 0.05,
               "rateWindow": "300s", "forDuration": "60s"},
}
P99 = {
    "displayName": "p99 latency", "severity": "ALERT_SEVERITY_WARNING", "enabled": True,
    "metric": {"metric": "grpc_server_handling_seconds", "quantile": 0.99,
               "labels": {"grpc_type": "unary"}, "groupBy": ["service", "grpc_method"],
               "comparison": "COMPARISON_GREATER_THAN", "threshold": 0.5,
               "rateWindow": "300s", "forDuration": "60s"},
}


def test_the_documented_metric_rules_are_accepted_over_rest(rest: httpx.Client) -> None:
    created = []
    for body in (ERROR_RATIO, P99):
        resp = rest.post("/v1/alertRules", json=body)
        assert resp.status_code == 200, resp.text
        rule = resp.json()
        created.append(rule["name"])
        for key, value in body["metric"].items():
            assert rule["metric"][key] == value, (key, rule)
    bad: dict[str, Any] = {**P99, "metric": {k: v for k, v in P99["metric"].items() if k != "rateWindow"}}
    resp = rest.post("/v1/alertRules", json=bad)
    assert resp.status_code == 400, resp.text
    fields = [v["field"] for d in resp.json()["details"] for v in d.get("fieldViolations", [])]
    assert "alert_rule.metric.rate_window" in fields
    listed = [r["name"] for r in rest.get("/v1/alertRules", params={"pageSize": 100}).json()["alertRules"]]
    assert {"alertRules/training-job-stalled", "alertRules/training-job-diverged",
            "alertRules/training-grokking-onset", "alertRules/training-train-val-gap", *created} <= set(listed)
    for name in created:
        assert rest.delete(f"/v1/{name}").status_code == 200


def test_a_diverging_job_raises_its_alert_over_rest(rest: httpx.Client) -> None:
    # Long enough to still run when the alert is judged; cancelled once it shows.
    body = tiny_job(maxSteps="1000000", progressInterval="5", checkpointInterval="1000000")
    body["spec"]["optimizer"]["learningRate"] = 10.0
    resp = rest.post("/v1/trainingJobs", json=body)
    assert resp.status_code == 200, resp.text
    name = resp.json()["name"]
    deadline = time.monotonic() + 90
    try:
        while True:
            alerts = rest.get("/v1/alerts", params={"rule": "alertRules/training-job-diverged"}).json().get("alerts", [])
            mine = [a for a in alerts if a["labels"].get("training_job") == name]
            if mine:
                break
            assert time.monotonic() < deadline, f"no diverged alert for {name}: {alerts}"
            time.sleep(0.2)
    finally:
        assert rest.post(f"/v1/{name}:cancel", json={}).status_code == 200
    assert mine[0]["summary"].startswith(f"{name} diverged:")
    assert mine[0]["severity"] == "ALERT_SEVERITY_WARNING"
