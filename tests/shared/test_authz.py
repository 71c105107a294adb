"""The auth interceptor of every service, on a real server: mesh identity, roles from the
proto options, stream expiry, the audit log, and the credentials of service-to-service
calls (services/shared/authz.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import descriptor_pool

from agentforge.realtime.v1 import message_pb2, realtime_service_pb2, realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as rr
from services.shared import auth
from services.shared.authz import AuditLog, current_principal, method_rule
from services.shared.client import make_channel
from services.shared.config import ServerConfig
from services.shared.server import Service, build_server
from tests.auth import acting_as, anonymous_channel, direct_metadata
from tests.support import error_details

SERVICE = "agentforge.realtime.v1.RealtimeService"


class FakeRealtime:
    """The RealtimeService contract (so its access options apply) with trivial handlers."""

    def __init__(self) -> None:
        self.callers: list[auth.Principal | None] = []

    async def publish(self, request: rr.PublishRequest, context: Any) -> rr.PublishResponse:
        self.callers.append(current_principal())
        return rr.PublishResponse(topic=request.topic, sequence=1)

    async def list_topics(self, request: rr.ListTopicsRequest, context: Any) -> rr.ListTopicsResponse:
        self.callers.append(current_principal())
        return rr.ListTopicsResponse()

    async def subscribe(self, request: rr.SubscribeRequest, context: Any) -> AsyncIterator[rr.SubscribeResponse]:
        while True:
            yield rr.SubscribeResponse(heartbeat=message_pb2.Heartbeat(cursor="c"))
            await asyncio.sleep(0.1)

    async def nothing(self, request: bytes, context: Any) -> bytes:
        return b"ok"

    def register(self, server: grpc.aio.Server) -> list[str]:
        handlers = {
            "Publish": grpc.unary_unary_rpc_method_handler(
                self.publish, request_deserializer=rr.PublishRequest.FromString,
                response_serializer=rr.PublishResponse.SerializeToString),
            "ListTopics": grpc.unary_unary_rpc_method_handler(
                self.list_topics, request_deserializer=rr.ListTopicsRequest.FromString,
                response_serializer=rr.ListTopicsResponse.SerializeToString),
            "Subscribe": grpc.unary_stream_rpc_method_handler(
                self.subscribe, request_deserializer=rr.SubscribeRequest.FromString,
                response_serializer=rr.SubscribeResponse.SerializeToString),
        }
        server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(SERVICE, handlers),
            grpc.method_handlers_generic_handler("test.v1.Undeclared", {
                "Do": grpc.unary_unary_rpc_method_handler(self.nothing)}),
        ))
        return [SERVICE]


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Service, FakeRealtime]]:
    monkeypatch.setenv("AF_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    fake = FakeRealtime()
    service = await build_server(ServerConfig(host="127.0.0.1", grace_seconds=0.2, metrics_port=-1), "authz",
                                 fake.register)
    try:
        yield service, fake
    finally:
        await service.shutdown(0.2)


def _target(service: Service) -> str:
    return f"127.0.0.1:{service.port}"


async def _publish(channel: grpc.aio.Channel, topic: str = "user/t", **kwargs: Any) -> rr.PublishResponse:
    return await realtime_service_pb2_grpc.RealtimeServiceStub(channel).Publish(
        rr.PublishRequest(topic=topic, data={}), timeout=5, **kwargs)


def _reason(exc: grpc.aio.AioRpcError) -> str:
    info, _ = error_details(exc)
    assert info is not None
    return info.reason


def test_every_rpc_of_the_contracts_declares_its_access() -> None:
    from services.launcher.envoy_config import default_descriptor_path
    from google.protobuf import descriptor_pb2

    fds = descriptor_pb2.FileDescriptorSet.FromString(default_descriptor_path().read_bytes())
    checked = 0
    for file in fds.file:
        if not file.package.startswith("agentforge."):
            continue
        for svc in file.service:
            for method in svc.method:
                rule = method_rule(f"/{file.package}.{svc.name}/{method.name}")
                assert rule.declared, f"{svc.name}.{method.name} has no (agentforge.common.v1.access)"
                reads = method.name.startswith(("Get", "List", "Watch", "Subscribe", "Download"))
                assert rule.mutating == (not reads), f"{svc.name}.{method.name}: mutating={rule.mutating}"
                if method.name.startswith("Delete") and not method.name.endswith("Alias"):
                    assert rule.role == "admin", f"{svc.name}.{method.name} deletes: admin only"
                if reads:
                    assert rule.role == "viewer", f"{svc.name}.{method.name} reads: viewers may"
                checked += 1
    assert checked > 40


def test_a_method_without_the_option_is_admin_only() -> None:
    rule = method_rule("/test.v1.Undeclared/Do", descriptor_pool.Default())
    assert (rule.role, rule.declared) == ("admin", False)
    assert realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"]  # imported


async def test_a_call_without_envoys_identity_is_refused(served: tuple[Service, FakeRealtime]) -> None:
    service, fake = served
    async with anonymous_channel(_target(service)) as channel:
        for md in [(), direct_metadata("admin", with_identity=False),
                   ((auth.MESH_IDENTITY_HEADER, "f" * 64), *direct_metadata("admin", with_identity=False))]:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _publish(channel, metadata=md)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _reason(refused.value) == "MESH_IDENTITY_REQUIRED"
    assert fake.callers == []


async def test_identity_without_claims_or_with_stale_ones_is_unauthenticated(
        served: tuple[Service, FakeRealtime]) -> None:
    service, _ = served
    identity = ((auth.MESH_IDENTITY_HEADER, auth.mesh_secret()),)
    stale = auth.encode_claims_header({"sub": "old", "role": "admin", "exp": int(time.time()) - 3600})
    nameless = auth.encode_claims_header({"role": "admin", "exp": int(time.time()) + 3600})
    cases = {"TOKEN_REQUIRED": identity, "TOKEN_EXPIRED": (*identity, (auth.CLAIMS_HEADER, stale)),
             "TOKEN_INVALID": (*identity, (auth.CLAIMS_HEADER, nameless))}
    async with anonymous_channel(_target(service)) as channel:
        for reason, md in cases.items():
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _publish(channel, metadata=md)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert _reason(refused.value) == reason


async def test_roles_follow_the_proto_options(served: tuple[Service, FakeRealtime]) -> None:
    service, fake = served
    async with grpc.aio.insecure_channel(_target(service)) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        with acting_as("viewer"):
            await stub.ListTopics(rr.ListTopicsRequest(), timeout=5)  # a read
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await _publish(channel)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info, _ = error_details(refused.value)
        assert info is not None and info.reason == "ROLE_REQUIRED"
        assert dict(info.metadata) == {"required_role": "trainer", "role": "viewer"}
        with acting_as("trainer"):
            await _publish(channel)
            with pytest.raises(grpc.aio.AioRpcError) as undeclared:
                await channel.unary_unary("/test.v1.Undeclared/Do")(b"", timeout=5)
        assert undeclared.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with acting_as("admin"):
            assert await channel.unary_unary("/test.v1.Undeclared/Do")(b"", timeout=5) == b"ok"
    assert [(p.subject, p.role) for p in fake.callers if p] == [("test-viewer", "viewer"), ("test-trainer", "trainer")]


async def test_health_needs_no_credentials(served: tuple[Service, FakeRealtime]) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    service, _ = served
    async with anonymous_channel(_target(service)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_stream_ends_when_its_token_expires(served: tuple[Service, FakeRealtime]) -> None:
    service, _ = served
    expiring = auth.encode_claims_header({"sub": "brief", "role": "viewer", "exp": time.time() + 1.0})
    md = ((auth.MESH_IDENTITY_HEADER, auth.mesh_secret()), (auth.CLAIMS_HEADER, expiring))
    beats, ends = 0, []
    started = time.monotonic()
    async with anonymous_channel(_target(service)) as channel:
        call = realtime_service_pb2_grpc.RealtimeServiceStub(channel).Subscribe(rr.SubscribeRequest(topics=["a"]),
                                                                                metadata=md)
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(10):
                async for message in call:
                    if message.HasField("stream_end"):
                        ends.append(message.stream_end)
                    else:
                        beats += 1
    assert 0.8 < time.monotonic() - started < 5
    assert beats >= 3
    assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert [e.code for e in ends] == [grpc.StatusCode.UNAUTHENTICATED.value[0]]
    info, _ = error_details(ends[0])
    assert info is not None and info.reason == "TOKEN_EXPIRED"


async def test_mutating_calls_are_audited_allowed_or_refused(served: tuple[Service, FakeRealtime],
                                                              tmp_path: Path) -> None:
    service, _ = served
    async with grpc.aio.insecure_channel(_target(service)) as channel:
        with acting_as("trainer"):
            await _publish(channel, topic="user/one")
            await realtime_service_pb2_grpc.RealtimeServiceStub(channel).ListTopics(rr.ListTopicsRequest(), timeout=5)
        with acting_as("viewer"), pytest.raises(grpc.aio.AioRpcError):
            await _publish(channel, topic="user/two")
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["subject"], r["role"], r["method"], r["resource"], r["outcome"]) for r in records] == [
        ("test-trainer", "trainer", f"/{SERVICE}/Publish", "user/one", "OK"),
        ("test-viewer", "viewer", f"/{SERVICE}/Publish", "user/two", "PERMISSION_DENIED"),
    ]
    assert all(r["service"] == "authz" and r["request_id"] for r in records)


async def test_shared_client_calls_carry_the_services_identity(served: tuple[Service, FakeRealtime]) -> None:
    service, fake = served
    async with make_channel(_target(service)) as channel:
        await _publish(channel, topic="trainingJobs/x")  # a service topic: services only, at the servicer
        call = realtime_service_pb2_grpc.RealtimeServiceStub(channel).Subscribe(rr.SubscribeRequest(topics=["a"]))
        first = await call.read()  # streams too (one interceptor per kind of call)
        call.cancel()
    assert first.HasField("heartbeat")
    (caller,) = [p for p in fake.callers if p]
    assert caller.role == auth.SERVICE_ROLE and caller.subject == "services/authz"


def test_audit_log_defaults_to_the_data_dir() -> None:
    assert AuditLog.default_path("model", {"AF_DATA_DIR": "/d"}) == Path("/d/audit/model.jsonl")
    assert AuditLog.default_path("model", {"AF_AUDIT_LOG": "/a.jsonl", "AF_DATA_DIR": "/d"}) == Path("/a.jsonl")
    assert AuditLog.default_path("model", {}) is None


async def test_claims_decoded_once_still_expire(served: tuple[Service, FakeRealtime],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The interceptor keeps a decoded claims header for the next call of the same token,
    but checks its expiry on every call: a token that worked is refused once it expires."""
    service, fake = served
    exp = int(time.time()) + 3600
    claims = auth.encode_claims_header({"sub": "alice", "role": "admin", "exp": exp})
    md = ((auth.MESH_IDENTITY_HEADER, auth.mesh_secret()), (auth.CLAIMS_HEADER, claims))
    async with anonymous_channel(_target(service)) as channel:
        await _publish(channel, metadata=md)
        await _publish(channel, metadata=md)
        assert [p.subject for p in fake.callers if p is not None] == ["alice", "alice"]
        later = time.time() + 3600 + auth.CLOCK_SKEW_S + 1
        monkeypatch.setattr("services.shared.authz.time.time", lambda: later)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _publish(channel, metadata=md)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert _reason(refused.value) == "TOKEN_EXPIRED"
    assert len(fake.callers) == 2


def test_audit_log_keeps_its_file_open_and_follows_rotation(tmp_path: Path) -> None:
    """Records go to the file at ``path`` even after logrotate moved it, or its directory
    was removed (the file is kept open between records and reopened then)."""
    path = tmp_path / "audit" / "svc.jsonl"
    log = AuditLog("svc", path)
    try:
        log.record(method="/a/One", outcome="OK")
        path.rename(tmp_path / "svc.jsonl.1")
        log.record(method="/a/Two", outcome="OK")
        moved = [json.loads(line)["method"] for line in (tmp_path / "svc.jsonl.1").read_text().splitlines()]
        assert moved == ["/a/One"]
        assert [json.loads(line)["method"] for line in path.read_text().splitlines()] == ["/a/Two"]
        path.unlink()
        path.parent.rmdir()
        log.record(method="/a/Three", outcome="OK")
        assert [json.loads(line)["method"] for line in path.read_text().splitlines()] == ["/a/Three"]
    finally:
        log.close()


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_is_open_to_viewers(served: tuple[Service, FakeRealtime], version: str) -> None:
    """README's and security.md's ``grpcurl -H "authorization: Bearer <trainer>" … list``:
    reading the schema is a read (viewer and above), not an admin-only undeclared method."""
    from grpc_reflection.v1alpha import reflection_pb2

    service, _ = served
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    async with grpc.aio.insecure_channel(_target(service)) as channel:
        info = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        for role in ("viewer", "trainer"):
            with acting_as(role):
                call = info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
                replies = [reply async for reply in call]
            listed = {s.name for s in replies[0].list_services_response.service}
            assert SERVICE in listed, (role, replies)
        async with anonymous_channel(_target(service)) as anonymous:
            call = anonymous.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                           response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                _ = [reply async for reply in call]
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
