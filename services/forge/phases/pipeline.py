"""The pipeline: cognate → evomerge → bitnet in one run, each consuming the previous one's output.

Its saga is the three phases' steps in order (named ``<phase>.<step>``); EvoMerge's parents
are this run's Cognate versions and BitNet's source is this run's EvoMerge child (their
typed outputs, not aliases another run might move). A failure or cancel anywhere
compensates every completed step of the chain in reverse order: no version stays
registered and every alias is back where it was.

Parameters: one object per phase (``{"cognate": {...}, "evomerge": {...}, "bitnet": {...}}``,
checked against that phase's specs) and ``max_steps`` as a shortcut for Cognate's. By
default the Cognate candidates share one seed and differ in learning rate (×0.5, ×1, ×2):
merging needs a shared initialisation (models trained from different random inits have
permuted hidden units and average into noise), the setting of Wortsman et al.'s model
soups; pass ``{"cognate": {"seed_stride": 1}}`` for different seeds.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from services.forge.phases.base import P, ParamSpec, Peers, Phase, Step, _plain, resolve_parameters
from services.forge.phases.bitnet import BitNet
from services.forge.phases.cognate import Cognate
from services.forge.phases.evomerge import EvoMerge
from services.shared.errors import InvalidArgument

__all__ = ["Pipeline"]

#: Cognate defaults that differ inside the pipeline (see the module docstring).
COGNATE_DEFAULTS = {"seed_stride": 0, "learning_rate_spread": 2.0}


class Pipeline(Phase):
    id = "pipeline"
    display_name = "Pipeline: Cognate → EvoMerge → BitNet"
    description = ("Run cognate, evomerge and bitnet as one saga, each phase consuming the previous one's "
                   "output; cancel compensates the whole chain.")
    parameters = (
        ParamSpec("cognate", P.PARAMETER_TYPE_OBJECT, "Parameters of the Cognate phase.", {}),
        ParamSpec("evomerge", P.PARAMETER_TYPE_OBJECT, "Parameters of the EvoMerge phase (not `parents`).", {}),
        ParamSpec("bitnet", P.PARAMETER_TYPE_OBJECT, "Parameters of the BitNet phase (not `source`).", {}),
        ParamSpec("max_steps", P.PARAMETER_TYPE_INTEGER, "Cognate's max_steps (0 = Cognate's default).", 0, 0,
                  1_000_000),
    )
    outputs = (("model_version", "The compressed model at the end of the chain.", "agentforge.dev/ModelVersion",
                "winner"),)
    phases = (Cognate(), EvoMerge(), BitNet())

    def steps(self) -> tuple[Step, ...]:
        out = []
        for phase in self.phases:
            for s in phase.steps():
                out.append(Step(f"{phase.id}.{s.name}", s.weight / len(self.phases), s.run, s.undo, phase.id))
        return tuple(out)

    def resolve(self, given: struct_pb2.Struct | None) -> dict[str, dict[str, Any]]:
        top = resolve_parameters(self, given)
        resolved: dict[str, dict[str, Any]] = {}
        violations: list[tuple[str, str]] = []
        for phase in self.phases:
            values = {k: _plain(v) for k, v in top[phase.id].items()}
            if phase.id == "cognate":
                values = {**COGNATE_DEFAULTS, **values}
                if top["max_steps"]:
                    values.setdefault("max_steps", top["max_steps"])
            defaults = {spec.name: spec.default for spec in phase.parameters}
            for fixed in ("parents", "source"):
                if fixed in defaults and fixed in values and values[fixed] != defaults[fixed]:
                    violations.append((f"parameters.{phase.id}.{fixed}",
                                       "set by the pipeline (the previous phase's output)"))
            try:
                resolved[phase.id] = resolve_parameters(phase, values, prefix=f"parameters.{phase.id}")
            except InvalidArgument as exc:
                violations += list(exc.violations)
        if not violations and resolved["cognate"]["widths"] and len(set(resolved["cognate"]["widths"])) > 1:
            violations.append(("parameters.cognate.widths", "the pipeline merges the candidates: one width only"))
        if violations:
            raise InvalidArgument("invalid pipeline parameters", violations=violations)
        return resolved

    async def precheck(self, params: dict[str, dict[str, Any]], peers: Peers) -> None:
        return None
