"""The phase plug-in interface: what a phase declares and what its steps get to work with.

A phase is one module under ``services/forge/phases/`` with a :class:`Phase` subclass:

- ``parameters``: :class:`ParamSpec` s with types, defaults and bounds (checked by
  :func:`resolve_parameters`; cross-field rules in :meth:`Phase.check`);
- ``prerequisites``: phase ids whose outputs it consumes; :meth:`Phase.precheck` runs at
  ``StartPhaseRun`` and fails the call (FAILED_PRECONDITION / INVALID_ARGUMENT) when the
  inputs are not there, so no run is created for them;
- ``steps()``: the saga, :class:`Step` s in order, each an async forward action returning
  the resource it made or changed, with an optional compensation that undoes it;
- a typed output (``ctx.set_output``) the next phase reads (``ctx.output(phase_id)``).

The saga driver (``services/forge/saga.py``) persists every step, resumes runs after a
restart (completed steps are skipped, so forward actions must be idempotent: derive
request ids from the run) and compensates completed steps in reverse order on failure or
cancel. Adding a phase: one module here and one line in ``services/forge/catalog.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from google.protobuf import struct_pb2

from agentforge.forge.v1 import phase_pb2
from services.shared.errors import InvalidArgument

if TYPE_CHECKING:
    from agentforge.forge.v1 import phase_run_pb2 as pr
    from agentforge.model.v1 import model_service_pb2_grpc
    from agentforge.training.v1 import training_service_pb2_grpc

__all__ = ["P", "ParamSpec", "Phase", "PhaseContext", "Peers", "Step", "StepFailedError", "resolve_parameters"]

P = phase_pb2.ParameterType


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: ``type`` is a ``ParameterType``; bounds apply to numbers."""

    name: str
    type: int
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peers:
    """What steps reach: the training and model services (stubs on shared channels), the
    forge's scratch directory, and the service config."""

    training: training_service_pb2_grpc.TrainingServiceStub
    model: model_service_pb2_grpc.ModelServiceStub
    work_dir: Path
    config: Any


class StepFailedError(Exception):
    """A step cannot succeed (not transient): the run compensates and ends FAILED.

    ``code`` is a ``google.rpc.Code`` value.
    """

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class PhaseContext:
    """Everything a step sees. ``data`` is the run's durable scratch (JSON); call
    :meth:`save` after changing it. ``stop`` is set when the run is cancelled, for work
    running in a thread to notice."""

    run: pr.PhaseRun
    phase_id: str
    params: dict[str, Any]
    peers: Peers
    data: dict[str, Any]
    in_pipeline: bool
    save: Callable[[], Awaitable[None]]
    log: Callable[[str], Awaitable[None]]
    report: Callable[[float, str], Awaitable[None]]
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def run_id(self) -> str:
        return self.run.name.split("/", 1)[1]

    def request_id(self, suffix: str) -> str:
        """A deterministic idempotency key for a call this step makes (retries and resumed
        runs send the same key, so nothing is made twice)."""
        return f"{self.run_id}-{self.phase_id}-{suffix}"[:64]

    async def progress(self, fraction: float, message: str) -> None:
        """Progress within the current step, ``fraction`` in [0, 1]."""
        await self.report(min(max(fraction, 0.0), 1.0), message)

    def output(self, phase_id: str) -> dict[str, Any] | None:
        """The typed output an earlier phase of this run stored (pipelines)."""
        return self.data.get("outputs", {}).get(phase_id)

    async def set_output(self, value: dict[str, Any]) -> None:
        self.data.setdefault("outputs", {})[self.phase_id] = value
        await self.save()

    def metric_key(self, name: str) -> str:
        return f"{self.phase_id}.{name}" if self.in_pipeline else name

    def artifact_key(self, name: str) -> str:
        return f"{self.phase_id}.{name}" if self.in_pipeline else name

    def scratch(self) -> Path:
        """A directory for this run's files (removed when the run ends)."""
        path = self.peers.work_dir / "runs" / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path


StepFn = Callable[[PhaseContext], Awaitable[str]]
UndoFn = Callable[[PhaseContext, str], Awaitable[None]]


@dataclass(frozen=True)
class Step:
    """A saga step: ``run`` returns the resource name it made or changed (stored on the
    step); ``undo`` receives it back when the run compensates. ``weight`` is the step's
    share of the run's progress."""

    name: str
    weight: float
    run: StepFn
    undo: UndoFn | None = None
    phase: str = ""  # set by the pipeline for steps of its sub-phases


class Phase:
    """Base class of the phase plug-ins; see the module docstring."""

    id: ClassVar[str]
    display_name: ClassVar[str]
    description: ClassVar[str]
    prerequisites: ClassVar[tuple[str, ...]] = ()
    parameters: ClassVar[tuple[ParamSpec, ...]] = ()
    #: (name, description, resource type, alias moved) for ``Phase.outputs`` in the proto.
    outputs: ClassVar[tuple[tuple[str, str, str, str], ...]] = ()
    available: ClassVar[bool] = True

    def steps(self) -> tuple[Step, ...]:
        return ()

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Cross-field violations ``(parameters.<name>, message)``; none by default."""
        return []

    def resolve(self, given: struct_pb2.Struct | None) -> dict[str, dict[str, Any]]:
        """Parameters per phase id of the steps (``{self.id: params}`` for one phase)."""
        return {self.id: resolve_parameters(self, given)}

    async def precheck(self, params: dict[str, dict[str, Any]], peers: Peers) -> None:
        """Fail the start when the inputs are missing; nothing by default."""


def _type_ok(s: ParamSpec, v: Any) -> tuple[bool, Any, str]:
    if s.type == P.PARAMETER_TYPE_INTEGER:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
            return False, v, "must be an integer"
        return True, int(v), ""
    if s.type == P.PARAMETER_TYPE_NUMBER:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False, v, "must be a number"
        return True, float(v), ""
    if s.type == P.PARAMETER_TYPE_STRING:
        if not isinstance(v, str):
            return False, v, "must be a string"
        if s.allowed and v not in s.allowed:
            return False, v, f"must be one of {', '.join(s.allowed)}"
        return True, v, ""
    if s.type == P.PARAMETER_TYPE_BOOLEAN:
        return (True, v, "") if isinstance(v, bool) else (False, v, "must be true or false")
    if s.type == P.PARAMETER_TYPE_LIST:
        return (True, list(v), "") if isinstance(v, (list, tuple)) else (False, v, "must be a list")
    if s.type == P.PARAMETER_TYPE_OBJECT:
        return (True, dict(v), "") if isinstance(v, dict) else (False, v, "must be an object")
    return False, v, "unsupported parameter type"


def _plain(v: Any) -> Any:
    """Struct values to plain Python (ListValue/Struct to list/dict)."""
    if isinstance(v, struct_pb2.Struct):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, struct_pb2.ListValue):
        return [_plain(x) for x in v]
    return v


def resolve_parameters(phase: Phase, given: struct_pb2.Struct | dict[str, Any] | None,
                       prefix: str = "parameters") -> dict[str, Any]:
    """Defaults filled in, types and bounds checked, then :meth:`Phase.check`; raises
    :class:`InvalidArgument` naming every bad key (``parameters.<name>``)."""
    if given is None:
        values: dict[str, Any] = {}
    elif isinstance(given, dict):
        values = dict(given)
    else:
        values = {k: _plain(v) for k, v in given.items()}
    known = {s.name: s for s in phase.parameters}
    violations = [(f"{prefix}.{k}", f"unknown parameter for phase {phase.id}") for k in values if k not in known]
    out: dict[str, Any] = {}
    for s in phase.parameters:
        path = f"{prefix}.{s.name}"
        ok, v, why = _type_ok(s, values.get(s.name, s.default))
        if not ok:
            violations.append((path, why))
            continue
        if s.minimum is not None and isinstance(v, (int, float)) and v < s.minimum:
            violations.append((path, f"must be >= {s.minimum:g}"))
        elif s.maximum is not None and isinstance(v, (int, float)) and v > s.maximum:
            violations.append((path, f"must be <= {s.maximum:g}"))
        out[s.name] = v
    if not violations:
        violations += [(f"{prefix}.{f.removeprefix('parameters.')}", m) for f, m in phase.check(out)]
    if violations:
        raise InvalidArgument("invalid phase parameters", violations=violations)
    return out
