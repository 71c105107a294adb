"""The metrics of a real mesh: as documented (docs/metrics.md), discoverable by the
shipped Prometheus config, and everything the Grafana dashboard queries exists.

One scrape of every service while a training job is RUNNING (so its per-job series
exist), after a call to every service (so per-RPC series exist).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.launcher.mesh import ALL_SERVICES, REPO_ROOT, Mesh
from services.launcher.prometheus import TARGETS_FILE

from .conftest import step_of, tiny_job, wait_job

pytestmark = pytest.mark.e2e

DOC = REPO_ROOT / "docs" / "metrics.md"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "agentforge-mesh.json"
#: Exported families that are ours to document (Envoy's and the client library's are not).
OURS = re.compile(r"^(agentforge_|grpc_server_)")


# --- the documentation table ------------------------------------------------------------


def documented() -> dict[str, dict[str, Any]]:
    """``docs/metrics.md``'s table: ``{name: {type, unit, labels, services}}``."""
    rows: dict[str, dict[str, Any]] = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 6 or not cells[0].startswith("`"):
            continue
        name, kind, unit, labels, services, _meaning = cells
        rows[name.strip("`")] = {
            "type": kind,
            "unit": None if unit == "—" else unit,
            "labels": set() if labels == "—" else {x.strip().strip("`") for x in labels.split(",")},
            "services": {s.strip() for s in services.split(",")},
        }
    return rows


def family_name(name: str, kind: str) -> str:
    """The family name the text parser reports for a documented sample name."""
    return name.removesuffix("_total") if kind == "counter" else name


# --- PromQL ---------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset",
             "and", "or", "unless", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, keywords, durations)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # groupings
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group().lower() in _KEYWORDS:
            continue  # a function or an aggregation
        names.add(m.group())
    return names


def test_promql_metrics_finds_names_not_functions_or_labels() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, grpc_service) '
            '(rate(grpc_server_handling_seconds_bucket{grpc_type="unary"}[5m]))) / on (x) up')
    assert promql_metrics(expr) == {"grpc_server_handling_seconds_bucket", "up"}


# --- the scrape ---------------------------------------------------------------------------


@dataclass
class Scrape:
    #: ``{service: {family name: family}}``
    families: dict[str, dict[str, Any]]
    #: The training job that was RUNNING during the scrape.
    job: str


@pytest.fixture(scope="module")
def scraped(mesh: Mesh) -> Scrape:
    """One scrape of every service, while a job is RUNNING."""
    with httpx.Client(base_url=mesh.edge_url, timeout=30) as rest:
        for path in ("/v1/trainingJobs", "/v1/models", "/v1/topics", "/v1/alertRules", "/v1/phaseRuns"):
            assert rest.get(path).status_code == 200, path  # a call to every service
        resp = rest.post("/v1/trainingJobs", json=tiny_job(maxSteps="3000", evalInterval="1000",
                                                           checkpointInterval="1000"))
        assert resp.status_code == 200, resp.text
        name = resp.json()["name"]
        try:
            wait_job(rest, name, lambda j: j["state"] == "TRAINING_JOB_STATE_RUNNING" and step_of(j) >= 3,
                     timeout=90)
            out: dict[str, dict[str, Any]] = {}
            for service, port in mesh.metrics_ports.items():
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
                out[service] = {f.name: f for f in text_string_to_metric_families(text)}
        finally:
            rest.post(f"/v1/{name}:cancel", json={})
    return Scrape(out, name)


def test_every_documented_metric_is_served_with_its_type_labels_and_unit(scraped: Scrape) -> None:
    docs = documented()
    assert len(docs) >= 25
    for name, row in docs.items():
        if row["unit"]:  # the unit is in the name (Prometheus naming)
            assert re.search(rf"_{row['unit']}(_total)?$", name), f"{name}: unit {row['unit']} not in the name"
        if row["type"] == "counter":
            assert name.endswith("_total"), name
        assert row["services"] <= set(ALL_SERVICES), name
        for service in row["services"]:
            family = scraped.families[service].get(family_name(name, row["type"]))
            assert family is not None, f"{name} is documented for {service} but not served by it"
            assert family.type == row["type"], (name, service, family.type)
            samples = [s for s in family.samples if not s.name.endswith("_created")]
            assert samples, f"{name} has no series on {service}"
            for sample in samples:
                labels = set(sample.labels) - {"le"}
                assert labels == row["labels"], (name, service, sorted(labels))


def test_every_metric_the_services_serve_is_documented(scraped: Scrape) -> None:
    docs = {family_name(n, r["type"]): (n, r) for n, r in documented().items()}
    for service in ALL_SERVICES:
        for family in scraped.families[service]:
            if OURS.match(family):
                assert family in docs, f"{service} serves {family}, which docs/metrics.md does not list"
                assert service in docs[family][1]["services"], f"{family} is served by {service} too"


def test_the_running_job_has_its_series_and_labels_stay_bounded(scraped: Scrape) -> None:
    training = scraped.families["training"]
    job = scraped.job
    for family in ("agentforge_training_job_step", "agentforge_training_job_steps_per_second",
                   "agentforge_training_job_examples_per_second", "agentforge_training_job_loss"):
        values = {s.labels["training_job"]: s.value for s in training[family].samples}
        assert job in values, family
        assert len(values) <= 2, f"{family}: a series per RUNNING job only (2 workers): {sorted(values)}"
    assert {s.labels["state"]: s.value for s in training["agentforge_training_jobs"].samples}["running"] >= 1
    workers = {s.labels["state"]: s.value for s in training["agentforge_training_workers"].samples}
    assert workers["busy"] >= 1 and workers["busy"] + workers["idle"] == 2


def test_every_grafana_expression_names_only_served_metrics(scraped: Scrape) -> None:
    served = {s.name for service in ALL_SERVICES for f in scraped.families[service].values() for s in f.samples}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    for expr in exprs:
        names = promql_metrics(expr)
        assert names, expr
        assert names <= served, f"{expr}: {sorted(names - served)} not served by the mesh"


def test_prometheus_targets_file_names_every_metrics_port(mesh: Mesh) -> None:
    groups = json.loads((Path(mesh.run_dir) / TARGETS_FILE).read_text())
    by_service = {g["labels"]["service"]: g["targets"] for g in groups}
    assert by_service == {**{n: [f"127.0.0.1:{p}"] for n, p in mesh.metrics_ports.items()},
                          "envoy": [f"127.0.0.1:{mesh.admin_port}"]}
    envoy = httpx.get(f"http://127.0.0.1:{mesh.admin_port}/stats/prometheus", timeout=10)
    assert envoy.status_code == 200 and "envoy_" in envoy.text
