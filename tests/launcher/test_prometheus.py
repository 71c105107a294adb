"""deploy/: the Prometheus config finds what the launcher starts; the Grafana dashboard is sane.

No mesh here (tests/e2e/test_metrics_e2e.py scrapes a real one): the config parses, its
file_sd glob is where the launcher writes its targets, the compose targets are compose's
metrics addresses, and the dashboard JSON has what Grafana needs to import it.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.launcher.__main__ import _parser
from services.launcher.mesh import ALL_SERVICES, REPO_ROOT
from services.launcher.prometheus import TARGETS_FILE, file_sd_groups, remove_targets, write_targets

DEPLOY = REPO_ROOT / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "agentforge-mesh.json"


@pytest.fixture(scope="module")
def prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_YML.read_text())


def sd_globs(config: dict[str, Any]) -> list[Path]:
    """The file_sd globs of the config, resolved as Prometheus does (relative to the file)."""
    return [(PROMETHEUS_YML.parent / pattern).resolve(strict=False)
            for job in config["scrape_configs"] for sd in job.get("file_sd_configs", [])
            for pattern in sd["files"]]


def test_prometheus_config_parses_with_one_file_sd_job(prometheus: dict[str, Any]) -> None:
    assert prometheus["global"]["scrape_interval"].endswith("s")
    (job,) = prometheus["scrape_configs"]
    assert job["job_name"] == "agentforge"
    assert set(job) <= {"job_name", "file_sd_configs", "scrape_interval", "scrape_timeout", "metrics_path"}
    assert len(sd_globs(prometheus)) == 1


def test_the_file_sd_glob_matches_the_file_make_up_writes(prometheus: dict[str, Any]) -> None:
    for command in ("up", "run"):  # make up / make run: the launcher's default run dir
        run_dir = _parser().parse_args([command]).run_dir
        written = (Path(run_dir) / TARGETS_FILE).resolve(strict=False)
        assert any(fnmatch.fnmatch(str(written), str(g)) for g in sd_globs(prometheus)), (written, command)


def test_targets_file_lists_every_metrics_endpoint_and_envoy(tmp_path: Path) -> None:
    ports = {"training": 9101, "model": 9102, "realtime": -1}  # -1: metrics off, not a target
    path = write_targets(tmp_path, file_sd_groups(ports, envoy_admin_port=9901))
    assert json.loads(path.read_text()) == [
        {"targets": ["127.0.0.1:9101"], "labels": {"service": "training"}},
        {"targets": ["127.0.0.1:9102"], "labels": {"service": "model"}},
        {"targets": ["127.0.0.1:9901"], "labels": {"service": "envoy", "__metrics_path__": "/stats/prometheus"}},
    ]
    remove_targets(tmp_path)
    assert not path.exists()
    remove_targets(tmp_path)  # idempotent


def test_compose_targets_are_the_compose_metrics_addresses() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    env = {k: str(v) for k, v in compose["services"]["training"]["environment"].items()}
    groups = json.loads((DEPLOY / "prometheus" / "compose" / "agentforge.json").read_text())
    by_service = {g["labels"]["service"]: g for g in groups}
    assert set(by_service) == {*ALL_SERVICES, "envoy"}
    for name in ALL_SERVICES:
        assert by_service[name]["targets"] == [env[f"AF_{name.upper()}_METRICS_ADDR"]]
        own = {k: str(v) for k, v in compose["services"][name]["environment"].items()}
        assert by_service[name]["targets"][0].endswith(":" + own[f"AF_{name.upper()}_METRICS_PORT"])
    assert by_service["envoy"]["targets"] == [env["AF_ENVOY_ADMIN_ADDR"]]
    assert by_service["envoy"]["labels"]["__metrics_path__"] == "/stats/prometheus"


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def test_grafana_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "agentforge-mesh" and len(dashboard["uid"]) <= 40
    assert dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["title"], panel
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        pos = panel["gridPos"]
        assert 0 <= pos["x"] and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]
