"""Fixtures for the training service tests: a real server with real spawned workers.

``training`` (module scope) starts the service in this process on ``[::]:0`` through the
shared runtime, with two ``spawn`` worker processes, a private SQLite database and a
private Redis key prefix on the session's Valkey. Heartbeats are fast (0.25 s, timeout
1.5 s) so recovery tests finish quickly.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb
from agentforge.training.v1 import training_service_pb2_grpc
from google.rpc import status_pb2

from services.shared.config import ServerConfig
from services.shared.server import Service
from services.shared.valkey import EmbeddedValkey
from services.training.config import TrainingConfig
from services.training.server import TrainingApp, create_server

TERMINAL = {job_pb.TRAINING_JOB_STATE_SUCCEEDED, job_pb.TRAINING_JOB_STATE_FAILED,
            job_pb.TRAINING_JOB_STATE_CANCELLED}


def tiny_spec(**overrides: object) -> job_pb.TrainingJobSpec:
    """x*y mod 23 on a 1-layer width-32 decoder: ~1-2 ms per step on one CPU thread."""
    spec = job_pb.TrainingJobSpec(
        task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_MODULAR_ARITHMETIC, modulus=23),
        model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=4),
        optimizer=job_pb.OptimizerSpec(kind=job_pb.OPTIMIZER_KIND_ADAM, learning_rate=1e-3, warmup_steps=3,
                                       weight_decay=0.005),
        grokfast=job_pb.GrokfastSpec(kind=job_pb.GROKFAST_KIND_EMA, alpha=0.98, lamb=2.0),
        batch_size=64, max_steps=40, eval_interval=10, checkpoint_interval=10, progress_interval=1,
        keep_checkpoints=10, seed=0, device=job_pb.DEVICE_CPU,
    )
    for key, value in overrides.items():
        if hasattr(value, "DESCRIPTOR"):
            getattr(spec, key).CopyFrom(value)
        else:
            setattr(spec, key, value)
    return spec


@dataclass
class Training:
    service: Service
    app: TrainingApp
    channel: grpc.aio.Channel
    stub: training_service_pb2_grpc.TrainingServiceStub
    config: TrainingConfig
    drains: list[asyncio.Task[None]]
    stream_ends: list[status_pb2.Status]

    async def create(self, spec: job_pb.TrainingJobSpec | None = None, **fields: object) -> job_pb.TrainingJob:
        request_id = str(fields.pop("request_id", ""))
        job = job_pb.TrainingJob(spec=spec or tiny_spec(), **fields)  # type: ignore[arg-type]
        return await self.stub.CreateTrainingJob(rr.CreateTrainingJobRequest(training_job=job, request_id=request_id))

    async def watch(self, name: str, cursor: str = "", *, until: Callable[[ev_pb.TrainingJobEvent], bool] | None = None,
                    timeout: float = 60.0) -> list[ev_pb.TrainingJobEvent]:
        """Events until the stream ends (terminal state) or ``until`` returns True.

        A stream left early is drained in the background rather than cancelled: cancelling
        a server stream currently crashes the server (see ``drain`` in the fixture).
        """
        events: list[ev_pb.TrainingJobEvent] = []
        call = self.stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=name, cursor=cursor))
        stream = call.__aiter__()
        async with asyncio.timeout(timeout):
            async for event in stream:
                if event.HasField("stream_end"):  # the shared runtime's last message
                    self.stream_ends.append(event.stream_end)
                    continue
                if event.HasField("heartbeat"):  # a keepalive of the quiet stream
                    continue
                events.append(event)
                if until is not None and until(event):
                    self.drains.append(asyncio.create_task(self._drain(stream)))
                    break
        return events

    @staticmethod
    async def _drain(stream: AsyncIterator[ev_pb.TrainingJobEvent]) -> None:
        async for _ in stream:
            pass

    async def get(self, name: str) -> job_pb.TrainingJob:
        return await self.stub.GetTrainingJob(rr.GetTrainingJobRequest(name=name))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def training(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Training]:
    async for harness in training_harness(valkey, tmp_path_factory):
        yield harness


async def training_harness(valkey: EmbeddedValkey, tmp_path_factory: pytest.TempPathFactory,
                           **overrides: object) -> AsyncIterator[Training]:
    """The ``training`` fixture's body; ``overrides`` change its TrainingConfig."""
    data_dir: Path = tmp_path_factory.mktemp("training")
    values: dict[str, object] = dict(data_dir=data_dir, redis_url=valkey.url, workers=2, heartbeat_interval_s=0.25,
                                     heartbeat_timeout_s=1.5, max_attempts=2, torch_threads=1,
                                     key_prefix=f"t{uuid.uuid4().hex[:8]}:")
    values.update(overrides)
    config = TrainingConfig(**values)  # type: ignore[arg-type]
    service, app = await create_server(config, ServerConfig(grace_seconds=0.5, metrics_port=-1, log_format="text",
                                                            log_level="WARNING"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    try:
        harness = Training(service, app, channel, training_service_pb2_grpc.TrainingServiceStub(channel), config, [], [])
        yield harness
        # Every job a test started is terminal by now, so every drained watch ends OK.
        # (Cancelling an open server stream makes the shared LoggingInterceptor call
        # context.peer() on a cancelled call, which segfaults grpcio: grpc/grpc#29927.)
        await asyncio.wait_for(asyncio.gather(*harness.drains, return_exceptions=True), 60)
    finally:
        await channel.close()
        await service.shutdown(0.5)
        await app.aclose()
