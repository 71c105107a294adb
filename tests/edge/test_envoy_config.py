"""The rendered Envoy config: Envoy accepts it, and it covers every service of the contracts.

The service and method lists come from the descriptor set Envoy loads
(gen/descriptor/agentforge.binpb), not from a list in this file.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2
from google.rpc import status_pb2

from services.launcher.envoy_config import (
    DEFAULT_CORS_ALLOW_ORIGIN_REGEX,
    SERVICES,
    EdgeLimits,
    TemplateError,
    default_descriptor_path,
    default_template_path,
    render_envoy_config,
    render_template,
)

from .conftest import ENVOY, ROOT

UPSTREAMS = {name: (f"{name}.internal", 50051 + i) for i, name in enumerate(SERVICES)}


def _render(**overrides: Any) -> str:
    kwargs: dict[str, Any] = {
        "listen_port": 18080,
        "admin_port": 19901,
        "upstreams": UPSTREAMS,
        "descriptor_path": default_descriptor_path(),
    }
    kwargs.update(overrides)
    return render_envoy_config(**kwargs)


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(_render())


@pytest.fixture(scope="module")
def hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    tls, plaintext = listener["filter_chains"]  # one HTTP stack behind both (a YAML anchor)
    assert tls["filters"] == plaintext["filters"]
    (manager,) = tls["filters"]
    return manager["typed_config"]


@pytest.fixture(scope="module")
def routes(hcm: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    return vhost["routes"]


@pytest.fixture(scope="module")
def api_services() -> dict[str, list[descriptor_pb2.MethodDescriptorProto]]:
    """Every agentforge service in the descriptor set, with its methods."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(default_descriptor_path().read_bytes())
    found: dict[str, list[descriptor_pb2.MethodDescriptorProto]] = {}
    for file in fds.file:
        if not file.package.startswith("agentforge."):
            continue
        for service in file.service:
            found[f"{file.package}.{service.name}"] = list(service.method)
    assert len(found) == len(SERVICES), found.keys()
    return found


def _transcoder(hcm: dict[str, Any]) -> dict[str, Any]:
    (f,) = [f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.grpc_json_transcoder"]
    return f["typed_config"]


def _header_matches(matcher: dict[str, Any], headers: dict[str, str]) -> bool:
    value = headers.get(matcher["name"])
    if "present_match" in matcher:
        hit = (value is not None) == matcher["present_match"]
    else:
        string = matcher["string_match"]
        if value is None:
            hit = False
        elif "prefix" in string:
            hit = value.startswith(string["prefix"])
        elif "exact" in string:
            hit = value == string["exact"]
        elif "contains" in string:
            hit = string["contains"] in value
        else:
            hit = re.fullmatch(string["safe_regex"]["regex"], value) is not None
    return hit != matcher.get("invert_match", False)


def _first_match(routes: list[dict[str, Any]], path: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The route Envoy picks for ``path`` with ``headers`` (default: a gRPC POST
    without grpc-timeout)."""
    request = {":method": "POST", "content-type": "application/grpc", **(headers or {})}
    for route in routes:
        match = route["match"]
        if not all(_header_matches(h, request) for h in match.get("headers", [])):
            continue
        if "path" in match and match["path"] == path:
            return route
        if "safe_regex" in match and re.fullmatch(match["safe_regex"]["regex"], path):
            return route
        if "prefix" in match and path.startswith(match["prefix"]):
            return route
    raise AssertionError(f"no route for {path}")


def test_rendered_config_passes_envoy_validate(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(_render())
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_http_filters_run_grpc_web_cors_transcoder_router(hcm: dict[str, Any]) -> None:
    names = [f["name"] for f in hcm["http_filters"]]
    core = [n for n in names if n not in ("envoy.filters.http.buffer", "envoy.filters.http.lua")]
    assert core == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.router",
    ]
    # the REST body cap sits before the transcoder and is off unless a route enables it
    buffer = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.buffer")
    assert names.index("envoy.filters.http.buffer") < names.index("envoy.filters.http.grpc_json_transcoder")
    assert buffer["disabled"] is True
    # the strict REST body check (Lua) sits before the transcoder, off unless a route enables it
    lua = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.lua")
    assert names.index("envoy.filters.http.lua") < names.index("envoy.filters.http.grpc_json_transcoder")
    assert lua["disabled"] is True


def test_transcoder_is_strict_and_converts_status(hcm: dict[str, Any]) -> None:
    t = _transcoder(hcm)
    assert t["proto_descriptor"] == str(default_descriptor_path())
    assert t["convert_grpc_status"] is True
    assert t["auto_mapping"] is False
    assert t["request_validation_options"] == {
        "reject_unknown_method": True,
        "reject_unknown_query_parameters": True,
        "reject_binding_body_field_collisions": True,
    }
    assert t["print_options"]["stream_newline_delimited"] is True
    assert t["print_options"]["preserve_proto_field_names"] is False


def test_every_service_is_transcoded_routed_and_has_a_health_checked_h2_cluster(
    hcm: dict[str, Any], routes: list[dict[str, Any]], config: dict[str, Any],
    api_services: dict[str, list[Any]],
) -> None:
    assert sorted(_transcoder(hcm)["services"]) == sorted(api_services)
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    for service, methods in api_services.items():
        for method in methods:
            route = _first_match(routes, f"/{service}/{method.name}")
            cluster = clusters[route["route"]["cluster"]]
            (check,) = cluster["health_checks"]
            assert check["grpc_health_check"]["service_name"] == service
        short = service.split(".")[1]
        cluster = clusters[short]
        assert cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"] == {"address": UPSTREAMS[short][0], "port_value": UPSTREAMS[short][1]}
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        assert "http2_protocol_options" in options["explicit_http_config"]
        assert cluster["circuit_breakers"]["thresholds"]
        assert cluster["outlier_detection"]["consecutive_gateway_failure"] > 0


def test_streams_have_no_timeout_and_are_never_retried(
    routes: list[dict[str, Any]], api_services: dict[str, list[Any]],
) -> None:
    streaming = 0
    for service, methods in api_services.items():
        for method in methods:
            action = _first_match(routes, f"/{service}/{method.name}")["route"]
            if method.server_streaming or method.client_streaming:
                streaming += 1
                assert action["timeout"] == "0s", method.name
                assert "retry_policy" not in action, method.name
            else:
                assert action["timeout"] != "0s", method.name
    assert streaming > 0


def test_unary_calls_take_the_unary_timeout_or_their_own_grpc_timeout_up_to_the_maximum(
    routes: list[dict[str, Any]], api_services: dict[str, list[Any]],
) -> None:
    """Issue 8: every unary method: 30 s without grpc-timeout; with one, Envoy allows up
    to the maximum (300 s) and the call's own deadline applies below it; the twin keeps
    the route class (rate limits) and the read routes' retries, without a per-try cap."""
    limits = EdgeLimits()
    for service, methods in api_services.items():
        for method in methods:
            if method.server_streaming or method.client_streaming:
                continue
            path = f"/{service}/{method.name}"
            plain = _first_match(routes, path)
            timed = _first_match(routes, path, {"grpc-timeout": "100S"})
            assert plain["route"]["timeout"] == f"{limits.unary_timeout_s:g}s", path
            assert timed["route"]["timeout"] == f"{limits.grpc_timeout_max_s:g}s", path
            assert timed["route"]["idle_timeout"] == f"{limits.grpc_timeout_max_s:g}s", path
            assert timed["metadata"] == plain["metadata"] and timed["route"]["cluster"] == plain["route"]["cluster"]
            assert ("retry_policy" in timed["route"]) == ("retry_policy" in plain["route"]), path
            assert "per_try_timeout" not in timed["route"].get("retry_policy", {}), path


def test_a_grpc_request_that_is_not_a_post_is_answered_by_the_edge(routes: list[dict[str, Any]]) -> None:
    for content_type in ("application/grpc", "application/grpc+proto", "application/grpc-web+proto",
                         "application/grpc-web-text"):
        route = _first_match(routes, "/agentforge.model.v1.ModelService/GetModel",
                             {":method": "GET", "content-type": content_type})
        assert route["direct_response"]["status"] == 405, content_type
    rest = _first_match(routes, "/v1/models/m", {":method": "PATCH", "content-type": "application/grpc-web+json"})
    assert "route" in rest, "grpc-web+json is REST for the transcoder"


def test_a_grpc_call_with_a_malformed_grpc_timeout_is_answered_by_the_edge(routes: list[dict[str, Any]]) -> None:
    """grpc-core answers a malformed grpc-timeout with INTERNAL, and afterwards valid calls
    of other clients on the same upstream connection failed too: the edge must answer
    it (400 -> INVALID_ARGUMENT) and pass every valid one on."""
    path = "/agentforge.monitoring.v1.MonitoringService/GetSystemHealth"
    for bad in ("abc", "-5S", "1s", "1.5S", "123456789S", "5", "S", "1 S", "30SS"):
        for content_type in ("application/grpc", "application/grpc-web+proto"):
            route = _first_match(routes, path, {"grpc-timeout": bad, "content-type": content_type})
            assert route.get("direct_response", {}).get("status") == 400, (bad, content_type, route.get("name"))
    for good in ("1n", "99u", "100m", "30S", "5M", "1H", "99999999S", "0S"):
        route = _first_match(routes, path, {"grpc-timeout": good})
        assert "route" in route and route["route"]["cluster"] == "monitoring", (good, route.get("name"))
    assert "route" in _first_match(routes, path)  # no grpc-timeout at all
    rest = _first_match(routes, "/v1/systemHealth", {":method": "GET", "content-type": "application/json",
                                                      "grpc-timeout": "abc"})
    assert "direct_response" not in rest  # REST: the transcoder's business, not this route


def test_every_grpc_local_reply_carries_a_catalogued_status() -> None:
    from google.rpc import code_pb2
    from services.launcher.envoy_config import GRPC_LOCAL_REPLIES, grpc_status_details
    from services.shared.errors import REASONS

    for http, (code, reason, message) in GRPC_LOCAL_REPLIES.items():
        assert reason in REASONS, http
        raw = grpc_status_details(code, reason, message)
        status = status_pb2.Status.FromString(base64.b64decode(raw + "=" * (-len(raw) % 4)))
        assert status.code == code_pb2.Code.Value(code) and status.message == message
        assert code not in ("INTERNAL", "UNKNOWN") or http >= 500, http  # a client's mistake is never those


def test_only_idempotent_unary_reads_are_retried_and_only_on_unavailable(
    routes: list[dict[str, Any]], api_services: dict[str, list[Any]],
) -> None:
    for service, methods in api_services.items():
        for method in methods:
            action = _first_match(routes, f"/{service}/{method.name}")["route"]
            read = method.name.startswith(("Get", "List")) and not (
                method.server_streaming or method.client_streaming)
            if read:
                policy = action["retry_policy"]
                assert "unavailable" in policy["retry_on"].split(",")
                assert policy["num_retries"] == 2
            else:
                assert "retry_policy" not in action, method.name


def test_reflection_and_health_go_to_monitoring_and_the_rest_is_404(routes: list[dict[str, Any]]) -> None:
    for path in ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                 "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"):
        assert _first_match(routes, path)["route"]["cluster"] == "monitoring"
    assert _first_match(routes, "/grpc.health.v1.Health/Watch")["route"]["timeout"] == "0s"
    assert _first_match(routes, "/no.Such/Thing")["direct_response"]["status"] == 404


def test_listener_and_admin_addresses(config: dict[str, Any]) -> None:
    assert config["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19901}
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
    docker = yaml.safe_load(_render(listen_address="0.0.0.0"))
    assert docker["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert docker["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_admin_address_is_loopback_unless_asked_for_a_private_network_address() -> None:
    compose = yaml.safe_load(_render(listen_address="0.0.0.0", admin_address="0.0.0.0"))
    assert compose["admin"]["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 19901}
    with pytest.raises(TemplateError, match="ADMIN_ADDRESS"):
        _render(admin_address="")


def test_default_cors_origins_are_local_dev_servers(routes: list[dict[str, Any]], hcm: dict[str, Any]) -> None:
    (vhost,) = hcm["route_config"]["virtual_hosts"]
    policy = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    (origin,) = policy["allow_origin_string_match"]
    regex = origin["safe_regex"]["regex"]
    assert regex == DEFAULT_CORS_ALLOW_ORIGIN_REGEX
    for ok in ("http://localhost:5173", "http://127.0.0.1:8080", "https://localhost"):
        assert re.fullmatch(regex, ok)
    for bad in ("http://evil.example", "http://localhost.evil.example", "http://127.0.0.1x:1"):
        assert not re.fullmatch(regex, bad)
    for header in ("x-grpc-web", "x-user-agent", "grpc-timeout", "authorization", "content-type"):
        assert header in policy["allow_headers"]
    for header in ("grpc-status", "grpc-message", "grpc-status-details-bin", "x-request-id"):
        assert header in policy["expose_headers"]


def test_a_placeholder_without_a_value_fails_loudly() -> None:
    template = default_template_path().read_text() + "\n# ${NEW_KNOB}\n"
    with pytest.raises(TemplateError, match="NEW_KNOB"):
        _render(template=template)


def test_a_value_without_a_placeholder_fails_loudly() -> None:
    with pytest.raises(TemplateError, match="EXTRA"):
        render_template("port: ${PORT}", {"PORT": "1", "EXTRA": "2"})


def test_upstreams_must_name_every_service_and_ports_must_be_real() -> None:
    partial = {k: v for k, v in UPSTREAMS.items() if k != "forge"}
    with pytest.raises(TemplateError, match="forge"):
        _render(upstreams=partial)
    with pytest.raises(TemplateError, match="EDGE_PORT"):
        _render(listen_port=0)


def test_cli_renders_the_same_config_from_the_environment(tmp_path: Path) -> None:
    out = tmp_path / "envoy.yaml"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'gen' / 'python'}",
        "EDGE_PORT": "18080",
        "ADMIN_PORT": "19901",
        **{f"AF_{name.upper()}_ADDR": f"{host}:{port}" for name, (host, port) in UPSTREAMS.items()},
    }
    env.pop("ADMIN_ADDRESS", None)
    result = subprocess.run([sys.executable, "-m", "services.launcher.envoy_config", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == _render()

    env["ADMIN_ADDRESS"] = "0.0.0.0"
    result = subprocess.run([sys.executable, "-m", "services.launcher.envoy_config", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == _render(admin_address="0.0.0.0")

    del env["AF_FORGE_ADDR"]
    result = subprocess.run([sys.executable, "-m", "services.launcher.envoy_config", "--out", str(out)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "AF_FORGE_ADDR" in result.stderr


def test_edge_limits_render_into_the_listener_and_read_edge_variables() -> None:
    from services.launcher.envoy_config import EdgeLimits, TemplateError

    limits = EdgeLimits.from_env({"EDGE_MAX_CONNECTIONS": "7", "EDGE_STREAMING_IDLE_TIMEOUT_S": "1.5",
                                  "EDGE_CONNECTION_IDLE_TIMEOUT_S": "2"})
    assert (limits.max_connections, limits.streaming_idle_timeout_s, limits.connection_idle_timeout_s) == (7, 1.5, 2)
    text = render_envoy_config(listen_port=8080, admin_port=9901,
                               upstreams={s: ("127.0.0.1", 5000 + i) for i, s in enumerate(SERVICES)},
                               descriptor_path="/d.binpb", limits=limits)
    doc = yaml.safe_load(text)
    monitor = doc["overload_manager"]["resource_monitors"][0]
    assert monitor["typed_config"]["max_active_downstream_connections"] == 7
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["common_http_protocol_options"]["idle_timeout"] == "2s"
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 1000
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    streaming = [r for r in routes if r["name"].startswith(("health-watch",)) or "-stream-" in r["name"]]
    assert len(streaming) >= 8 and all(r["route"]["idle_timeout"] == "1.5s" for r in streaming)
    assert all(r.get("route", {}).get("idle_timeout") != "0s" for r in routes), "no route may switch the idle timeout off"
    with pytest.raises(TemplateError, match="EDGE_MAX_CONNECTIONS"):
        EdgeLimits.from_env({"EDGE_MAX_CONNECTIONS": "lots"})
    with pytest.raises(TemplateError, match="EDGE_STREAM_IDLE_TIMEOUT_S must be > 0"):
        EdgeLimits.from_env({"EDGE_STREAM_IDLE_TIMEOUT_S": "0"})


def _collector(config: dict[str, Any]) -> dict[str, Any]:
    (cluster,) = [c for c in config["static_resources"]["clusters"] if c["name"] == "otel_collector"]
    return cluster


def test_tracing_starts_or_continues_a_w3c_trace_with_no_collector_by_default(
        config: dict[str, Any], hcm: dict[str, Any]) -> None:
    provider = hcm["tracing"]["provider"]
    assert provider["name"] == "envoy.tracers.opentelemetry"
    assert provider["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "otel_collector"
    assert _collector(config)["load_assignment"]["endpoints"] == []  # spans dropped, context propagated
    assert hcm["request_id_extension"]["typed_config"]["pack_trace_reason"] is False  # x-request-id kept as sent


@pytest.mark.parametrize(("env", "service", "address", "tls"), [
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, "grpc_service", ("collector", 4317), False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector.local"}, "grpc_service", ("collector.local", 4317), False),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://otel.example:443/v1/traces",
      "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "http_service", ("otel.example", 443), True),
])
def test_otlp_endpoint_sends_the_edges_spans_to_that_collector(
        tmp_path: Path, env: dict[str, str], service: str, address: tuple[str, int], tls: bool) -> None:
    from services.launcher.envoy_config import otlp_endpoint_from_env
    text = _render(otlp_endpoint=otlp_endpoint_from_env(env))
    config = yaml.safe_load(text)
    (listener,) = config["static_resources"]["listeners"]
    exporter = listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]["provider"]["typed_config"]
    assert service in exporter
    if service == "http_service":
        assert exporter["http_service"]["http_uri"]["uri"] == "https://otel.example:443/v1/traces"
    cluster = _collector(config)
    [[endpoint]] = [e["lb_endpoints"] for e in cluster["load_assignment"]["endpoints"]]
    socket = endpoint["endpoint"]["address"]["socket_address"]
    assert (socket["address"], socket["port_value"]) == address
    assert ("transport_socket" in cluster) == tls
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_a_bad_otlp_protocol_is_refused() -> None:
    from services.launcher.envoy_config import otlp_endpoint_from_env
    assert otlp_endpoint_from_env({}) is None
    with pytest.raises(TemplateError, match="grpc or http/protobuf"):
        otlp_endpoint_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


def test_the_edge_samples_the_share_of_requests_the_services_do(hcm: dict[str, Any], tmp_path: Path) -> None:
    from services.launcher.envoy_config import trace_sample_ratio_from_env
    assert hcm["tracing"]["random_sampling"] == {"value": 100}
    ratio = trace_sample_ratio_from_env({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                         "OTEL_TRACES_SAMPLER_ARG": "0.125"})
    text = _render(trace_sample_ratio=ratio)
    (listener,) = yaml.safe_load(text)["static_resources"]["listeners"]
    assert listener["filter_chains"][0]["filters"][0]["typed_config"]["tracing"]["random_sampling"] == {"value": 12.5}
    path = tmp_path / "envoy.yaml"
    path.write_text(text)
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with pytest.raises(TemplateError):
        _render(trace_sample_ratio=1.5)
