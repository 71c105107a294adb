"""Chaos fixtures: real Valkey servers that tests kill, real services and workers.

Shared by the issue-7 chaos tests; each fixture is its own clearly named function (add
yours beside them, do not rewrite these).

- ``training_on_private_valkey`` (i7-recovery): ``await start(**config)`` → a
  :class:`ChaosTraining`: a private Valkey (no persistence) that the test may
  ``kill()`` / ``start()`` on the same port, and the training service on it (in this
  process, served over gRPC on a free port) with real ``spawn`` worker processes and
  fast heartbeats and reconciliation. ``restart_service()`` stops the service and its
  workers and starts them again on the same data directory (a full restart).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from agentforge.training.v1 import training_service_pb2_grpc

from services.shared.config import ServerConfig
from services.shared.server import Service
from services.shared.valkey import EmbeddedValkey
from services.training.config import TrainingConfig
from services.training.server import TrainingApp, create_server

TERMINAL = {job_pb.TRAINING_JOB_STATE_SUCCEEDED, job_pb.TRAINING_JOB_STATE_FAILED,
            job_pb.TRAINING_JOB_STATE_CANCELLED}


@dataclass
class ResumingWatch:
    """What a well-behaved client of ``WatchTrainingJob`` saw: it resumes by cursor after
    every UNAVAILABLE (and only then), as docs/api.md tells clients to."""

    events: list[ev_pb.TrainingJobEvent] = field(default_factory=list)
    #: Every error code and non-OK ``stream_end`` code the client got.
    errors: list[grpc.StatusCode] = field(default_factory=list)
    reconnects: int = 0

    def deduplicated(self) -> list[ev_pb.TrainingJobEvent]:
        """Events with duplicates (same sequence) dropped, in order."""
        seen: set[int] = set()
        out = []
        for event in self.events:
            if event.sequence not in seen:
                seen.add(event.sequence)
                out.append(event)
        return out


@dataclass
class ChaosTraining:
    valkey: EmbeddedValkey
    config: TrainingConfig
    server_config: ServerConfig
    service: Service
    app: TrainingApp
    channel: grpc.aio.Channel
    stub: training_service_pb2_grpc.TrainingServiceStub

    async def create(self, spec: job_pb.TrainingJobSpec, *, request_id: str = "", timeout: float | None = None,
                     **fields: Any) -> job_pb.TrainingJob:
        job = job_pb.TrainingJob(spec=spec, **fields)
        return await self.stub.CreateTrainingJob(
            rr.CreateTrainingJobRequest(training_job=job, request_id=request_id), timeout=timeout)

    async def get(self, name: str) -> job_pb.TrainingJob:
        return await self.stub.GetTrainingJob(rr.GetTrainingJobRequest(name=name))

    async def wait_terminal(self, name: str, timeout: float) -> job_pb.TrainingJob:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    job = await self.get(name)
                    if job.state in TERMINAL:
                        return job
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                await asyncio.sleep(0.2)

    async def watch_resuming(self, name: str, into: ResumingWatch, *, timeout: float = 120.0) -> ResumingWatch:
        """Follow the job to its terminal event, resuming by cursor after UNAVAILABLE."""
        cursor = ""
        async with asyncio.timeout(timeout):
            while True:
                call = self.stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=name, cursor=cursor))
                try:
                    async for event in call:
                        if event.HasField("stream_end"):
                            if event.stream_end.code:
                                into.errors.append(grpc.StatusCode(  # type: ignore[call-arg]
                                    next(c for c in grpc.StatusCode if c.value[0] == event.stream_end.code)))
                            continue
                        if event.HasField("heartbeat"):
                            continue  # a keepalive of the quiet stream: no event, no cursor
                        into.events.append(event)
                        cursor = event.cursor
                        if event.HasField("state_changed") and event.state_changed.to_state in TERMINAL:
                            return into
                except grpc.aio.AioRpcError as exc:
                    into.errors.append(exc.code())
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                into.reconnects += 1
                await asyncio.sleep(0.2)

    async def restart_service(self) -> None:
        """Stop the service and its workers, then start them again on the same database."""
        await self._stop()
        self.service, self.app = await create_server(self.config, self.server_config)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.service.port}")
        self.stub = training_service_pb2_grpc.TrainingServiceStub(self.channel)

    async def _stop(self) -> None:
        await self.channel.close()
        await self.service.shutdown(0.5)
        await self.app.aclose()


@pytest.fixture
async def training_on_private_valkey(
    valkey_factory: Callable[[], EmbeddedValkey], tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[ChaosTraining]]]:
    started: list[ChaosTraining] = []

    async def start(**overrides: Any) -> ChaosTraining:
        valkey = valkey_factory()
        values: dict[str, Any] = dict(data_dir=tmp_path / f"training-{len(started)}", redis_url=valkey.url,
                                      workers=1, heartbeat_interval_s=0.25, heartbeat_timeout_s=1.5,
                                      max_attempts=3, torch_threads=1, reconcile_interval_s=0.5,
                                      key_prefix=f"c{uuid.uuid4().hex[:8]}:")
        values.update(overrides)
        config = TrainingConfig(**values)
        server_config = ServerConfig(grace_seconds=0.5, metrics_port=-1, log_format="text", log_level="WARNING")
        service, app = await create_server(config, server_config)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
        harness = ChaosTraining(valkey, config, server_config, service, app, channel,
                                training_service_pb2_grpc.TrainingServiceStub(channel))
        started.append(harness)
        return harness

    yield start
    for harness in started:
        await harness._stop()
