"""Server streams end with their final status as a last message (``stream_end``), end
promptly with UNAVAILABLE when the server stops, and unimplemented methods are
UNIMPLEMENTED; all through a real grpc.aio server built by ``build_server``."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from agentforge.forge.v1 import (
    forge_service_pb2,
    forge_service_pb2_grpc,
    phase_run_event_pb2,
    phase_run_pb2,
)
from agentforge.forge.v1 import request_response_pb2 as forge_rr
from agentforge.monitoring.v1 import (
    health_pb2,
    monitoring_service_pb2,
    monitoring_service_pb2_grpc,
)
from agentforge.monitoring.v1 import request_response_pb2 as monitoring_rr
from agentforge.realtime.v1 import realtime_service_pb2, realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as realtime_rr
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared import errors
from services.shared.config import ServerConfig
from services.shared.interceptors import SHUTDOWN_MESSAGE, StreamEndInterceptor, default_interceptors
from services.shared.server import Service, build_server

GRACE_SECONDS = 5.0
Event = phase_run_event_pb2.PhaseRunEvent
Watch = forge_rr.WatchPhaseRunRequest


def _event(sequence: int) -> Event:
    return Event(sequence=sequence, log=phase_run_event_pb2.PhaseRunLog(message=f"event {sequence}"))


class StreamingForge(forge_service_pb2_grpc.ForgeServiceServicer):
    """WatchPhaseRun as an async generator whose behaviour the run name picks."""

    def __init__(self) -> None:
        self.closed: asyncio.Event = asyncio.Event()  # the handler's finally ran
        self.stopping: asyncio.Event = asyncio.Event()  # the server's stop_requested

    async def GetPhaseRun(self, request: Any, context: Any) -> phase_run_pb2.PhaseRun:  # noqa: N802
        return phase_run_pb2.PhaseRun(name=request.name)

    async def WatchPhaseRun(self, request: Any, context: Any) -> AsyncIterator[Event]:  # noqa: N802
        mode = request.name.removeprefix("phaseRuns/")
        try:
            if mode == "missing":
                raise errors.NotFound("no such run", reason="PHASE_RUN_NOT_FOUND")
            if mode == "silent":
                await asyncio.Event().wait()
            for sequence in range(1, 4):
                yield _event(sequence)
            match mode:
                case "gone":
                    raise errors.NotFound("run deleted", reason="PHASE_RUN_NOT_FOUND",
                                          metadata={"phase_run": request.name})
                case "invalid":
                    raise errors.InvalidArgument("bad cursor", [("cursor", "malformed")])
                case "boom":
                    raise RuntimeError("secret-token-123")
                case "aborts-on-stop":
                    # Watches the server's stop event itself, as a service may.
                    await self.stopping.wait()
                    await context.abort(grpc.StatusCode.UNAVAILABLE, "handler saw the stop")
                case "forever":
                    sequence = 4
                    while True:
                        await asyncio.sleep(0.02)
                        yield _event(sequence)
                        sequence += 1
        finally:
            self.closed.set()

    def register(self, server: grpc.aio.Server) -> list[str]:
        forge_service_pb2_grpc.add_ForgeServiceServicer_to_server(self, server)
        return [forge_service_pb2.DESCRIPTOR.services_by_name["ForgeService"].full_name]


class WriteStyleMonitoring(monitoring_service_pb2_grpc.MonitoringServiceServicer):
    """WatchSystemHealth in the context.write() style: two snapshots, then the end
    (no kinds) or waiting forever (kinds given)."""

    async def WatchSystemHealth(self, request: Any, context: Any) -> None:  # noqa: N802
        for _ in range(2):
            await context.write(health_pb2.SystemHealth(status=health_pb2.HEALTH_STATUS_SERVING))
        if request.kinds:
            await asyncio.Event().wait()

    def register(self, server: grpc.aio.Server) -> list[str]:
        monitoring_service_pb2_grpc.add_MonitoringServiceServicer_to_server(self, server)
        return [monitoring_service_pb2.DESCRIPTOR.services_by_name["MonitoringService"].full_name]


class Servers:
    def __init__(self) -> None:
        self.forge = StreamingForge()
        self.monitoring = WriteStyleMonitoring()

    def register(self, server: grpc.aio.Server) -> list[str]:
        # RealtimeService is the generated base: every method is unimplemented.
        realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(
            realtime_service_pb2_grpc.RealtimeServiceServicer(), server)
        return [*self.forge.register(server), *self.monitoring.register(server),
                realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name]


@pytest.fixture
async def served() -> AsyncIterator[tuple[Servers, Service, grpc.aio.Channel]]:
    servers = Servers()
    service = await build_server(ServerConfig(grace_seconds=GRACE_SECONDS, metrics_port=-1), "forge",
                                 servers.register)
    servers.forge.stopping = service.stop_requested
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield servers, service, channel
    finally:
        await channel.close()
        await service.shutdown(0)


async def _drain(call: Any) -> list[Any]:
    """All messages of a stream; the call's status is read afterwards."""
    messages = []
    try:
        while (message := await call.read()) is not grpc.aio.EOF:
            messages.append(message)
    except grpc.aio.AioRpcError:
        pass
    return messages


def _error_info(status: status_pb2.Status) -> error_details_pb2.ErrorInfo:
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
    assert len(infos) == 1, status
    return infos[0]


async def test_normal_end_sends_stream_end_ok(served: Any) -> None:
    _, _, channel = served
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/done"))
    messages = await _drain(call)
    assert [m.sequence for m in messages[:-1]] == [1, 2, 3]
    assert all(not m.HasField("stream_end") for m in messages[:-1])
    last = messages[-1]
    assert last.WhichOneof("kind") == "stream_end"
    assert last.stream_end == status_pb2.Status(code=code_pb2.OK)
    assert await call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(("mode", "code", "reason"), [
    ("gone", grpc.StatusCode.NOT_FOUND, "PHASE_RUN_NOT_FOUND"),
    ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"),
    ("boom", grpc.StatusCode.INTERNAL, "INTERNAL"),
])
async def test_error_mid_stream_ends_with_the_calls_own_status(
    served: Any, mode: str, code: grpc.StatusCode, reason: str
) -> None:
    _, _, channel = served
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name=f"phaseRuns/{mode}"))
    messages = await _drain(call)
    assert [m.sequence for m in messages[:-1]] == [1, 2, 3]
    end = messages[-1].stream_end
    assert await call.code() == code
    call_status = await rpc_status.aio.from_call(call)
    assert call_status is not None
    # The last NDJSON line a REST client reads is exactly the call's status.
    assert end == call_status
    assert end.code == code.value[0]
    assert _error_info(end).reason == reason
    assert _error_info(end).domain == "agentforge.dev"
    if mode == "gone":
        assert end.message == "run deleted" and dict(_error_info(end).metadata) == {"phase_run": "phaseRuns/gone"}
    if mode == "invalid":
        bad = [d for d in end.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
        violations = error_details_pb2.BadRequest()
        bad[0].Unpack(violations)
        assert [(v.field, v.description) for v in violations.field_violations] == [("cursor", "malformed")]
    if mode == "boom":
        assert end.message == "internal error" and "secret" not in str(end)


async def test_error_before_the_first_message_stays_trailers_only(served: Any) -> None:
    _, _, channel = served
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/missing"))
    assert await _drain(call) == []
    assert await call.code() == grpc.StatusCode.NOT_FOUND
    invalid = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="Bad Name"))
    assert await _drain(invalid) == []
    assert await invalid.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_write_style_handler_also_gets_stream_end(served: Any) -> None:
    _, _, channel = served
    call = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchSystemHealth(
        monitoring_rr.WatchSystemHealthRequest())
    messages = await _drain(call)
    assert len(messages) == 3 and not messages[0].HasField("stream_end")
    assert messages[-1].stream_end.code == code_pb2.OK
    assert await call.code() == grpc.StatusCode.OK


async def test_shutdown_ends_open_streams_with_unavailable_well_before_grace(served: Any) -> None:
    servers, service, channel = served
    forge = forge_service_pb2_grpc.ForgeServiceStub(channel)
    endless = forge.WatchPhaseRun(Watch(name="phaseRuns/forever"))
    watcher = forge.WatchPhaseRun(Watch(name="phaseRuns/aborts-on-stop"))
    silent = forge.WatchPhaseRun(Watch(name="phaseRuns/silent"))
    written = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchSystemHealth(
        monitoring_rr.WatchSystemHealthRequest(kinds=[health_pb2.COMPONENT_KIND_SERVICE]))
    for _ in range(5):
        assert not (await endless.read()).HasField("stream_end")
    assert not (await written.read()).HasField("stream_end")
    for _ in range(3):
        assert not (await watcher.read()).HasField("stream_end")
    await asyncio.sleep(0.1)  # the silent stream's handler is waiting

    serving = asyncio.create_task(service.serve_forever(signals=()))
    started = time.monotonic()
    service.request_stop()  # what SIGTERM does
    rest = await asyncio.wait_for(_drain(endless), GRACE_SECONDS / 2)
    elapsed = time.monotonic() - started

    assert elapsed < 1.0, f"stream took {elapsed:.2f}s to end (grace {GRACE_SECONDS}s)"
    end = rest[-1].stream_end
    assert (end.code, end.message) == (code_pb2.UNAVAILABLE, SHUTDOWN_MESSAGE)
    assert _error_info(end).reason == "SERVER_SHUTTING_DOWN"
    assert all(not m.HasField("stream_end") for m in rest[:-1])
    assert await endless.code() == grpc.StatusCode.UNAVAILABLE
    assert end == await rpc_status.aio.from_call(endless)
    assert servers.forge.closed.is_set()  # the handler was closed, its finally ran

    # A handler that watches the stop event itself is cancelled before it can act on it.
    watcher_rest = await asyncio.wait_for(_drain(watcher), 1)
    assert watcher_rest[-1].stream_end.message == SHUTDOWN_MESSAGE
    assert await watcher.code() == grpc.StatusCode.UNAVAILABLE

    written_rest = await asyncio.wait_for(_drain(written), 1)
    assert written_rest[-1].stream_end.code == code_pb2.UNAVAILABLE
    assert await written.code() == grpc.StatusCode.UNAVAILABLE
    # Nothing sent yet: no stream_end, a trailers-only UNAVAILABLE (retryable).
    assert await asyncio.wait_for(_drain(silent), 1) == []
    assert await silent.code() == grpc.StatusCode.UNAVAILABLE

    await asyncio.wait_for(serving, GRACE_SECONDS / 2)
    assert time.monotonic() - started < 1.5  # the server did not wait out the grace period


async def test_unimplemented_methods_are_unimplemented(served: Any) -> None:
    _, _, channel = served
    realtime = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
    forge = forge_service_pb2_grpc.ForgeServiceStub(channel)
    unary = forge.ListPhases(forge_rr.ListPhasesRequest())
    stream = realtime.Subscribe(realtime_rr.SubscribeRequest(topics=["jobs"]))
    with pytest.raises(grpc.aio.AioRpcError) as unary_err:
        await unary
    assert await _drain(stream) == []
    for call in (unary, stream):
        assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
        assert await call.details() == "method not implemented"
    assert unary_err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_unary_rpc_is_unaffected(served: Any) -> None:
    _, _, channel = served
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).GetPhaseRun(
        forge_rr.GetPhaseRunRequest(name="phaseRuns/one"))
    assert await call == phase_run_pb2.PhaseRun(name="phaseRuns/one")
    assert await call.code() == grpc.StatusCode.OK


async def test_client_cancel_sends_nothing_and_logs_cancelled(
    served: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    servers, _, channel = served
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/forever"))
    assert (await call.read()).sequence == 1
    call.cancel()
    await asyncio.wait_for(servers.forge.closed.wait(), 2)

    def finished() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "rpc finished"
                and getattr(r, "method", "").endswith("/WatchPhaseRun")]

    deadline = time.monotonic() + 2
    while not finished() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    records = finished()
    assert [getattr(r, "grpc_code") for r in records] == ["CANCELLED"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_only_responses_with_a_status_stream_end_are_wrapped() -> None:
    interceptor = StreamEndInterceptor("agentforge.test")
    assert interceptor.stream_end_class("/agentforge.forge.v1.ForgeService/WatchPhaseRun") is Event
    assert interceptor.stream_end_class("/agentforge.monitoring.v1.MonitoringService/WatchAlerts") is not None
    assert interceptor.stream_end_class("/agentforge.forge.v1.ForgeService/GetPhaseRun") is None
    assert interceptor.stream_end_class("/grpc.health.v1.Health/Watch") is None
    assert interceptor.stream_end_class("/test.v1.Echo/Forever") is None


async def _stop_at_once_with_open_streams() -> None:
    """Streams open, client gone, server stopped with no grace: must not crash."""
    servers = Servers()
    service = await build_server(ServerConfig(grace_seconds=GRACE_SECONDS, metrics_port=-1), "forge",
                                 servers.register)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    stub = forge_service_pb2_grpc.ForgeServiceStub(channel)
    calls = [stub.WatchPhaseRun(Watch(name="phaseRuns/forever")) for _ in range(4)]
    for call in calls:
        await call.read()
    await channel.close()
    await service.shutdown(0)
    await asyncio.sleep(0.2)  # let cancelled handlers finish (and log)


def test_stopping_with_no_grace_while_streams_are_open_does_not_crash() -> None:
    # In a child process: the failure this guards against is a segfault (the RPC log
    # line reading context.peer() after the stopped server freed the call).
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'gen' / 'python'}"}
    code = ("import asyncio; from tests.shared.test_streams import _stop_at_once_with_open_streams as f; "
            "asyncio.run(f())")
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]


async def test_a_plain_asyncio_event_also_stops_streams() -> None:
    """default_interceptors accepts any asyncio.Event as the stop event."""
    stop = asyncio.Event()
    forge = StreamingForge()
    server = grpc.aio.server(interceptors=default_interceptors(None, "agentforge.forge", stop=stop))
    forge.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/forever"))
            assert (await call.read()).sequence == 1
            stop.set()
            rest = await asyncio.wait_for(_drain(call), 1)
            assert rest[-1].stream_end.code == code_pb2.UNAVAILABLE
            assert await call.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


# --- quiet streams ---------------------------------------------------------------------

QUIET_S = 0.5


@pytest.fixture
async def served_quiet() -> AsyncIterator[tuple[Servers, Service, grpc.aio.Channel]]:
    """Like ``served``, with streams ended after QUIET_S seconds without a message."""
    servers = Servers()
    service = await build_server(ServerConfig(grace_seconds=GRACE_SECONDS, metrics_port=-1,
                                              stream_max_quiet_s=QUIET_S), "forge", servers.register)
    servers.forge.stopping = service.stop_requested
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield servers, service, channel
    finally:
        await channel.close()
        await service.shutdown(0)


async def test_a_quiet_stream_ends_with_unavailable_and_its_stream_end(served_quiet: Any) -> None:
    servers, _, channel = served_quiet
    start = time.monotonic()
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/aborts-on-stop"))
    messages = await _drain(call)
    took = time.monotonic() - start
    assert [m.sequence for m in messages[:-1]] == [1, 2, 3]
    end = messages[-1].stream_end
    assert await call.code() == grpc.StatusCode.UNAVAILABLE  # retryable: resume with the cursor
    assert end.code == code_pb2.UNAVAILABLE and end.message.startswith(f"no message for {QUIET_S:g} s")
    assert end == await rpc_status.aio.from_call(call)
    assert QUIET_S <= took < QUIET_S + 3
    await asyncio.wait_for(servers.forge.closed.wait(), 5)  # the handler was closed


async def test_a_stream_that_keeps_sending_is_never_ended_as_quiet(served_quiet: Any) -> None:
    _, _, channel = served_quiet
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/forever"))
    try:
        end = time.monotonic() + 4 * QUIET_S
        count = 0
        while time.monotonic() < end:
            message = await call.read()
            assert message is not grpc.aio.EOF and not message.HasField("stream_end"), message
            count += 1
        assert count > 20
    finally:
        call.cancel()


async def test_a_stream_quiet_from_the_start_is_unavailable_trailers_only(served_quiet: Any) -> None:
    _, _, channel = served_quiet
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/silent"))
    assert await _drain(call) == []
    assert await call.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_quiet_write_style_stream_ends_too(served_quiet: Any) -> None:
    _, _, channel = served_quiet
    call = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchSystemHealth(
        monitoring_rr.WatchSystemHealthRequest(kinds=[health_pb2.COMPONENT_KIND_SERVICE]))
    messages = await _drain(call)
    assert len(messages) == 3 and messages[-1].stream_end.code == code_pb2.UNAVAILABLE
    assert await call.code() == grpc.StatusCode.UNAVAILABLE


def test_stream_max_quiet_is_configured_per_service_or_for_all() -> None:
    assert ServerConfig().stream_max_quiet_s == 600.0
    assert ServerConfig.from_env("forge", {"AF_STREAM_MAX_QUIET_S": "30"}).stream_max_quiet_s == 30.0
    assert ServerConfig.from_env("forge", {"AF_FORGE_STREAM_MAX_QUIET_S": "0"}).stream_max_quiet_s == 0.0
    with pytest.raises(ValueError, match="stream_max_quiet_s"):
        ServerConfig.from_env("forge", {"AF_STREAM_MAX_QUIET_S": "-1"})


# --- heartbeats ------------------------------------------------------------------------

HEARTBEAT_S = 0.15


@pytest.fixture
async def served_heartbeat() -> AsyncIterator[tuple[Servers, Service, grpc.aio.Channel]]:
    """Like ``served_quiet``, with a heartbeat every HEARTBEAT_S seconds of quiet."""
    servers = Servers()
    service = await build_server(ServerConfig(grace_seconds=GRACE_SECONDS, metrics_port=-1,
                                              stream_max_quiet_s=QUIET_S, stream_heartbeat_s=HEARTBEAT_S),
                                 "forge", servers.register)
    servers.forge.stopping = service.stop_requested
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        yield servers, service, channel
    finally:
        await channel.close()
        await service.shutdown(0)


async def _read_for(call: Any, seconds: float) -> list[Any]:
    """Messages read until ``seconds`` have passed (a stream that sends nothing fails
    the test after 10 s more; a timed-out read() would cancel the call); fails if the
    stream ends meanwhile."""
    got: list[Any] = []
    end = time.monotonic() + seconds
    async with asyncio.timeout(seconds + 10):
        while time.monotonic() < end:
            message = await call.read()
            assert message is not grpc.aio.EOF, f"the stream ended: {await call.code()} {await call.details()}"
            got.append(message)
    return got


async def test_a_quiet_watch_gets_heartbeats_and_outlives_the_quiet_limit(served_heartbeat: Any) -> None:
    servers, _, channel = served_heartbeat
    # Events 1-3, then nothing (the handler waits for the server's stop).
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/aborts-on-stop"))
    try:
        messages = await _read_for(call, 4 * QUIET_S)
        assert [m.sequence for m in messages[:3]] == [1, 2, 3]
        beats = messages[3:]
        assert len(beats) >= 3, messages  # about 13; never ended as quiet
        for beat in beats:
            assert beat.WhichOneof("kind") == "heartbeat"
            assert beat.heartbeat.time.seconds > 0
            assert not beat.cursor and not beat.sequence and not beat.HasField("phase_run")
        assert not servers.forge.closed.is_set()  # the handler was never disturbed
    finally:
        call.cancel()


async def test_a_watch_quiet_from_the_start_gets_heartbeats_before_its_first_event(served_heartbeat: Any) -> None:
    _, _, channel = served_heartbeat
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/silent"))
    try:
        beats = await _read_for(call, 3 * QUIET_S)
        assert len(beats) >= 3 and all(b.HasField("heartbeat") for b in beats)
    finally:
        call.cancel()


async def test_a_busy_watch_gets_no_heartbeats(served_heartbeat: Any) -> None:
    _, _, channel = served_heartbeat
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/forever"))
    try:
        messages = await _read_for(call, 3 * HEARTBEAT_S)
        # An event every 20 ms: never HEARTBEAT_S without a message (allowing for one
        # hiccup of this loaded machine), and the events keep their order.
        assert sum(m.HasField("heartbeat") for m in messages) <= 1
        events = [m.sequence for m in messages if not m.HasField("heartbeat")]
        assert events == list(range(1, len(events) + 1)) and len(events) > 5
    finally:
        call.cancel()


async def test_errors_after_a_heartbeat_still_end_with_their_status(served_heartbeat: Any) -> None:
    servers, service, channel = served_heartbeat
    call = forge_service_pb2_grpc.ForgeServiceStub(channel).WatchPhaseRun(Watch(name="phaseRuns/silent"))
    first = await asyncio.wait_for(call.read(), 5)
    assert first.HasField("heartbeat")
    service.stop_requested.set()
    rest = await asyncio.wait_for(_drain(call), 5)
    assert rest[-1].stream_end.code == code_pb2.UNAVAILABLE
    assert await call.code() == grpc.StatusCode.UNAVAILABLE
    await asyncio.wait_for(servers.forge.closed.wait(), 5)


async def test_streams_without_a_heartbeat_field_get_none(served_heartbeat: Any) -> None:
    # WatchSystemHealth has its own keepalive (a snapshot every `interval`): it is left
    # alone and still ends as quiet.
    _, _, channel = served_heartbeat
    call = monitoring_service_pb2_grpc.MonitoringServiceStub(channel).WatchSystemHealth(
        monitoring_rr.WatchSystemHealthRequest(kinds=[health_pb2.COMPONENT_KIND_SERVICE]))
    messages = await _drain(call)
    assert len(messages) == 3 and messages[-1].stream_end.code == code_pb2.UNAVAILABLE


def test_stream_heartbeat_is_configured_per_service_or_for_all() -> None:
    assert ServerConfig().stream_heartbeat_s == 15.0
    assert 0 < ServerConfig().stream_heartbeat_s < ServerConfig().stream_max_quiet_s
    assert ServerConfig.from_env("forge", {"AF_STREAM_HEARTBEAT_S": "2"}).stream_heartbeat_s == 2.0
    assert ServerConfig.from_env("forge", {"AF_FORGE_STREAM_HEARTBEAT_S": "0"}).stream_heartbeat_s == 0.0
    with pytest.raises(ValueError, match="stream_heartbeat_s"):
        ServerConfig.from_env("forge", {"AF_STREAM_HEARTBEAT_S": "-1"})


def test_the_watch_streams_have_a_heartbeat_and_subscribe_keeps_its_own() -> None:
    from agentforge.monitoring.v1 import alert_pb2
    from agentforge.realtime.v1 import request_response_pb2 as rt_rr
    from agentforge.training.v1 import training_job_event_pb2

    for cls in (training_job_event_pb2.TrainingJobEvent, phase_run_event_pb2.PhaseRunEvent, alert_pb2.AlertEvent):
        assert StreamEndInterceptor.has_heartbeat(cls), cls.DESCRIPTOR.full_name
    # Subscribe's Heartbeat carries a cursor and comes at the client's interval: not ours.
    assert not StreamEndInterceptor.has_heartbeat(rt_rr.SubscribeResponse)
    assert not StreamEndInterceptor.has_heartbeat(health_pb2.SystemHealth)


async def test_grpc_health_watch_resends_the_status_while_nothing_changes() -> None:
    from grpc_health.v1 import health_pb2 as grpc_health_pb2
    from grpc_health.v1 import health_pb2_grpc

    service = await build_server(ServerConfig(metrics_port=-1, stream_heartbeat_s=HEARTBEAT_S), "forge",
                                 Servers().register)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            call = health_pb2_grpc.HealthStub(channel).Watch(grpc_health_pb2.HealthCheckRequest(service=""))
            try:
                statuses = [m.status for m in await _read_for(call, 4 * HEARTBEAT_S)]
                assert len(statuses) >= 3, statuses
                assert set(statuses) == {grpc_health_pb2.HealthCheckResponse.SERVING}
                await service.health.set("", grpc_health_pb2.HealthCheckResponse.NOT_SERVING)
                changed = await asyncio.wait_for(call.read(), 5)
                assert changed is not grpc.aio.EOF, (await call.code(), await call.details())
                while changed.status == grpc_health_pb2.HealthCheckResponse.SERVING:  # a resend in flight
                    changed = await asyncio.wait_for(call.read(), 5)
                assert changed.status == grpc_health_pb2.HealthCheckResponse.NOT_SERVING
            finally:
                call.cancel()
    finally:
        await service.shutdown(0)
