"""Domain errors → google.rpc.Status with ErrorInfo/BadRequest, decoded by a client."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.shared import errors

from .conftest import rpc
from tests.support import error_details

S = wrappers_pb2.StringValue


def _details(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    info, bad = error_details(status)
    assert info is not None, "every error status carries an ErrorInfo"
    return info, bad


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Aborted, grpc.StatusCode.ABORTED),
        (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_each_error_maps_to_its_code_and_reason(cls: type[errors.ForgeError], code: grpc.StatusCode) -> None:
    status = errors.to_rpc_status(cls("msg"), "agentforge.test")
    assert status.code == code.value[0]
    assert status.message == "msg"
    info, _ = _details(status)
    assert (info.reason, info.domain) == (code.name, "agentforge.test")


def test_reason_and_metadata_can_be_refined() -> None:
    status = errors.to_rpc_status(errors.NotFound("x", reason="JOB_NOT_FOUND", metadata={"job": "j1"}), "d")
    info, bad = _details(status)
    assert info.reason == "JOB_NOT_FOUND" and dict(info.metadata) == {"job": "j1"}
    assert bad is None


def test_unexpected_exception_becomes_generic_internal(caplog: pytest.LogCaptureFixture) -> None:
    status = errors.status_for_exception(RuntimeError("db password=hunter2"), "d")
    assert status.code == code_pb2.INTERNAL
    assert "hunter2" not in status.SerializeToString().decode("latin-1")
    assert "hunter2" in caplog.text  # logged for operators


async def test_client_decodes_error_info_from_trailers(channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "uu", "Unary", S, S)(S(value="not_found"))
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    assert exc_info.value.code() == grpc.StatusCode.NOT_FOUND
    status = await rpc_status.aio.from_call(call)
    assert status is not None and status.message == "thing missing"
    info, _ = _details(status)
    assert (info.reason, info.domain, dict(info.metadata)) == ("JOB_NOT_FOUND", "agentforge.dev", {"thing": "t1"})


async def test_client_decodes_bad_request_field_violations(channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "uu", "Unary", S, S)(S(value="invalid"))
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    assert exc_info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = await rpc_status.aio.from_call(call)
    assert status is not None
    info, bad = _details(status)
    assert info.reason == "INVALID_ARGUMENT"
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [("a.b", "must be set"), ("c[0]", "too long")]


async def test_unhandled_exception_is_internal_without_leaking(channel: grpc.aio.Channel) -> None:
    call = rpc(channel, "uu", "Unary", S, S)(S(value="boom"))
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await call
    err = exc_info.value
    assert err.code() == grpc.StatusCode.INTERNAL
    assert err.details() == "internal error"
    assert "secret-token-123" not in repr(err) + str(await call.trailing_metadata())


async def test_error_in_server_stream_after_messages(channel: grpc.aio.Channel) -> None:
    I = wrappers_pb2.Int64Value
    call = rpc(channel, "us", "ServerStream", I, I)(I(value=-2))
    got = []
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        async for m in call:
            got.append(m.value)
    assert got == [0, 1]
    assert exc_info.value.code() == grpc.StatusCode.ABORTED
    status = await rpc_status.aio.from_call(call)
    assert status is not None and _details(status)[0].reason == "ABORTED"


async def test_plain_abort_by_handler_passes_through(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as exc_info:
        await rpc(channel, "uu", "Unary", S, S)(S(value="abort"))
    assert (exc_info.value.code(), exc_info.value.details()) == (grpc.StatusCode.PERMISSION_DENIED, "nope")


# --- the one error catalogue (issue 8) ---------------------------------------------------

SERVICES = Path(__file__).resolve().parents[2] / "services"


def test_every_reason_a_service_names_is_in_the_catalogue() -> None:
    """Scan every ``reason="..."`` and ``default_reason = "..."`` in services/."""
    pattern = re.compile(r'(?:reason=|default_reason\s*(?::[^=]+)?=\s*)"([A-Z][A-Z0-9_]*)"')
    used: dict[str, str] = {}
    for path in SERVICES.rglob("*.py"):
        for match in pattern.finditer(path.read_text()):
            used.setdefault(match.group(1), str(path.relative_to(SERVICES)))
    assert len(used) > 20  # the scan finds the service reasons at all
    unknown = {reason: where for reason, where in used.items() if reason not in errors.REASONS}
    assert not unknown, f"reasons missing from agentforge.common.v1.ErrorReason: {unknown}"


def test_every_error_class_default_reason_is_catalogued() -> None:
    classes = [errors.ForgeError, *errors.ForgeError.__subclasses__()]
    assert len(classes) > 10
    for cls in classes:
        assert cls.default_reason in errors.REASONS, cls


def test_every_catalogued_reason_is_documented_with_its_status_code() -> None:
    api = (SERVICES.parent / "docs" / "api.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` ", api, re.M))
    assert set(rows) == set(errors.REASONS), set(errors.REASONS) ^ set(rows)
    assert set(rows.values()) <= set(grpc.StatusCode.__members__)


def test_a_reason_outside_the_catalogue_never_reaches_the_client(caplog: pytest.LogCaptureFixture) -> None:
    exc = errors.NotFound("gone", reason="MADE_UP_REASON")
    info, _ = _details(errors.to_rpc_status(exc))
    assert (info.reason, info.domain) == ("NOT_FOUND", errors.DOMAIN)
    assert "MADE_UP_REASON" in caplog.text


def test_a_huge_echoed_input_gives_a_bounded_status() -> None:
    """A 30,000-character label key must not blow the trailers (issue 8)."""
    key = "k" * 30_000
    violations = [(f'labels["{key}{i}"]', f"key {key} is too long") for i in range(200)]
    exc = errors.InvalidArgument(f"invalid request: labels[\"{key}\"]: too long", violations,
                                 metadata={"key": key})
    status = errors.to_rpc_status(exc)
    assert status.ByteSize() <= errors.MAX_STATUS_BYTES
    assert len(status.message) <= errors.MAX_MESSAGE_CHARS and "more violations not listed" in status.message
    info, bad = _details(status)
    assert bad is not None and 1 <= len(bad.field_violations) < 200
    assert all(len(v.field) <= errors.MAX_FIELD_CHARS for v in bad.field_violations)
    assert len(info.metadata["key"]) <= errors.MAX_METADATA_CHARS



def test_services_raise_each_reason_with_its_documented_code() -> None:
    """Every ``SomeError(..., reason="X")`` in services/ uses the code docs/api.md gives X."""
    import ast

    api = (SERVICES.parent / "docs" / "api.md").read_text()
    documented = dict(re.findall(r"^\| `([A-Z_]+)` \| `([A-Z_]+)` ", api, re.M))
    classes = {cls.__name__: cls for cls in errors.ForgeError.__subclasses__()}
    checked, wrong = 0, []
    for path in SERVICES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            cls = classes.get(name or "")
            reason = next((k.value.value for k in node.keywords
                           if k.arg == "reason" and isinstance(k.value, ast.Constant)), None)
            if cls is None or not isinstance(reason, str):
                continue
            checked += 1
            if documented.get(reason) != cls.code.name:
                wrong.append(f"{path.relative_to(SERVICES)}:{node.lineno} {name}(reason={reason!r}) "
                             f"is {cls.code.name}, docs say {documented.get(reason)}")
    assert checked > 20
    assert not wrong, "\n".join(wrong)
