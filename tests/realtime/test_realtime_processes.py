"""Two realtime processes behind one Envoy, started by the launcher on real Valkey.

Subscribers of one topic spread over both processes (each process's
``agentforge_fanout_watchers``); a publish reaches subscribers on both; a killed process
is restarted by the launcher while streams on the other carry on; a stream that resumes
with its cursor on the other process gets exactly the messages after it (all state is
in Valkey).
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agentforge.realtime.v1 import realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as rr
from services.launcher.mesh import Mesh, MeshConfig, unhealthy_upstreams
from services.shared.auth import mint_token
from tests.support import scrape, started_mesh

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STREAMS = 10
TOPIC = f"scale/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base: Path = tmp_path_factory.mktemp("rt-procs")
    config = MeshConfig(services=("realtime",), realtime_processes=2, data_dir=base / "data",
                        log_dir=base / "logs", run_dir=base / "run", startup_timeout=90.0, stop_grace=5.0)
    with started_mesh(config, logs=base / "logs") as instance:
        yield instance


def _watchers(mesh: Mesh, names: tuple[str, ...] = ("realtime", "realtime-2")) -> dict[str, int]:
    """Open subscriptions per realtime process, read from its own /metrics."""
    counts = {}
    for name in names:
        samples = scrape(mesh.process_ports[name][1])
        counts[name] = int(sum(v for (metric, _), v in samples.items() if metric == "agentforge_fanout_watchers"))
    return counts


@dataclass
class Sub:
    """One client stream: the sequences it received, its last cursor, how it ended."""

    seqs: list[int] = field(default_factory=list)
    cursor: str = ""
    error: grpc.StatusCode | None = None
    detail: str = ""
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


async def _follow(stub: realtime_service_pb2_grpc.RealtimeServiceStub, sub: Sub, metadata: tuple) -> None:
    request = rr.SubscribeRequest(topics=[TOPIC], cursor=sub.cursor)
    request.heartbeat_interval.seconds = 1
    call = stub.Subscribe(request, metadata=metadata)
    try:
        async for item in call:
            kind = item.WhichOneof("kind")
            if kind == "heartbeat":
                sub.opened.set()
            elif kind == "message":
                sub.seqs.append(item.message.sequence)
                sub.cursor = item.message.cursor
            elif kind == "stream_end":
                sub.error = grpc.StatusCode.UNAVAILABLE if item.stream_end.code else grpc.StatusCode.OK
                return
    except grpc.aio.AioRpcError as exc:
        sub.error, sub.detail = exc.code(), exc.details() or ""
    finally:
        sub.opened.set()


async def _open(stub: realtime_service_pb2_grpc.RealtimeServiceStub, sub: Sub, metadata: tuple) -> None:
    """Open (or resume by cursor) until the stream is up: UNAVAILABLE at open is retried,
    as docs/api.md tells clients to (Envoy may still pick a process that just died)."""
    deadline = time.monotonic() + 60
    while True:
        sub.error = None
        sub.opened = asyncio.Event()
        sub.task = asyncio.create_task(_follow(stub, sub, metadata))
        await asyncio.wait_for(sub.opened.wait(), 30)
        if sub.error is None:
            return
        assert sub.error == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline, sub.error
        await asyncio.sleep(0.2)


async def _until(predicate, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_streams_spread_over_two_processes_survive_a_kill_and_resume_on_the_other(mesh: Mesh) -> None:
    metadata = (("authorization", f"Bearer {mint_token('admin', subject='rt-procs', ttl_s=600)}"),)
    published: list[int] = []
    async with grpc.aio.insecure_channel(mesh.edge_addr) as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)

        async def publish(n: int) -> None:
            for _ in range(n):  # UNAVAILABLE (a process that just died) is retried, same request id
                request = rr.PublishRequest(topic=TOPIC, data={"n": 1}, request_id=str(uuid.uuid4()))
                for attempt in range(100):
                    try:
                        reply = await stub.Publish(request, metadata=metadata, timeout=10)
                        break
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.UNAVAILABLE and attempt < 99, exc
                        await asyncio.sleep(0.1)
                published.append(reply.sequence)

        await publish(1)  # the topic exists; streams start live after it
        subs = [Sub() for _ in range(STREAMS)]
        more: list[Sub] = []
        for sub in subs:
            await _open(stub, sub, metadata)
        try:
            # Envoy spread the streams over both processes (LEAST_REQUEST).
            await _until(lambda: sum(_watchers(mesh).values()) == STREAMS, "every stream counted")
            before = _watchers(mesh)
            assert set(before) == {"realtime", "realtime-2"}
            assert all(count >= 1 for count in before.values()), before

            await publish(2)  # one publish reaches subscribers on both processes
            await _until(lambda: all(s.seqs == [2, 3] for s in subs), "every stream got 2, 3")

            # Kill one process: the launcher restarts it; the other's streams carry on.
            victim = "realtime"
            pid = mesh.process(victim).pid
            mesh.kill_service(victim, signal.SIGKILL)
            await _until(lambda: sum(s.error is not None for s in subs) == before[victim],
                         f"the {before[victim]} streams of the killed process ended")
            ended = [s for s in subs if s.error is not None]
            alive = [s for s in subs if s.error is None]
            # Through Envoy, a stream whose upstream process is SIGKILLed after its response
            # headers were sent may end INTERNAL rather than UNAVAILABLE (seen here; Envoy
            # resets the stream, it cannot send a status); a SIGTERMed process ends its streams
            # with a stream_end status instead. Either way the stream ends and resumes by cursor.
            assert {s.error for s in ended} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL}, [
                s.detail for s in ended]
            await publish(1)  # 4: while the ended streams are away
            await _until(lambda: all(s.seqs == [2, 3, 4] for s in alive), "the other process's streams got 4")
            assert all(s.error is None for s in alive)
            new_pid = await asyncio.to_thread(mesh.wait_restarted, victim, pid, 60.0)
            assert new_pid != pid

            # Hold it down now: resuming streams can only land on the other process, and
            # each gets exactly what it missed (4, 5) from the store, then goes live.
            mesh.kill_service(victim, signal.SIGKILL, restart=False)
            await publish(1)  # 5
            for sub in subs:  # every stream that ended, from either kill, resumes by cursor
                if sub.error is not None:
                    assert sub.cursor
                    await _open(stub, sub, metadata)
            await _until(lambda: _watchers(mesh, ("realtime-2",))["realtime-2"] == STREAMS, "all on realtime-2")
            await publish(1)  # 6
            await _until(lambda: all(s.seqs == [2, 3, 4, 5, 6] for s in subs),
                         "every stream got exactly 2..6, once each, in order")
            assert all(s.error is None for s in subs)
            assert published == [1, 2, 3, 4, 5, 6]

            # Back to two: restart on request. Envoy sends new streams to the restarted
            # process again (LEAST_REQUEST prefers it: it has none). Not at once: Envoy takes a
            # second or two (1.7 s seen) to route to it again after its health check passes.
            await asyncio.to_thread(mesh.restart_service, victim)
            await _until(lambda: _envoy_sees_healthy(mesh), "Envoy sees both processes healthy")
            began = time.monotonic()
            while _watchers(mesh)["realtime"] == 0:
                assert time.monotonic() - began < 60, "no new stream reached the restarted process"
                more.append(Sub())
                await _open(stub, more[-1], metadata)
                await asyncio.sleep(0.5)
        finally:
            for sub in subs + more:
                if sub.task is not None:
                    sub.task.cancel()
            await asyncio.gather(*(s.task for s in subs + more if s.task is not None), return_exceptions=True)


def _envoy_sees_healthy(mesh: Mesh) -> bool:
    with urllib.request.urlopen(f"{mesh.admin_url}/clusters", timeout=5) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    return not unhealthy_upstreams(text, {name: port for name, (port, _) in mesh.process_ports.items()})
