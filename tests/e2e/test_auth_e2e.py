"""Trying to get in: the token matrix, roles per method, the mesh identity, streams that
outlive their token, rate limits, reserved topics, TLS and the audit log — over REST,
gRPC and grpc-web through the real Envoy in front of the real mesh (docs/security.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import json
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import struct_pb2
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.model.v1 import request_response_pb2 as model_rr
from agentforge.realtime.v1 import realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as rt_rr
from agentforge.training.v1 import request_response_pb2 as training_rr
from agentforge.training.v1 import training_service_pb2_grpc
from services.launcher.mesh import Mesh
from services.shared import auth
from tests.auth import acting_as, anonymous_channel, claims_of, token
from tests.support import error_details

from .conftest import ORIGIN, grpc_web_call, grpc_web_frames, ndjson

pytestmark = pytest.mark.e2e

TRAINING = "agentforge.training.v1.TrainingService"
MODEL = "agentforge.model.v1.ModelService"
REALTIME = "agentforge.realtime.v1.RealtimeService"


# --- tokens that must not get in -------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": auth.issuer(), "aud": auth.audience(), "sub": "intruder", "role": "admin",
              "iat": now, "nbf": now, "exp": now + 600}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def _hs256_with_public_key() -> str:
    """The classic confusion attack: HS256 'signed' with the server's public key."""
    found = auth.ensure_dev_secrets()
    public_pem = found.signing_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": found.kid()}).encode())
    payload = _b64(json.dumps(_claims()).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def _alg_none() -> str:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": auth.ensure_dev_secrets().kid()}).encode())
    return f"{header}.{_b64(json.dumps(_claims()).encode())}."


def _bad_signature() -> str:
    good = auth.mint_token("admin", subject="intruder")
    head, payload, signature = good.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0xFF
    return f"{head}.{payload}.{_b64(bytes(raw))}"


def _unknown_key() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return jwt.encode(_claims(), key, algorithm="ES256", headers={"kid": auth.jwk_thumbprint(key.public_key())})


def _signed(**overrides: Any) -> str:
    found = auth.ensure_dev_secrets()
    return jwt.encode(_claims(**overrides), found.signing_key(), algorithm="ES256", headers={"kid": found.kid()})


#: name → a function returning the Authorization header value (None: no header at all).
BAD_TOKENS: dict[str, Callable[[], str | None]] = {
    "missing": lambda: None,
    "expired-beyond-skew": lambda: "Bearer " + _signed(iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200,
                                                      exp=int(time.time()) - 3600),
    "not-yet-valid": lambda: "Bearer " + _signed(nbf=int(time.time()) + 3600, exp=int(time.time()) + 7200),
    "no-exp": lambda: "Bearer " + _signed(exp=None),
    "wrong-issuer": lambda: "Bearer " + _signed(iss="https://evil.example"),
    "wrong-audience": lambda: "Bearer " + _signed(aud="someone-else"),
    "alg-none": lambda: "Bearer " + _alg_none(),
    "hs256-with-public-key": lambda: "Bearer " + _hs256_with_public_key(),
    "bad-signature": lambda: "Bearer " + _bad_signature(),
    "unknown-key-id": lambda: "Bearer " + _unknown_key(),
    "garbage": lambda: "Bearer not-a-token",
    "not-bearer": lambda: "Basic " + _b64(b"admin:admin"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_over_rest_is_401_with_a_status_body(rest: httpx.Client, case: str) -> None:
    value = BAD_TOKENS[case]()
    with acting_as(None):
        resp = rest.get("/v1/trainingJobs", headers={} if value is None else {"authorization": value})
    assert resp.status_code == 401, resp.text
    body = resp.json()
    assert body["code"] == 16 and body["message"]
    assert "www-authenticate" in resp.headers


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_token_over_grpc_is_unauthenticated(mesh: Mesh, case: str) -> None:
    value = BAD_TOKENS[case]()
    metadata = () if value is None else (("authorization", value),)
    async with anonymous_channel(mesh.edge_addr) as channel:
        stub = training_service_pb2_grpc.TrainingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await stub.ListTrainingJobs(training_rr.ListTrainingJobsRequest(), metadata=metadata, timeout=10)
    assert failed.value.code() == grpc.StatusCode.UNAUTHENTICATED, failed.value


def _grpc_web_status(resp: httpx.Response) -> int:
    """grpc-status of a grpc-web answer: in the headers (trailers-only) or the trailer frame."""
    if "grpc-status" in resp.headers:
        return int(resp.headers["grpc-status"])
    _, trailers = grpc_web_frames(resp.content)
    return int(trailers["grpc-status"])


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_bad_token_over_grpc_web_is_unauthenticated(rest: httpx.Client, case: str) -> None:
    value = BAD_TOKENS[case]()
    request = training_rr.ListTrainingJobsRequest().SerializeToString()
    with acting_as(None):
        if value is None:
            resp = grpc_web_call(rest, f"/{TRAINING}/ListTrainingJobs", request)
        else:
            resp = rest.post(f"/{TRAINING}/ListTrainingJobs", content=_frame(request), headers={
                **_GRPC_WEB, "authorization": value})
    # Envoy's own refusal: HTTP 401 with grpc-status 16 in the headers (trailers-only),
    # which grpc-web clients read either way.
    assert resp.status_code in (200, 401)
    assert _grpc_web_status(resp) == grpc.StatusCode.UNAUTHENTICATED.value[0]
    assert resp.headers["access-control-allow-origin"] == ORIGIN  # a browser can read why


_GRPC_WEB = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1",
             "x-user-agent": "grpc-web-javascript/0.1", "origin": ORIGIN}


def _frame(message: bytes) -> bytes:
    from tests.support import grpc_web_frame

    return grpc_web_frame(message)


def test_a_valid_token_gets_in_on_every_transport(rest: httpx.Client) -> None:
    assert rest.get("/v1/trainingJobs", headers={"authorization": f"Bearer {token('viewer')}"}).status_code == 200


# --- roles against permission classes ---------------------------------------------------

ROLES = ("viewer", "trainer", "operator", "admin")
#: class → (the weakest role of the class, what an allowed call answers over REST)
CLASSES = {
    "read": ("viewer", 200),          # ListTrainingJobs
    "train": ("trainer", 400),        # CreateTrainingJob with an empty job: past auth, fails validation
    "operate": ("operator", 400),     # CreateModel with a malformed model id: likewise
    "delete": ("admin", 404),         # DeleteModel of a model that does not exist
}
_RANK = {r: i for i, r in enumerate(ROLES)}


def _rest_call(rest: httpx.Client, klass: str, headers: dict[str, str]) -> httpx.Response:
    if klass == "read":
        return rest.get("/v1/trainingJobs", headers=headers)
    if klass == "train":
        return rest.post("/v1/trainingJobs", json={}, headers=headers)
    if klass == "operate":
        return rest.post("/v1/models", params={"modelId": "Not_An_Id"}, json={}, headers=headers)
    return rest.delete(f"/v1/models/nope-{uuid.uuid4().hex[:8]}", headers=headers)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("klass", sorted(CLASSES))
def test_role_against_permission_class_over_rest(rest: httpx.Client, role: str, klass: str) -> None:
    weakest, allowed_status = CLASSES[klass]
    resp = _rest_call(rest, klass, {"authorization": f"Bearer {token(role)}"})
    if _RANK[role] >= _RANK[weakest]:
        assert resp.status_code == allowed_status, resp.text
    else:
        assert resp.status_code == 403, resp.text
        body = resp.json()
        assert body["code"] == 7
        info, _ = error_details(_status_from_json(body))
        assert info is not None and info.reason == "ROLE_REQUIRED"
        assert dict(info.metadata) == {"required_role": weakest, "role": role}


def _status_from_json(body: dict[str, Any]) -> Any:
    from google.protobuf import json_format
    from google.rpc import status_pb2

    return json_format.ParseDict(body, status_pb2.Status(), ignore_unknown_fields=True)


async def _grpc_call(channel: grpc.aio.Channel, klass: str, md: Any) -> None:
    if klass == "read":
        await training_service_pb2_grpc.TrainingServiceStub(channel).ListTrainingJobs(
            training_rr.ListTrainingJobsRequest(), metadata=md, timeout=10)
    elif klass == "train":
        await training_service_pb2_grpc.TrainingServiceStub(channel).CreateTrainingJob(
            training_rr.CreateTrainingJobRequest(), metadata=md, timeout=10)
    elif klass == "operate":
        await model_service_pb2_grpc.ModelServiceStub(channel).CreateModel(
            model_rr.CreateModelRequest(model_id="Not_An_Id"), metadata=md, timeout=10)
    else:
        await model_service_pb2_grpc.ModelServiceStub(channel).DeleteModel(
            model_rr.DeleteModelRequest(name=f"models/nope-{uuid.uuid4().hex[:8]}"), metadata=md, timeout=10)


_ALLOWED_CODE = {"read": grpc.StatusCode.OK, "train": grpc.StatusCode.INVALID_ARGUMENT,
                 "operate": grpc.StatusCode.INVALID_ARGUMENT, "delete": grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize("role", ROLES)
async def test_role_against_every_permission_class_over_grpc(mesh: Mesh, role: str) -> None:
    md = (("authorization", f"Bearer {token(role)}"),)
    async with anonymous_channel(mesh.edge_addr) as channel:
        for klass, (weakest, _) in sorted(CLASSES.items()):
            try:
                await _grpc_call(channel, klass, md)
                code = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                code = exc.code()
            expected = _ALLOWED_CODE[klass] if _RANK[role] >= _RANK[weakest] else grpc.StatusCode.PERMISSION_DENIED
            assert code == expected, (role, klass)


def _grpc_web_request(klass: str) -> tuple[str, bytes]:
    if klass == "read":
        return f"/{TRAINING}/ListTrainingJobs", training_rr.ListTrainingJobsRequest().SerializeToString()
    if klass == "train":
        return f"/{TRAINING}/CreateTrainingJob", training_rr.CreateTrainingJobRequest().SerializeToString()
    if klass == "operate":
        return f"/{MODEL}/CreateModel", model_rr.CreateModelRequest(model_id="Not_An_Id").SerializeToString()
    return f"/{MODEL}/DeleteModel", model_rr.DeleteModelRequest(
        name=f"models/nope-{uuid.uuid4().hex[:8]}").SerializeToString()


@pytest.mark.parametrize("role", ROLES)
def test_role_against_every_permission_class_over_grpc_web(rest: httpx.Client, role: str) -> None:
    for klass, (weakest, _) in sorted(CLASSES.items()):
        path, body = _grpc_web_request(klass)
        resp = rest.post(path, content=_frame(body), headers={**_GRPC_WEB, "authorization": f"Bearer {token(role)}"})
        expected = _ALLOWED_CODE[klass] if _RANK[role] >= _RANK[weakest] else grpc.StatusCode.PERMISSION_DENIED
        assert _grpc_web_status(resp) == expected.value[0], (role, klass)


def test_claims_a_client_sends_itself_are_dropped_at_the_edge(rest: httpx.Client) -> None:
    """A viewer adding forged admin claims and a guessed mesh secret is still a viewer."""
    forged = {"authorization": f"Bearer {token('viewer')}", auth.CLAIMS_HEADER: claims_of(token("admin")),
              auth.MESH_IDENTITY_HEADER: auth.mesh_secret()}
    resp = rest.delete(f"/v1/models/nope-{uuid.uuid4().hex[:8]}", headers=forged)
    assert resp.status_code == 403, resp.text


# --- around the edge --------------------------------------------------------------------


@pytest.mark.parametrize("service", ["training", "model", "realtime", "monitoring", "forge"])
async def test_a_service_called_directly_without_envoys_identity_is_refused(mesh: Mesh, service: str) -> None:
    stubs = {
        "training": lambda ch: training_service_pb2_grpc.TrainingServiceStub(ch).ListTrainingJobs(
            training_rr.ListTrainingJobsRequest(), metadata=md, timeout=10),
        "model": lambda ch: model_service_pb2_grpc.ModelServiceStub(ch).DeleteModel(
            model_rr.DeleteModelRequest(name="models/x", force=True), metadata=md, timeout=10),
        "realtime": lambda ch: realtime_service_pb2_grpc.RealtimeServiceStub(ch).ListTopics(
            rt_rr.ListTopicsRequest(), metadata=md, timeout=10),
        "monitoring": lambda ch: ch.unary_unary(
            "/agentforge.monitoring.v1.MonitoringService/GetSystemHealth")(b"", metadata=md, timeout=10),
        "forge": lambda ch: ch.unary_unary(
            "/agentforge.forge.v1.ForgeService/ListPhases")(b"", metadata=md, timeout=10),
    }
    target = f"127.0.0.1:{mesh.grpc_ports[service]}"
    attempts = [
        (),  # nothing at all
        (("authorization", f"Bearer {token('admin')}"),),  # a valid token is not Envoy's identity
        ((auth.MESH_IDENTITY_HEADER, "0" * 64), (auth.CLAIMS_HEADER, claims_of(token("admin")))),  # a guess
    ]
    async with anonymous_channel(target) as channel:
        for md in attempts:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stubs[service](channel)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (service, md)
            info, _ = error_details(refused.value)
            assert info is not None and info.reason == "MESH_IDENTITY_REQUIRED"


def test_services_listen_on_loopback_only(mesh: Mesh) -> None:
    import psutil

    ports = set(mesh.grpc_ports.values()) | set(mesh.metrics_ports.values())
    listening = {c.laddr.port: c.laddr.ip for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.laddr.port in ports}
    assert set(listening) == ports
    assert all(ipaddress.ip_address(ip).is_loopback or (
        ipaddress.ip_address(ip).version == 6 and ipaddress.ip_address(ip).ipv4_mapped is not None  # type: ignore[union-attr]
        and ipaddress.ip_address(ip).ipv4_mapped.is_loopback) for ip in listening.values()), listening  # type: ignore[union-attr]


async def test_health_checks_need_no_token(mesh: Mesh) -> None:
    async with anonymous_channel(mesh.edge_addr) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_cors_preflight_needs_no_token(rest: httpx.Client) -> None:
    with acting_as(None):
        resp = rest.options(f"/{TRAINING}/ListTrainingJobs", headers={
            "origin": ORIGIN, "access-control-request-method": "POST",
            "access-control-request-headers": "authorization,content-type,x-grpc-web"})
    assert resp.status_code == 200
    assert "authorization" in resp.headers["access-control-allow-headers"]


# --- streams and token lifetime --------------------------------------------------------


async def test_a_grpc_stream_outliving_its_token_is_ended_unauthenticated(mesh: Mesh) -> None:
    short = auth.mint_token("viewer", subject=f"short-{uuid.uuid4().hex[:6]}", ttl_s=3)
    request = rt_rr.SubscribeRequest(topics=[f"short/{uuid.uuid4().hex[:8]}"],
                                     heartbeat_interval=Duration(seconds=1))
    started = time.monotonic()
    ends = []
    async with anonymous_channel(mesh.edge_addr) as channel:
        call = realtime_service_pb2_grpc.RealtimeServiceStub(channel).Subscribe(
            request, metadata=(("authorization", f"Bearer {short}"),))
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(20):
                async for message in call:
                    if message.HasField("stream_end"):
                        ends.append(message.stream_end)
    elapsed = time.monotonic() - started
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [e.code for e in ends] == [grpc.StatusCode.UNAUTHENTICATED.value[0]]
    assert 1.0 < elapsed < 10.0, elapsed  # at expiry, not at some later cut-off
    info, _ = error_details(ends[0])
    assert info is not None and info.reason == "TOKEN_EXPIRED"


def test_a_rest_stream_outliving_its_token_ends_with_stream_end_unauthenticated(rest: httpx.Client) -> None:
    short = auth.mint_token("viewer", subject=f"short-{uuid.uuid4().hex[:6]}", ttl_s=3)
    rest.headers["authorization"] = f"Bearer {short}"
    try:
        status, lines = ndjson(rest, "/v1/topics:subscribe",
                               params={"topics": f"short/{uuid.uuid4().hex[:8]}", "heartbeatInterval": "1s"},
                               timeout=20)
    finally:
        del rest.headers["authorization"]
    assert status == 200
    assert lines[-1]["streamEnd"]["code"] == 16, lines[-3:]
    assert any("heartbeat" in line for line in lines[:-1])


# --- rate limits ------------------------------------------------------------------------


async def _burst(mesh: Mesh, bearer: str, topic: str, n: int = 80) -> list[httpx.Response]:
    """``n`` publishes at once (concurrently, so a loaded machine cannot pace them)."""
    async with httpx.AsyncClient(base_url=mesh.edge_url, timeout=30,
                                 limits=httpx.Limits(max_connections=n)) as client:
        return list(await asyncio.gather(*(
            client.post(f"/v1/topics/{topic}:publish", json={"data": {"i": i}}, headers={"authorization": bearer})
            for i in range(n))))


async def test_a_burst_over_the_limit_gets_429_with_retry_advice_then_recovers(mesh: Mesh) -> None:
    bearer = f"Bearer {auth.mint_token('trainer', subject=f'burst-{uuid.uuid4().hex[:6]}', ttl_s=600)}"
    topic = f"burst/{uuid.uuid4().hex[:8]}"
    answers = await _burst(mesh, bearer, topic)
    limited = [r for r in answers if r.status_code == 429]
    assert limited, [r.status_code for r in answers]
    assert {r.status_code for r in answers} == {200, 429}
    first = limited[0]
    assert first.json()["code"] == 8  # RESOURCE_EXHAUSTED: not retried by gRPC clients' policies
    assert int(first.headers["retry-after"]) >= 1
    async with httpx.AsyncClient(base_url=mesh.edge_url, timeout=30) as client:
        # Another subject is not limited by this one's burst.
        other = f"Bearer {auth.mint_token('trainer', subject=f'calm-{uuid.uuid4().hex[:6]}')}"
        resp = await client.post(f"/v1/topics/{topic}:publish", json={"data": {}}, headers={"authorization": other})
        assert resp.status_code == 200
        await asyncio.sleep(float(first.headers["retry-after"]) + 1.0)
        resp = await client.post(f"/v1/topics/{topic}:publish", json={"data": {}}, headers={"authorization": bearer})
        assert resp.status_code == 200


async def test_a_burst_over_grpc_is_resource_exhausted_not_unavailable(mesh: Mesh) -> None:
    burster = auth.mint_token("trainer", subject=f"burst-{uuid.uuid4().hex[:6]}", ttl_s=600)
    md = (("authorization", f"Bearer {burster}"),)

    refusals: list[grpc.aio.AioRpcError] = []

    async def publish(stub: realtime_service_pb2_grpc.RealtimeServiceStub) -> grpc.StatusCode:
        try:
            await stub.Publish(rt_rr.PublishRequest(topic="burst/grpc", data=struct_pb2.Struct()),
                               metadata=md, timeout=30)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as exc:
            refusals.append(exc)
            return exc.code()

    async with anonymous_channel(mesh.edge_addr) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        codes = await asyncio.gather(*(publish(stub) for _ in range(80)))
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
    # The rich status: ErrorInfo in the catalogue, and when to retry.
    from google.rpc import error_details_pb2
    from grpc_status import rpc_status

    status = rpc_status.from_call(refusals[0])  # type: ignore[arg-type]
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info, _ = error_details(status)
    assert info is not None and (info.reason, info.domain) == ("RESOURCE_EXHAUSTED", "agentforge.dev")
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, status


# --- topics -----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_no_client_can_publish_to_a_jobs_topic(rest: httpx.Client, role: str) -> None:
    """A fake FAILED event on a job's topic would show on every dashboard."""
    resp = rest.post("/v1/topics/trainingJobs/some-job:publish",
                     json={"data": {"kind": "state_changed", "to": "FAILED"}},
                     headers={"authorization": f"Bearer {token(role)}"})
    assert resp.status_code == 403, resp.text
    info, _ = error_details(_status_from_json(resp.json()))
    assert info is not None and info.reason in ("ROLE_REQUIRED", "TOPIC_RESERVED")


def test_system_topics_are_for_admins_and_user_topics_for_trainers(rest: httpx.Client) -> None:
    def publish(topic: str, role: str) -> int:
        return rest.post(f"/v1/topics/{topic}:publish", json={"data": {"x": 1}},
                         headers={"authorization": f"Bearer {token(role)}"}).status_code

    assert publish("system/notice", "operator") == 403
    assert publish("system/notice", "admin") == 200
    assert publish("user/notes", "viewer") == 403
    assert publish("user/notes", "trainer") == 200


def test_published_messages_carry_the_token_subject_not_a_claimed_one(rest: httpx.Client) -> None:
    topic = f"who/{uuid.uuid4().hex[:8]}"
    resp = rest.post(f"/v1/topics/{topic}:publish", json={"data": {}},
                     headers={"authorization": f"Bearer {token('trainer')}", "x-agentforge-publisher": "training"})
    assert resp.status_code == 200, resp.text
    status, lines = ndjson(rest, "/v1/topics:subscribe", params={"topics": topic, "fromBeginning": "true"},
                           until=lambda line: "message" in line, timeout=20)
    assert status == 200
    assert lines[-1]["message"]["publisher"] == "test-trainer", lines


# --- TLS and the audit log ---------------------------------------------------------------


def test_the_edge_speaks_tls_with_the_generated_certificate(mesh: Mesh) -> None:
    ca = ssl.create_default_context(cafile=str(auth.ensure_dev_secrets().tls_cert_path))
    with httpx.Client(base_url=mesh.edge_tls_url, verify=ca, timeout=10) as client:
        resp = client.get("/v1/trainingJobs", headers={"authorization": f"Bearer {token('viewer')}"})
    assert resp.status_code == 200
    assert resp.http_version in ("HTTP/1.1", "HTTP/2")


async def test_grpc_over_tls_with_the_generated_certificate(mesh: Mesh) -> None:
    ca = auth.ensure_dev_secrets().tls_cert_path.read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca)
    async with grpc.aio.secure_channel(mesh.edge_addr, credentials) as channel:
        reply = await training_service_pb2_grpc.TrainingServiceStub(channel).ListTrainingJobs(
            training_rr.ListTrainingJobsRequest(), metadata=(("authorization", f"Bearer {token('viewer')}"),),
            timeout=10)
    assert reply is not None


def _audit(mesh: Mesh, service: str) -> list[dict[str, Any]]:
    path = Path(mesh.data_dir) / "audit" / f"{service}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_mutating_calls_are_audited_with_subject_role_method_resource_and_outcome(
        rest: httpx.Client, mesh: Mesh) -> None:
    subject = f"audited-{uuid.uuid4().hex[:6]}"
    bearer = {"authorization": f"Bearer {auth.mint_token('viewer', subject=subject)}"}
    model = f"models/audit-{uuid.uuid4().hex[:6]}"
    assert rest.delete(f"/v1/{model}", headers=bearer).status_code == 403
    assert rest.get("/v1/models", headers=bearer).status_code == 200  # reads are not audited
    deadline = time.monotonic() + 5
    while not (records := [r for r in _audit(mesh, "model") if r.get("subject") == subject]):
        assert time.monotonic() < deadline, "no audit record"
        time.sleep(0.1)
    assert len(records) == 1
    (record,) = records
    assert record["method"] == f"/{MODEL}/DeleteModel"
    assert (record["role"], record["outcome"]) == ("viewer", "PERMISSION_DENIED")
    assert record["service"] == "model" and record["time"].endswith("Z")
    assert record["resource"] == model
