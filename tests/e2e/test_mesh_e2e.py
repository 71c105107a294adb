"""The whole mesh through its edge (issue 3): real health, grpc-web, reflection, REST errors."""

from __future__ import annotations

import subprocess
import time
import urllib.parse
from typing import Any

import grpc
import httpx
import pytest

from agentforge.monitoring.v1 import health_pb2, request_response_pb2
from services.launcher.mesh import ALL_SERVICES, Mesh

from .conftest import GRPCURL, ORIGIN, grpc_web_call, grpc_web_frames
from tests.auth import grpcurl_auth

pytestmark = pytest.mark.e2e

SERVING, NOT_SERVING = "HEALTH_STATUS_SERVING", "HEALTH_STATUS_NOT_SERVING"
MONITORING = "agentforge.monitoring.v1.MonitoringService"
FULL_NAMES = {name: f"agentforge.{name}.v1.{name.capitalize()}Service" for name in ALL_SERVICES}


def components(rest: httpx.Client) -> dict[str, dict[str, Any]]:
    resp = rest.get("/v1/systemHealth")
    assert resp.status_code == 200, resp.text
    return {c["name"]: c for c in resp.json()["components"]}


def wait_system(rest: httpx.Client, status: str, timeout: float) -> None:
    """Wait until the overall status is ``status``; fail naming the components that are not.
    (A probe slower than 0.5 s makes a component DEGRADED for a moment on a loaded machine.)"""
    deadline = time.monotonic() + timeout
    while (body := rest.get("/v1/systemHealth").json())["status"] != status:
        assert time.monotonic() < deadline, [c for c in body["components"] if c["status"] != status]
        time.sleep(0.1)


def wait_component(rest: httpx.Client, name: str, status: str, timeout: float) -> float:
    """Seconds until ``components/<name>`` reports ``status`` (fails after ``timeout``)."""
    start = time.monotonic()
    while True:
        component = components(rest)[f"components/{name}"]
        if component["status"] == status:
            return time.monotonic() - start
        assert time.monotonic() - start < timeout, f"{name} still {component} after {timeout}s"
        time.sleep(0.05)


def test_rest_system_health_reports_every_service_valkey_and_envoy_serving(rest: httpx.Client, mesh: Mesh) -> None:
    # Monitoring starts before Envoy, so its first Envoy probe fails; the next probe
    # (every 2 s by default) sees it. Allow a few probe periods, no more.
    deadline = time.monotonic() + 6
    while True:
        resp = rest.get("/v1/systemHealth")
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
        body = resp.json()
        if body["status"] == SERVING or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert body["status"] == SERVING, [c for c in body["components"] if c["status"] != SERVING]
    by_name = {c["name"]: c for c in body["components"]}
    expected = {f"components/{name}" for name in (*ALL_SERVICES, "valkey", "envoy")}
    assert expected <= by_name.keys(), sorted(by_name)
    for name in expected:
        assert by_name[name]["status"] == SERVING, by_name[name]
    for name in ALL_SERVICES:
        service = by_name[f"components/{name}"]
        assert service["kind"] == "COMPONENT_KIND_SERVICE"
        assert service["endpoint"] == f"127.0.0.1:{mesh.grpc_ports[name]}"  # the real process, probed
    assert by_name["components/valkey"]["kind"] == "COMPONENT_KIND_DEPENDENCY"
    password = urllib.parse.urlsplit(mesh.redis_url).password  # never shown to a viewer
    assert by_name["components/valkey"]["endpoint"] == (
        mesh.redis_url.replace(f":{password}@", "@") if password else mesh.redis_url)
    assert by_name["components/envoy"]["kind"] == "COMPONENT_KIND_EDGE"
    assert str(mesh.admin_port) in by_name["components/envoy"]["endpoint"]


def test_killed_service_shows_not_serving_then_restart_brings_it_back(rest: httpx.Client, mesh: Mesh) -> None:
    try:
        mesh.kill_service("realtime", restart=False)  # held down until restart_service
        took = wait_component(rest, "realtime", NOT_SERVING, timeout=10)
        assert took <= 2.0, f"NOT_SERVING showed only after {took:.2f}s"
        body = rest.get("/v1/systemHealth").json()
        assert body["status"] == NOT_SERVING  # the worst component decides
        # The edge answers for the dead upstream with a JSON status, not a hang or a 5xx HTML page.
        dead = rest.get("/v1/topics")
        assert dead.status_code == 503 and dead.json()["code"] == grpc.StatusCode.UNAVAILABLE.value[0], dead.text
        # Everyone else is unaffected.
        others = components(rest)
        assert all(others[f"components/{n}"]["status"] == SERVING for n in ALL_SERVICES if n != "realtime")
    finally:
        mesh.restart_service("realtime")
    wait_component(rest, "realtime", SERVING, timeout=15)
    deadline = time.monotonic() + 15
    while (resp := rest.get("/v1/topics")).status_code != 200:  # Envoy's health check marks it healthy again
        assert time.monotonic() < deadline, resp.text
        time.sleep(0.1)
    wait_system(rest, SERVING, timeout=15)


def test_grpc_web_get_system_health_through_envoy(rest: httpx.Client) -> None:
    request = request_response_pb2.GetSystemHealthRequest().SerializeToString()
    deadline = time.monotonic() + 15  # a probe slower than 0.5 s (loaded machine) is DEGRADED for a moment
    while True:
        resp = grpc_web_call(rest, f"/{MONITORING}/GetSystemHealth", request)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/grpc-web+proto"
        assert resp.headers["access-control-allow-origin"] == ORIGIN
        messages, trailers = grpc_web_frames(resp.content)
        assert trailers["grpc-status"] == "0"
        (message,) = messages
        health = health_pb2.SystemHealth.FromString(message)
        names = {c.name for c in health.components}
        assert {f"components/{n}" for n in ALL_SERVICES} <= names
        if health.status == health_pb2.HEALTH_STATUS_SERVING:
            break
        assert time.monotonic() < deadline, [c for c in health.components
                                             if c.status != health_pb2.HEALTH_STATUS_SERVING]
        time.sleep(0.1)


def test_cors_preflight_for_grpc_web_passes(rest: httpx.Client) -> None:
    resp = rest.options(f"/{MONITORING}/GetSystemHealth", headers={
        "origin": ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "x-grpc-web,content-type,x-user-agent",
    })
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == ORIGIN
    allowed = {h.strip() for h in resp.headers["access-control-allow-headers"].split(",")}
    assert {"x-grpc-web", "content-type", "x-user-agent"} <= allowed
    exposed = {h.strip() for h in resp.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message"} <= exposed


def test_grpcurl_lists_all_five_services_through_the_edge(mesh: Mesh) -> None:
    target = f"127.0.0.1:{mesh.edge_port}"
    listed = subprocess.run([str(GRPCURL), "-plaintext", *grpcurl_auth(), target, "list"], capture_output=True, text=True, timeout=30)
    assert listed.returncode == 0, listed.stderr
    services = set(listed.stdout.split())
    assert set(FULL_NAMES.values()) <= services, f"missing: {set(FULL_NAMES.values()) - services}"
    described = subprocess.run([str(GRPCURL), "-plaintext", *grpcurl_auth(), target, "describe", FULL_NAMES["training"]],
                               capture_output=True, text=True, timeout=30)
    assert described.returncode == 0, described.stderr
    assert "rpc WatchTrainingJob" in described.stdout


@pytest.mark.parametrize(("method", "path", "body", "field"), [
    ("GET", "/v1/models?pageSize=5000", None, "page_size"),
    ("POST", "/v1/topics/e2e:publish", {}, "content"),
    ("GET", "/v1/phaseRuns?pageSize=-1", None, "page_size"),
    ("GET", "/v1/alerts?pageSize=2000", None, "page_size"),
    ("POST", "/v1/trainingJobs", {}, "training_job.spec"),
], ids=["model", "realtime", "forge", "monitoring", "training"])
def test_rest_bad_request_to_each_service_is_400_status(rest: httpx.Client, method: str, path: str,
                                                         body: dict[str, Any] | None, field: str) -> None:
    resp = rest.request(method, path, json=body)
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    status = resp.json()
    assert status["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and status["message"]
    bad = [d for d in status["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad and field in [v["field"] for v in bad[0]["fieldViolations"]], status
    info = [d for d in status["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info and info[0]["reason"] == "INVALID_ARGUMENT" and info[0]["domain"] == "agentforge.dev"


def test_plus_in_a_label_selector_is_a_space_against_the_real_model_service(rest: httpx.Client) -> None:
    """Issue 8: ``?labelSelector=team%3Dml+ops`` found nothing although a model labelled
    ``team=ml ops`` exists (the ``+`` reached the service as a plus)."""
    spaced = rest.post("/v1/models", params={"modelId": "label-plus-spaced"},
                       json={"displayName": "spaced", "labels": {"team": "ml ops"}})
    assert spaced.status_code == 200, spaced.text
    plus = rest.post("/v1/models", params={"modelId": "label-plus-literal"},
                     json={"displayName": "literal", "labels": {"team": "ml+ops"}})
    assert plus.status_code == 200, plus.text

    def names(query: str) -> set[str]:
        resp = rest.get(f"/v1/models?{query}")
        assert resp.status_code == 200, resp.text
        return {m["name"] for m in resp.json().get("models", [])}

    # As forms, urlencode, httpx and URLSearchParams send it ('+' for the space) ...
    assert names("labelSelector=team%3Dml+ops") == {"models/label-plus-spaced"}
    assert names("labelSelector=team=ml+ops") == {"models/label-plus-spaced"}
    # ... percent-encoded ...
    assert names("labelSelector=team%3Dml%20ops") == {"models/label-plus-spaced"}
    # ... and a real '+' is %2B.
    assert names("labelSelector=team%3Dml%2Bops") == {"models/label-plus-literal"}
    via_httpx = rest.get("/v1/models", params={"labelSelector": "team=ml ops"})
    assert {m["name"] for m in via_httpx.json()["models"]} == {"models/label-plus-spaced"}


async def test_a_multi_mib_artifact_through_the_edge_keeps_every_byte_and_chunk_boundary(
        channel: grpc.aio.Channel) -> None:
    """Issue 13 item 6: an upload through Envoy (chunks of 1 MiB and odd sizes, written by
    the registry's writer thread, committed at sync points) and downloads through Envoy
    (1 MiB upstream window) at three chunk sizes reassemble byte-exact, with contiguous
    offsets and the upload's sha256 on every message."""
    import hashlib
    import random

    from agentforge.model.v1 import model_pb2, model_service_pb2_grpc, model_version_pb2
    from agentforge.model.v1 import request_response_pb2 as mrr

    mib = 1024 * 1024
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    data = random.Random(13).randbytes(9 * mib + 4097)
    sha = hashlib.sha256(data).hexdigest()
    await stub.CreateModel(mrr.CreateModelRequest(model_id="edge-artifact", model=model_pb2.Model()))
    version = await stub.CreateModelVersion(mrr.CreateModelVersionRequest(
        parent="models/edge-artifact", model_version=model_version_pb2.ModelVersion()))
    sizes = [mib] * 6 + [1, 65_537, mib - 1, 3 * mib]  # the last one is cut at the end of the file

    async def messages() -> Any:
        yield mrr.UploadModelArtifactRequest(header=mrr.UploadHeader(
            name=version.name, size_bytes=len(data), sha256=sha, format=model_version_pb2.ARTIFACT_FORMAT_STATE_DICT))
        offset = 0
        for size in sizes:
            yield mrr.UploadModelArtifactRequest(chunk=mrr.UploadChunk(offset=offset, data=data[offset:offset + size]))
            offset += size

    uploaded = await stub.UploadModelArtifact(messages())
    assert uploaded.complete and uploaded.sha256 == sha and uploaded.committed_bytes == len(data)
    for chunk_size in (4 * mib, mib, 65_537):
        parts = [m async for m in stub.DownloadModelArtifact(mrr.DownloadModelArtifactRequest(
            name=version.name, chunk_size=chunk_size)) if not m.HasField("stream_end")]
        offsets = [m.offset for m in parts]
        assert offsets == [sum(len(m.data) for m in parts[:i]) for i in range(len(parts))]
        assert all(len(m.data) <= chunk_size and m.sha256 == sha for m in parts)
        assert b"".join(m.data for m in parts) == data
