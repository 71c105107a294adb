"""docker-compose.yml runs the same processes with the same environment as the launcher.

Parsed with PyYAML (merge keys resolved); no Docker engine is needed.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.launcher.envoy_config import render_envoy_config, values_from_env
from services.shared.supervision import RestartPolicy
from services.launcher.mesh import (
    ALL_SERVICES,
    DEPENDENCIES,
    REPO_ROOT,
    MeshConfig,
    MeshPorts,
    envoy_argv,
    process_specs,
    service_of,
)

COMPOSE = REPO_ROOT / "docker-compose.yml"
#: Variables whose values name hosts, ports or paths, so they differ between the two.
PLACEMENT = re.compile(r"^(AF_[A-Z]+_(HOST|PORT|ADDR|METRICS_HOST|METRICS_PORT|METRICS_ADDR)|AF_ENVOY_(ADMIN|EDGE)_ADDR|REDIS_URL|AF_DATA_DIR|AF_SECRETS_DIR|AF_TRACES_DIR|PYTHONPATH)$")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _replicas(service: dict[str, Any]) -> int:
    """``deploy.replicas`` with compose's ``${VAR:-default}`` resolved to its default."""
    raw = str(service.get("deploy", {}).get("replicas", 1))
    found = re.fullmatch(r"\$\{(\w+):-(\d+)\}", raw)
    return int(found.group(2)) if found else int(raw)


@pytest.fixture(scope="module")
def specs(compose: dict[str, Any]) -> dict[str, Any]:
    processes = _replicas(compose["services"]["realtime"])
    config = MeshConfig(realtime_processes=processes)
    ports = MeshPorts(
        grpc={n: 50000 + i for i, n in enumerate(ALL_SERVICES)},
        metrics={n: 51000 + i for i, n in enumerate(ALL_SERVICES)},
        edge=8080,
        admin=9901,
        extra={f"realtime-{i}": (52000 + i, 53000 + i) for i in range(2, processes + 1)},
    )
    listed = process_specs(config, ports, redis_url="redis://127.0.0.1:6379/0", data_dir="/tmp/data",
                           envoy_config_path="/tmp/envoy.yaml")
    return {spec.name: spec for spec in listed}


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment"
    return {k: str(v) for k, v in env.items()}


def _port_of(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_same_processes(compose: dict[str, Any], specs: dict[str, Any]) -> None:
    assert set(compose["services"]) == {*map(service_of, specs), "valkey", "secrets"}
    for name in ALL_SERVICES:
        assert compose["services"][name]["command"] == ["python", *specs[name].argv[1:]]
        assert specs[name].argv[1:] == ["-m", f"services.{name}"]


def test_realtime_runs_as_many_containers_as_the_launcher_runs_processes(
    compose: dict[str, Any], specs: dict[str, Any]
) -> None:
    # Both read AF_REALTIME_PROCESSES; compose's default is 2 (the launcher's: CPUs/2).
    replicas = compose["services"]["realtime"]["deploy"]["replicas"]
    assert replicas == "${AF_REALTIME_PROCESSES:-2}"
    realtime = [spec for name, spec in specs.items() if service_of(name) == "realtime"]
    assert len(realtime) == _replicas(compose["services"]["realtime"]) == 2
    for spec in realtime:  # the same command and environment but for their own ports
        assert spec.argv == specs["realtime"].argv
        assert {k: v for k, v in spec.env.items() if not PLACEMENT.match(k)} == {
            k: v for k, v in specs["realtime"].env.items() if not PLACEMENT.match(k)}
    assert specs["realtime-2"].env["AF_REALTIME_PORT"] != specs["realtime"].env["AF_REALTIME_PORT"]
    for name, service in compose["services"].items():
        assert name == "realtime" or "replicas" not in service.get("deploy", {}), name


def test_every_launcher_variable_is_set_with_the_same_value_unless_it_is_placement(
    compose: dict[str, Any], specs: dict[str, Any]
) -> None:
    for name in ALL_SERVICES:
        launcher_env = specs[name].env
        compose_env = _env(compose["services"][name])
        missing = set(launcher_env) - set(compose_env)
        assert not missing, f"{name}: compose lacks {sorted(missing)}"
        for key, value in launcher_env.items():
            if not PLACEMENT.match(key):
                assert compose_env[key] == value, f"{name}: {key}"


def test_ports_agree_between_services_peers_and_envoy(compose: dict[str, Any]) -> None:
    services = compose["services"]
    grpc_ports = {n: int(_env(services[n])[f"AF_{n.upper()}_PORT"]) for n in ALL_SERVICES}
    for name in ALL_SERVICES:
        env = _env(services[name])
        for peer in ALL_SERVICES:
            host, _, port = env[f"AF_{peer.upper()}_ADDR"].rpartition(":")
            assert (host, int(port)) == (peer, grpc_ports[peer]), f"{name} sees {peer} elsewhere"
        assert env[f"AF_{name.upper()}_HOST"] == "0.0.0.0"
        assert env["REDIS_URL"].startswith("redis://agentforge@valkey:")
        assert env["AF_REDIS_PASSWORD_FILE"].startswith(env["AF_SECRETS_DIR"] + "/")
        test = services[name]["healthcheck"]["test"]
        assert test[-1] == f"127.0.0.1:{grpc_ports[name]}"
    envoy_env = _env(services["envoy"])
    assert _port_of(_env(services["forge"])["AF_ENVOY_EDGE_ADDR"]) == int(envoy_env["EDGE_PORT"])
    assert _port_of(_env(services["forge"])["AF_ENVOY_ADMIN_ADDR"]) == int(envoy_env["ADMIN_PORT"])
    published = [str(p) for p in services["envoy"]["ports"]]
    assert any(p.endswith(f":{envoy_env['EDGE_PORT']}") for p in published), published


def test_metrics_addresses_name_each_services_host_and_metrics_port(compose: dict[str, Any]) -> None:
    services = compose["services"]
    metrics_ports = {n: int(_env(services[n])[f"AF_{n.upper()}_METRICS_PORT"]) for n in ALL_SERVICES}
    for name in ALL_SERVICES:
        env = _env(services[name])
        assert env[f"AF_{name.upper()}_METRICS_HOST"] == "0.0.0.0"
        for peer in ALL_SERVICES:
            host, _, port = env[f"AF_{peer.upper()}_METRICS_ADDR"].rpartition(":")
            assert (host, int(port)) == (peer, metrics_ports[peer]), f"{name} scrapes {peer} elsewhere"


def test_envoy_admin_is_reachable_on_the_compose_network_but_not_published(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envoy_env = _env(services["envoy"])
    kwargs = values_from_env(envoy_env)
    assert kwargs["admin_address"] == "0.0.0.0"
    admin = yaml.safe_load(render_envoy_config(**kwargs))["admin"]["address"]["socket_address"]  # type: ignore[arg-type]
    assert admin == {"address": "0.0.0.0", "port_value": int(envoy_env["ADMIN_PORT"])}
    assert _env(services["monitoring"])["AF_ENVOY_ADMIN_ADDR"] == f"envoy:{envoy_env['ADMIN_PORT']}"
    for name, service in services.items():
        published = [str(p) for p in service.get("ports", [])]
        assert not [p for p in published if p.rsplit(":", 1)[-1] == envoy_env["ADMIN_PORT"]], (name, published)
        assert name == "envoy" or not published, f"{name} publishes {published}"


def test_envoy_renders_the_same_template_from_the_compose_environment(
    compose: dict[str, Any], specs: dict[str, Any]
) -> None:
    envoy = compose["services"]["envoy"]
    env = _env(envoy)
    kwargs = values_from_env(env)
    upstreams = kwargs["upstreams"]
    assert upstreams == {n: (n, int(_env(compose["services"][n])[f"AF_{n.upper()}_PORT"])) for n in ALL_SERVICES}
    text = render_envoy_config(**kwargs)  # type: ignore[arg-type]
    assert f"port_value: {env['EDGE_PORT']}" in text
    script = envoy["command"][-1]
    assert "python -m services.launcher.envoy_config --out /tmp/envoy.yaml" in script
    launcher_argv = specs["envoy"].argv
    assert launcher_argv == envoy_argv("envoy", "/tmp/envoy.yaml", MeshConfig().envoy_log_level)
    assert shlex.join(launcher_argv) in " ".join(script.split())


def test_start_order_follows_the_launcher_dependencies(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ALL_SERVICES:
        depends = services[name]["depends_on"]
        assert set(depends) == {"secrets", "valkey", *DEPENDENCIES[name]}
        assert depends.pop("secrets")["condition"] == "service_completed_successfully"
        assert all(d["condition"] == "service_healthy" for d in depends.values())
    assert set(services["envoy"]["depends_on"]) == set(ALL_SERVICES)


def test_dockerfile_installs_requirements_and_torch_and_copies_the_code(compose: dict[str, Any]) -> None:
    dockerfiles = set()
    for name in (*ALL_SERVICES, "envoy"):
        build = compose["services"][name]["build"]
        dockerfiles.add(Path(build["context"]) / build["dockerfile"])
    assert len(dockerfiles) == 1
    path = REPO_ROOT / dockerfiles.pop()
    text = path.read_text()
    assert re.search(r"pip install -r requirements\.txt", text)
    assert re.search(r"pip install torch==2\.13\.0\b", text)
    for directory in ("gen", "services", "envoy"):
        assert re.search(rf"^COPY {directory}/ {directory}/$", text, re.M), directory
    # The dashboard is built in its own stage from the lock file; Envoy serves its dist/.
    assert re.search(r"^RUN cd dashboard && npm ci\b", text, re.M)
    assert re.search(r"^COPY --from=dashboard \S+/dashboard/dist/ dashboard/dist/$", text, re.M)
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert not {"gen", "services", "envoy", "requirements.txt"} & set(ignored)
    assert ".venv" in ignored and "**/node_modules" in ignored  # the host's modules stay out


def test_every_container_restarts_on_failure_with_the_launchers_burst(compose: dict[str, Any]) -> None:
    # The launcher restarts what crashes and gives up after RestartPolicy.burst restarts;
    # compose mirrors it for every process, Valkey and Envoy included.
    burst = RestartPolicy().burst
    for name, service in compose["services"].items():
        assert service.get("restart") == f"on-failure:{burst}", name


def test_compose_is_the_production_profile_tls_only_with_secrets_from_a_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    envoy_env = _env(services["envoy"])
    assert envoy_env["EDGE_PLAINTEXT"] == "0"
    kwargs = values_from_env(envoy_env)
    assert kwargs["plaintext"] is False
    text = render_envoy_config(**kwargs)  # type: ignore[arg-type]
    assert "edge-plaintext-loopback" not in text and "transport_protocol: tls" in text
    for name in (*ALL_SERVICES, "envoy", "valkey"):
        assert "secrets:/secrets:ro" in services[name]["volumes"], name
    assert services["secrets"]["command"] == ["python", "-m", "services.shared.auth", "init"]
    assert "--aclfile" in services["valkey"]["command"][-1] and "user default off" in services["valkey"]["command"][-1]
