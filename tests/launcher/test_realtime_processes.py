"""The realtime service as several processes: names, ports, environment, Envoy cluster."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from services.launcher.envoy_config import render_envoy_config
from services.launcher.mesh import (
    ALL_SERVICES,
    MeshConfig,
    MeshPorts,
    choose_ports,
    process_specs,
    realtime_processes_from_env,
    service_of,
)


def _specs(processes: int) -> dict[str, Any]:
    config = MeshConfig(realtime_processes=processes)
    ports = choose_ports(config)
    listed = process_specs(config, ports, redis_url="redis://127.0.0.1:6379/0", data_dir="/tmp/data",
                           envoy_config_path="/tmp/envoy.yaml")
    return {"ports": ports, **{spec.name: spec for spec in listed}}


def test_three_realtime_processes_have_their_own_ports_and_the_same_command() -> None:
    specs = _specs(3)
    ports: MeshPorts = specs.pop("ports")
    assert list(specs) == ["training", "model", "realtime", "realtime-2", "realtime-3", "forge", "monitoring",
                           "envoy"]
    realtime = [specs[n] for n in ("realtime", "realtime-2", "realtime-3")]
    assert {tuple(s.argv) for s in realtime} == {tuple(specs["realtime"].argv)}
    grpc = {s.env["AF_REALTIME_PORT"] for s in realtime}
    metrics = {s.env["AF_REALTIME_METRICS_PORT"] for s in realtime}
    assert len(grpc) == len(metrics) == 3
    assert grpc == {str(ports.grpc_of(n)) for n in ports.processes_of("realtime")}
    # Peers (and every realtime process) are given the first process as AF_REALTIME_ADDR.
    first = f"127.0.0.1:{ports.grpc['realtime']}"
    assert {s.env["AF_REALTIME_ADDR"] for s in specs.values() if s.name != "envoy"} == {first}
    assert "AF_REALTIME-2_ADDR" not in specs["monitoring"].env


def test_service_of_names_the_service_of_each_process() -> None:
    assert [service_of(n) for n in ("realtime", "realtime-2", "realtime-10", "training", "envoy")] == [
        "realtime", "realtime", "realtime", "training", "envoy"]
    assert service_of("training-2") == "training-2"  # only realtime is scaled


def test_the_default_count_comes_from_the_environment_or_the_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    assert realtime_processes_from_env({"AF_REALTIME_PROCESSES": "3"}) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert realtime_processes_from_env({}) == 1
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert realtime_processes_from_env({}) == 4
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert realtime_processes_from_env({}) == 4
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="AF_REALTIME_PROCESSES"):
            realtime_processes_from_env({"AF_REALTIME_PROCESSES": bad})
    with pytest.raises(ValueError, match="realtime_processes"):
        MeshConfig(realtime_processes=0)


def test_envoys_realtime_cluster_lists_every_process_and_spreads_by_least_request() -> None:
    upstreams: dict[str, Any] = {n: ("127.0.0.1", 50000 + i) for i, n in enumerate(ALL_SERVICES)}
    upstreams["realtime"] = [("127.0.0.1", 50100), ("127.0.0.1", 50101)]
    config = yaml.safe_load(render_envoy_config(listen_port=8080, admin_port=9901, upstreams=upstreams,
                                                descriptor_path="/tmp/agentforge.binpb"))
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    realtime = clusters["realtime"]
    [group] = realtime["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"] for e in group["lb_endpoints"]] == [
        {"address": "127.0.0.1", "port_value": 50100}, {"address": "127.0.0.1", "port_value": 50101}]
    assert realtime["lb_policy"] == "LEAST_REQUEST"
    assert realtime["health_checks"]  # each endpoint is health-checked on its own
    [training] = clusters["training"]["load_assignment"]["endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in training["lb_endpoints"]] == [50000]


def test_prometheus_targets_label_every_realtime_process_as_the_realtime_service() -> None:
    from services.launcher.prometheus import file_sd_groups

    groups = file_sd_groups({"training": 9101, "realtime": 9103, "realtime-2": 9106}, service_of=service_of)
    assert [(g["targets"], g["labels"]) for g in groups] == [
        (["127.0.0.1:9101"], {"service": "training"}),
        (["127.0.0.1:9103"], {"service": "realtime"}),
        (["127.0.0.1:9106"], {"service": "realtime"}),
    ]
