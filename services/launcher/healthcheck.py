"""``python -m services.launcher.healthcheck HOST:PORT [SERVICE]`` — exit 0 iff SERVING.

The container health check of docker-compose.yml: the same grpc.health.v1 ``Check``
the launcher waits for.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["check", "main"]


def check(addr: str, service: str = "", timeout: float = 2.0) -> bool:
    """True when ``addr`` answers SERVING for ``service`` (``""`` = the whole server)."""
    with grpc.insecure_channel(addr) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not 1 <= len(args) <= 2:
        print("usage: python -m services.launcher.healthcheck HOST:PORT [SERVICE]", file=sys.stderr)
        return 2
    return 0 if check(*args) else 1


if __name__ == "__main__":
    raise SystemExit(main())
