"""Phase plug-ins (one module each) behind :class:`services.forge.phases.base.Phase`."""

from services.forge.phases.base import ParamSpec, Peers, Phase, PhaseContext, Step, StepFailedError

__all__ = ["ParamSpec", "Peers", "Phase", "PhaseContext", "Step", "StepFailedError"]
