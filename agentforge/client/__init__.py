"""The typed Python client of Agent Forge: every service through the edge (native gRPC).

::

    from agentforge.client import Client

    with Client() as af:                     # AGENTFORGE_EDGE or 127.0.0.1:8080; AGENTFORGE_TOKEN
        job = af.training.create_training_job(training_job=job_message)
        for event in af.training.watch_training_job(name=job.name):
            print(event.sequence, event.WhichOneof("kind"))

    async with AsyncClient(edge="127.0.0.1:8080", token=jwt) as af:
        health = await af.monitoring.get_system_health()

One attribute per service -- ``training``, ``models``, ``forge``, ``monitoring``,
``realtime`` -- with one method per RPC named like it (``GetTrainingJob`` →
``get_training_job``), taking the request message or its fields as keyword arguments
and returning the response message (``agentforge.<pkg>.v1.*_pb2``). The per-service
classes are generated from the contracts (``tools/gen_client.py``); docs/client.md has
examples. Failures raise :class:`ApiError` subclasses (:mod:`agentforge.client.errors`).
"""

from __future__ import annotations

from types import TracebackType

from agentforge.client._base import DEFAULT_EDGE, AsyncTransport, ClientConfig, Transport
from agentforge.client.errors import (
    AlreadyExistsError,
    ApiError,
    AuthError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentforge.client.retry import RetryPolicy
from agentforge.forge.v1 import forge_service_client as _forge
from agentforge.model.v1 import model_service_client as _model
from agentforge.monitoring.v1 import monitoring_service_client as _monitoring
from agentforge.realtime.v1 import realtime_service_client as _realtime
from agentforge.training.v1 import training_service_client as _training

__all__ = [
    "DEFAULT_EDGE",
    "AlreadyExistsError",
    "ApiError",
    "AsyncClient",
    "AuthError",
    "Client",
    "ClientConfig",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "FieldViolation",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "UnavailableError",
]

__version__ = "0.1.0"

_MODULES = (_training, _model, _forge, _monitoring, _realtime)
#: Every idempotent method of every service, ``/pkg.Service/Method``.
IDEMPOTENT_METHODS: tuple[str, ...] = tuple(
    f"/{mod.SERVICE}/{name}" for mod in _MODULES for name in mod.IDEMPOTENT_METHODS
)


def _config(edge: str | None, token: str | None, timeout_s: float | None, retry: RetryPolicy | None,
            reconnect_timeout_s: float, ca_cert: str | None) -> ClientConfig:
    return ClientConfig.resolve(edge, token, timeout_s=timeout_s, retry=retry,
                                reconnect_timeout_s=reconnect_timeout_s, ca_cert=ca_cert)


class Client:
    """Blocking client; one channel to the edge shared by all services (thread-safe).

    ``edge``: ``host:port`` (``grpcs://`` for TLS), default ``AGENTFORGE_EDGE`` or
    127.0.0.1:8080. ``token``: bearer JWT, default ``AGENTFORGE_TOKEN`` (or ``AF_TOKEN``);
    without one, calls go unauthenticated. ``timeout_s``: deadline of unary calls that give
    none (seconds; ``None`` = no deadline). ``retry``: backoff for idempotent calls and watch
    reconnects; ``reconnect_timeout_s``: how long a watch tries to get its stream back.
    Connecting is lazy: an unreachable edge shows as :class:`UnavailableError` on the first call.
    """

    def __init__(
        self,
        edge: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float | None = 30.0,
        retry: RetryPolicy | None = None,
        reconnect_timeout_s: float = 60.0,
        ca_cert: str | None = None,
    ) -> None:
        self.config = _config(edge, token, timeout_s, retry, reconnect_timeout_s, ca_cert)
        self._transport = Transport(self.config, IDEMPOTENT_METHODS)
        self.training = _training.TrainingService(self._transport)
        self.models = _model.ModelService(self._transport)
        self.forge = _forge.ForgeService(self._transport)
        self.monitoring = _monitoring.MonitoringService(self._transport)
        self.realtime = _realtime.RealtimeService(self._transport)

    @property
    def target(self) -> str:
        """The ``host:port`` this client talks to."""
        return self._transport.target

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """``asyncio`` client (``grpc.aio``); same arguments and attributes as :class:`Client`,
    every method a coroutine and every stream an async iterator. Create it in the event
    loop that uses it."""

    def __init__(
        self,
        edge: str | None = None,
        token: str | None = None,
        *,
        timeout_s: float | None = 30.0,
        retry: RetryPolicy | None = None,
        reconnect_timeout_s: float = 60.0,
        ca_cert: str | None = None,
    ) -> None:
        self.config = _config(edge, token, timeout_s, retry, reconnect_timeout_s, ca_cert)
        self._transport = AsyncTransport(self.config, IDEMPOTENT_METHODS)
        self.training = _training.AsyncTrainingService(self._transport)
        self.models = _model.AsyncModelService(self._transport)
        self.forge = _forge.AsyncForgeService(self._transport)
        self.monitoring = _monitoring.AsyncMonitoringService(self._transport)
        self.realtime = _realtime.AsyncRealtimeService(self._transport)

    @property
    def target(self) -> str:
        return self._transport.target

    async def close(self) -> None:
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
