"""The Agent Forge phase catalog: the plug-ins this deployment runs and the seed's planned ones.

The original pipeline's phases, in order, then the ``pipeline`` that chains the implemented
ones. A phase is a :class:`services.forge.phases.base.Phase` (one module under
``services/forge/phases/``); adding one is that module and a line here. Phases the seed
named but this deployment does not implement are listed as unavailable (starting one is
FAILED_PRECONDITION ``PHASE_UNAVAILABLE``, never a pretend run); docs/architecture.md says
what each is planned to do.

Order note: the seed ran Quiet-STaR between EvoMerge and BitNet. Until Quiet-STaR exists,
BitNet compresses EvoMerge's output (its prerequisite is ``evomerge``).
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from agentforge.forge.v1 import phase_pb2
from agentforge.forge.v1 import phase_run_pb2 as pr
from services.forge.phases.base import ParamSpec, Phase, resolve_parameters as _resolve
from services.forge.phases.bitnet import BitNet
from services.forge.phases.cognate import Cognate, cognate_training_job
from services.forge.phases.evomerge import EvoMerge
from services.forge.phases.pipeline import Pipeline

__all__ = ["CATALOG", "ParamSpec", "Phase", "cognate_training_job", "phase_proto", "resolve_parameters"]


def _planned(pid: str, name: str, description: str, prerequisite: str) -> Phase:
    cls = type(f"Planned_{pid.replace('-', '_')}", (Phase,), {
        "id": pid, "display_name": name, "description": f"{description} (planned; not in this deployment)",
        "prerequisites": (prerequisite,), "available": False})
    return cls()


CATALOG: dict[str, Phase] = {
    p.id: p
    for p in (
        Cognate(),
        EvoMerge(),
        _planned("quietstar", "Quiet-STaR", "Teach the model to think before speaking.", "evomerge"),
        BitNet(),
        _planned("forge-training", "Forge training", "Main training loop with GrokFast.", "bitnet"),
        _planned("tool-persona", "Tool & persona baking", "Bake tool use and persona.", "forge-training"),
        _planned("adas", "ADAS", "Automated design of agentic systems.", "tool-persona"),
        _planned("final-compression", "Final compression", "SeedLM + VPTQ + hypercompression.", "adas"),
        Pipeline(),
    )
}


def resolve_parameters(p: Phase, given: struct_pb2.Struct | None) -> dict[str, Any]:
    """Defaults filled in, types and bounds checked; InvalidArgument names each bad key."""
    return _resolve(p, given)


def phase_proto(p: Phase, latest: pr.PhaseRun | str | None = None) -> phase_pb2.Phase:
    """The ``Phase`` message; ``latest`` is its newest run (or just that run's name)."""
    msg = phase_pb2.Phase(
        name=f"phases/{p.id}", display_name=p.display_name, description=p.description,
        prerequisites=[f"phases/{x}" for x in p.prerequisites], available=p.available,
    )
    if isinstance(latest, str):
        msg.latest_run = latest
    elif latest is not None:
        msg.latest_run = latest.name
        msg.latest_run_state = latest.state
        msg.latest_run_progress.CopyFrom(latest.progress)
    for s in p.parameters:
        spec = msg.parameters.add(name=s.name, type=s.type, description=s.description,
                                  allowed_values=list(s.allowed))
        if s.default is not None:
            spec.default_value.CopyFrom(_value(s.default))
        if s.minimum is not None:
            spec.minimum = s.minimum
        if s.maximum is not None:
            spec.maximum = s.maximum
    for name, desc, rtype, alias in p.outputs:
        msg.outputs.add(name=name, description=desc, resource_type=rtype, model_alias=alias)
    return msg


def _value(v: Any) -> struct_pb2.Value:
    s = struct_pb2.Struct()
    s.update({"v": v})
    return s.fields["v"]
