"""Start a phase run through the edge and print its progress until it ends (``make run``).

Talks native gRPC to Envoy's edge listener (the same door every client uses):
``ForgeService.StartPhaseRun`` then ``WatchPhaseRun``, resuming from the last cursor
if the stream drops. It authenticates like any client: a bearer token, by default one it
mints for itself (role trainer, subject ``make-run``) with the development key. Nothing here simulates the phase: when forge does not implement
the RPCs the run fails with a clear message.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from agentforge.forge.v1 import forge_service_pb2_grpc, phase_run_event_pb2, phase_run_pb2, request_response_pb2
from google.protobuf import struct_pb2

from agentforge.cli.progress import format_phase_event
from services.shared.auth import mint_token

__all__ = ["PhaseRunFailed", "RunResult", "cancel_run", "format_event", "run_phase"]

_TERMINAL = {
    phase_run_pb2.PHASE_RUN_STATE_SUCCEEDED,
    phase_run_pb2.PHASE_RUN_STATE_FAILED,
    phase_run_pb2.PHASE_RUN_STATE_CANCELLED,
}
_RECONNECTS = 5
#: Lifetime of the token ``make run`` mints for itself.
RUN_TOKEN_TTL_S = 4 * 3600.0


def _credentials(token: str | None) -> tuple[tuple[str, str], ...]:
    """Call metadata with ``token``, or with a trainer token minted for ``make run``."""
    return (("authorization", f"Bearer {token or mint_token('trainer', subject='make-run', ttl_s=RUN_TOKEN_TTL_S)}"),)


class PhaseRunFailed(RuntimeError):
    """The run could not be started or followed (the message says why)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    name: str
    state: int
    run: phase_run_pb2.PhaseRun
    #: The W3C trace id the run was started in (``forge trace <id>`` shows it).
    trace_id: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == phase_run_pb2.PHASE_RUN_STATE_SUCCEEDED

    @property
    def state_name(self) -> str:
        return _state(self.state)


def _state(value: int) -> str:
    return phase_run_pb2.PhaseRunState.Name(value).removeprefix("PHASE_RUN_STATE_")


def _code_name(code: int) -> str:
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return str(code)


def format_event(event: phase_run_event_pb2.PhaseRunEvent) -> str:
    """One console line for an event: progress and the stream's end here, every other
    kind in the CLI's words (:func:`agentforge.cli.progress.format_phase_event`)."""
    kind = event.WhichOneof("kind")
    if kind == "progress":
        p = event.progress
        steps = f" {p.steps_done}/{p.steps_total}" if p.steps_total else ""
        current = f" {p.current_step}" if p.current_step else ""
        return f"[{p.fraction_done * 100:5.1f}%]{current}{steps} {p.message}".rstrip()
    if kind == "stream_end":
        end = event.stream_end
        return f"stream ended: {_code_name(end.code)}" + (f" {end.message}" if end.message else "")
    return format_phase_event(event)


def _rpc_error(what: str, exc: grpc.RpcError) -> PhaseRunFailed:
    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return PhaseRunFailed(
            f"{what}: the forge service does not implement this RPC yet (UNIMPLEMENTED: {details})"
        )
    name = code.name if code is not None else "ERROR"
    return PhaseRunFailed(f"{what} failed: {name}: {details}")


def run_phase(
    edge_addr: str,
    *,
    phase: str = "phases/cognate",
    parameters: dict[str, float | int | str | bool] | None = None,
    out: Callable[[str], None] = print,
    start_timeout: float = 30.0,
    on_started: Callable[[str], None] | None = None,
    on_event: Callable[[phase_run_event_pb2.PhaseRunEvent], None] | None = None,
    token: str | None = None,
) -> RunResult:
    """Start ``phase`` through the edge at ``edge_addr`` and follow it to a terminal state.

    Each event goes to ``on_event`` (``make run``: the CLI's progress display,
    :class:`agentforge.cli.follow.PhaseFollower`), or as a line to ``out`` without one.
    ``token``: the bearer token to send (default: a trainer token minted here).
    """
    md = _credentials(token)
    params = struct_pb2.Struct()
    params.update(parameters or {})
    with grpc.insecure_channel(edge_addr) as channel:
        stub = forge_service_pb2_grpc.ForgeServiceStub(channel)
        request = request_response_pb2.StartPhaseRunRequest(
            phase=phase, parameters=params, request_id=uuid.uuid4().hex
        )
        # Our own trace context, so the whole run is one trace we can name at the end.
        trace_id = secrets.token_hex(16)
        traced = (*md, ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"))
        try:
            run = stub.StartPhaseRun(request, timeout=start_timeout, wait_for_ready=True, metadata=traced)
        except grpc.RpcError as exc:
            raise _rpc_error(f"StartPhaseRun({phase})", exc) from None
        out(f"started {run.name} ({phase}, {_state(run.state)})")
        if on_started is not None:
            on_started(run.name)
        cursor = ""
        last = run
        for attempt in range(_RECONNECTS + 1):
            try:
                stream = stub.WatchPhaseRun(request_response_pb2.WatchPhaseRunRequest(name=run.name, cursor=cursor),
                                           metadata=md)
                for event in stream:
                    if event.WhichOneof("kind") == "heartbeat":
                        continue  # a keepalive of the quiet stream, not an event
                    cursor = event.cursor or cursor
                    if event.HasField("phase_run"):
                        last = event.phase_run
                    if on_event is not None:
                        on_event(event)
                    else:
                        out(format_event(event))
                break
            except grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                if code == grpc.StatusCode.UNAVAILABLE and attempt < _RECONNECTS:
                    out(f"watch stream dropped ({exc.details()}); resuming from cursor {cursor or '(start)'}")
                    continue
                raise _rpc_error(f"WatchPhaseRun({run.name})", exc) from None
        if last.state not in _TERMINAL:
            try:
                last = stub.GetPhaseRun(request_response_pb2.GetPhaseRunRequest(name=run.name), timeout=10,
                                        metadata=md)
            except grpc.RpcError as exc:
                raise _rpc_error(f"GetPhaseRun({run.name})", exc) from None
        return RunResult(run.name, last.state, last, trace_id)


def cancel_run(edge_addr: str, name: str, reason: str, token: str | None = None) -> None:
    """Best-effort CancelPhaseRun (Ctrl-C during ``make run``)."""
    with grpc.insecure_channel(edge_addr) as channel:
        stub = forge_service_pb2_grpc.ForgeServiceStub(channel)
        try:
            stub.CancelPhaseRun(request_response_pb2.CancelPhaseRunRequest(name=name, reason=reason), timeout=5,
                                metadata=_credentials(token))
        except grpc.RpcError:
            pass
