"""Helpers shared by the test suites: reading rich gRPC errors, grpc-web framing, and
starting a whole mesh for a fixture."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING
from collections.abc import Iterator
from contextlib import contextmanager

import grpc.aio
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

if TYPE_CHECKING:
    from services.launcher.mesh import Mesh, MeshConfig

__all__ = ["error_details", "field_violations", "grpc_web_frame", "grpc_web_frames", "violation_map"]


def _status(source: grpc.aio.AioRpcError | status_pb2.Status) -> status_pb2.Status:
    if isinstance(source, status_pb2.Status):
        return source
    status = rpc_status.from_call(source)  # type: ignore[arg-type]
    assert status is not None, "rich status details (grpc-status-details-bin) expected"
    return status


def error_details(
    source: grpc.aio.AioRpcError | status_pb2.Status,
) -> tuple[error_details_pb2.ErrorInfo | None, error_details_pb2.BadRequest | None]:
    """The ErrorInfo and BadRequest details of a failed call or a google.rpc.Status."""
    info = bad = None
    for detail in _status(source).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
    return info, bad


def violation_map(source: grpc.aio.AioRpcError | status_pb2.Status) -> dict[str, str]:
    """``{field path: description}`` of the BadRequest field violations."""
    _, bad = error_details(source)
    return {v.field: v.description for v in bad.field_violations} if bad else {}


def field_violations(source: grpc.aio.AioRpcError | status_pb2.Status) -> list[str]:
    """The field paths the BadRequest detail names, in order."""
    _, bad = error_details(source)
    return [v.field for v in bad.field_violations] if bad else []


def grpc_web_frame(message: bytes) -> bytes:
    """One uncompressed grpc-web data frame."""
    return struct.pack(">BI", 0, len(message)) + message


def grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """Split a grpc-web response body into its messages and the trailer frame's fields."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        flag, length = struct.unpack(">BI", body[pos:pos + 5])
        payload = body[pos + 5:pos + 5 + length]
        assert len(payload) == length, "truncated grpc-web frame"
        pos += 5 + length
        if flag & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    key, _, value = line.partition(":")
                    trailers[key.strip().lower()] = value.strip()
        else:
            assert flag == 0, "compressed frames were not asked for"
            messages.append(payload)
    return messages, trailers


@contextmanager
def started_mesh(config: "MeshConfig", *, logs: object = None) -> "Iterator[Mesh]":
    """A started :class:`~services.launcher.mesh.Mesh`, stopped on exit.

    A mesh that does not start fails the test with the launcher's message (each
    process's log tail; ``logs`` names where the full logs are) instead of a traceback,
    and whatever it did start is stopped first. Used by every fixture that starts the
    whole mesh (tests/e2e, tests/chaos).
    """
    import pytest

    from services.launcher.mesh import Mesh, MeshStartError

    mesh = Mesh(config)
    try:
        mesh.start()
    except MeshStartError as exc:
        mesh.stop()
        where = f" (logs in {logs})" if logs is not None else ""
        pytest.fail(f"the mesh did not start{where}:\n{exc}", pytrace=False)
    try:
        yield mesh
    finally:
        mesh.stop()


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """One scrape of ``http://host:port/metrics``: ``{(sample name, sorted labels): value}``."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}
