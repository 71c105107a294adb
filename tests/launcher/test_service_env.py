"""The environment the launcher gives each service, read back the way the services read it."""

from __future__ import annotations

from services.launcher.mesh import ALL_SERVICES, MeshConfig, MeshPorts, process_specs
from services.monitoring.config import MonitoringConfig, Target

GRPC = {n: 50000 + i for i, n in enumerate(ALL_SERVICES)}
METRICS = {n: 51000 + i for i, n in enumerate(ALL_SERVICES)}


def _env(name: str, metrics: dict[str, int] = METRICS) -> dict[str, str]:
    ports = MeshPorts(grpc=GRPC, metrics=metrics, edge=8080, admin=9901)
    specs = process_specs(MeshConfig(), ports, redis_url="redis://127.0.0.1:6379/0", data_dir="/tmp/data",
                          envoy_config_path="/tmp/envoy.yaml")
    (spec,) = [s for s in specs if s.name == name]
    return spec.env


def test_monitoring_gets_every_services_metrics_address() -> None:
    env = _env("monitoring")
    for name in ALL_SERVICES:
        assert env[f"AF_{name.upper()}_METRICS_ADDR"] == f"127.0.0.1:{METRICS[name]}"
    config = MonitoringConfig.from_env(env)
    assert config.targets == tuple(
        Target(n, f"127.0.0.1:{GRPC[n]}", f"127.0.0.1:{METRICS[n]}") for n in ALL_SERVICES
    )
    assert config.envoy_admin_addr == "127.0.0.1:9901"


def test_a_service_with_metrics_off_has_no_metrics_address() -> None:
    env = _env("monitoring", {**METRICS, "model": -1})
    assert "AF_MODEL_METRICS_ADDR" not in env
    assert env["AF_TRAINING_METRICS_ADDR"] == f"127.0.0.1:{METRICS['training']}"
    model = MonitoringConfig.from_env(env).target("model")
    assert model is not None and model.metrics_address is None
