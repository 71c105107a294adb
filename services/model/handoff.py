"""The training → registry hand-off: a consumer group on the training event stream.

Every ``Event.training_job_completed`` becomes one READY model version (see
:func:`services.model.domain.register_handoff`):

* model: ``training_job.labels["model"]``, else the phase id (``phases/cognate`` →
  ``cognate``), else ``ModelConfig.default_model``; created when missing;
* artifact: the ``state_dict`` of the checkpoint file (``checkpoint.uri``, ``file://``),
  stored as a STATE_DICT artifact after the file's sha256 was checked;
* metrics: ``final_metrics`` (else the checkpoint's), parameters: the job's spec, with
  the architecture keys TORCHSCRIPT export needs, and for a cognate model its tokenizer
  (``task.tokenizer``: ``byte`` or ``char``; for ``char`` also
  ``task.tokenizer.vocabulary``, the characters of ids 0..n-1 in order, read from the
  checkpoint: whoever feeds the model text needs them);
* lineage: training job, checkpoint, phase run, phase.

Idempotent per checkpoint name: a redelivered event finds the version it made. Other
event types on the stream are acknowledged and ignored. A failing hand-off is retried
by the bus and dead-lettered after ``max_deliveries``.

**A job of a phase run that is being undone registers nothing** (issue 11: a Cognate job
that had already SUCCEEDED was registered after the run's compensation had run, leaving
a half-registered version). With a forge to ask (``ModelConfig.forge_addr``), the
hand-off reads the job's phase run before registering and again after:
COMPENSATING, CANCELLED or FAILED → it registers nothing, and removes what this or an
earlier delivery registered. The second read closes the race: the run's compensation
first stores COMPENSATING, then lists and deletes the run's versions; a hand-off that
still read "running" after registering had finished registering before that, so the
compensation's listing sees (and deletes) its version. Forge unreachable → the
delivery fails and the bus retries it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import grpc
import grpc.aio

from agentforge.events.v1 import event_pb2
from agentforge.forge.v1 import forge_service_pb2_grpc, phase_run_pb2
from agentforge.forge.v1 import request_response_pb2 as forge_rr
from agentforge.training.v1 import training_job_pb2
from opentelemetry import trace

from services.model.domain import Handoff, ModelRegistry, register_handoff
from services.model.exports import ARCHITECTURE
from services.shared.bus import Envelope, EventBus
from services.shared.errors import NotFound, Unavailable

__all__ = ["HandoffConsumer", "checkpoint_vocabulary", "handoff_from_event"]

_log = logging.getLogger(__name__)
_EVENT_TYPE = event_pb2.Event.DESCRIPTOR.full_name
_PATTERNS = {
    "training_job": re.compile(r"^trainingJobs/[a-z0-9][a-z0-9-]{0,62}$"),
    "checkpoint": re.compile(r"^trainingJobs/[a-z0-9][a-z0-9-]{0,62}/checkpoints/[a-z0-9][a-z0-9-]{0,62}$"),
    "phase_run": re.compile(r"^phaseRuns/[a-z0-9][a-z0-9-]{0,62}$"),
    "phase": re.compile(r"^phases/[a-z][a-z0-9-]{0,62}$"),
}


def _valid(kind: str, value: str) -> str:
    return value if _PATTERNS[kind].match(value) else ""


def _parameters(job: training_job_pb2.TrainingJob, ckpt: training_job_pb2.Checkpoint) -> dict[str, str]:
    spec = job.spec
    params = {
        "architecture": ARCHITECTURE,
        "model.layers": str(spec.model.layers),
        "model.width": str(spec.model.width),
        "model.heads": str(spec.model.heads),
        "model.context_length": str(spec.model.context_length),
        "model.vocab_size": str(spec.model.vocab_size),
        "model.dropout": repr(spec.model.dropout),
        "task.kind": training_job_pb2.TaskKind.Name(spec.task.kind).removeprefix("TASK_KIND_").lower(),
        "batch_size": str(spec.batch_size),
        "max_steps": str(spec.max_steps),
        "seed": str(spec.seed),
        "checkpoint.step": str(ckpt.step),
    }
    if spec.task.kind == training_job_pb2.TASK_KIND_COGNATE:
        params["task.tokenizer"] = "char" if spec.task.dataset.tokenizer == training_job_pb2.TOKENIZER_CHAR else "byte"
    if spec.HasField("optimizer"):
        params["optimizer.learning_rate"] = repr(spec.optimizer.learning_rate)
    if spec.HasField("grokfast"):
        params["grokfast.kind"] = training_job_pb2.GrokfastKind.Name(spec.grokfast.kind).removeprefix(
            "GROKFAST_KIND_").lower()
    if ckpt.sha256:
        params["checkpoint.sha256"] = ckpt.sha256
    return params


def checkpoint_vocabulary(path: Path) -> str:
    """The character vocabulary a training checkpoint records (``tokenizer.vocabulary``);
    ValueError when it records none (the hand-off is retried, then dead-lettered)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    record = ckpt.get("tokenizer") if isinstance(ckpt, dict) else None
    vocabulary = record.get("vocabulary") if isinstance(record, dict) and record.get("kind") == "char" else None
    if not isinstance(vocabulary, str) or not vocabulary:
        raise ValueError(f"checkpoint {path} of a TOKENIZER_CHAR job records no character vocabulary")
    return vocabulary


def handoff_from_event(completed: event_pb2.TrainingJobCompleted, default_model: str) -> Handoff:
    """Map the event to a :class:`Handoff`; ValueError when it cannot be registered."""
    job, ckpt = completed.training_job, completed.checkpoint
    checkpoint = ckpt.name or job.latest_checkpoint
    if not checkpoint:
        raise ValueError(f"hand-off of {job.name!r} names no checkpoint")
    uri = urlparse(ckpt.uri)
    if uri.scheme != "file" or not uri.path:
        raise ValueError(f"checkpoint uri {ckpt.uri!r} is not a file:// URI")
    phase = _valid("phase", job.phase)
    model_id = job.labels.get("model") or (phase.removeprefix("phases/") if phase else "") or default_model
    return Handoff(
        model_id=model_id,
        display_name=job.display_name or model_id,
        training_job=_valid("training_job", job.name),
        checkpoint=checkpoint,
        checkpoint_path=Path(unquote(uri.path)),
        checkpoint_sha256=ckpt.sha256,
        phase=phase,
        phase_run=_valid("phase_run", job.phase_run),
        metrics=dict(job.final_metrics) or dict(ckpt.metrics),
        parameters=_parameters(job, ckpt),
    )


#: Phase run states in which the run is being (or has been) undone.
_WITHDRAWN = frozenset({phase_run_pb2.PHASE_RUN_STATE_COMPENSATING, phase_run_pb2.PHASE_RUN_STATE_CANCELLED,
                        phase_run_pb2.PHASE_RUN_STATE_FAILED})


class HandoffConsumer:
    """Runs the consumer group on the training stream inside the service process.

    ``forge``: a ForgeService stub, to skip (and undo) hand-offs of runs being undone;
    None: every hand-off registers.
    """

    def __init__(self, bus: EventBus, registry: ModelRegistry, *, stream: str, group: str,
                 default_model: str, forge: forge_service_pb2_grpc.ForgeServiceStub | None = None) -> None:
        self._bus = bus
        self._registry = registry
        self._stream = stream
        self._group = group
        self._default_model = default_model
        self._forge = forge

    async def _withdrawn(self, phase_run: str) -> str:
        """The state name of ``phase_run`` if it is being undone, else ''."""
        if not phase_run or self._forge is None:
            return ""
        try:
            run = await self._forge.GetPhaseRun(forge_rr.GetPhaseRunRequest(name=phase_run), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return ""  # a run the forge does not know (its store was reset): register
            raise Unavailable(f"cannot ask the forge about {phase_run}: {exc.code().name}",
                              reason="DEPENDENCY_UNAVAILABLE", metadata={"dependency": "forge"}) from exc
        return phase_run_pb2.PhaseRunState.Name(run.state) if run.state in _WITHDRAWN else ""

    async def _remove(self, h: Handoff, why: str, event_id: str) -> None:
        version = await self._registry.store.find_version_by_checkpoint(h.checkpoint)
        if version is None:
            _log.info("training hand-off skipped: %s", why, extra={"checkpoint": h.checkpoint, "event_id": event_id})
            return
        try:
            await self._registry.delete_version(version.model_id, version.version, force=False, etag="")
        except NotFound:
            return
        _log.info("training hand-off undone: %s", why,
                  extra={"model_version": version.name, "checkpoint": h.checkpoint, "event_id": event_id})

    async def handle(self, envelope: Envelope) -> None:
        if envelope.type != _EVENT_TYPE:
            return
        event = envelope.unpack(event_pb2.Event)
        if event.WhichOneof("payload") != "training_job_completed":
            return
        handoff = handoff_from_event(event.training_job_completed, self._default_model)
        state = await self._withdrawn(handoff.phase_run)
        if state:
            await self._remove(handoff, f"{handoff.phase_run} is {state}", envelope.id)
            return
        if handoff.parameters.get("task.tokenizer") == "char":
            vocabulary = await asyncio.to_thread(checkpoint_vocabulary, handoff.checkpoint_path)
            handoff = dataclasses.replace(handoff, parameters={**handoff.parameters,
                                                               "task.tokenizer.vocabulary": vocabulary})
        version, created = await register_handoff(self._registry, handoff)
        state = await self._withdrawn(handoff.phase_run)  # it may have started undoing meanwhile
        if state:
            await self._remove(handoff, f"{handoff.phase_run} became {state}", envelope.id)
            return
        # On the bus consumer's span (services.shared.bus): the trace shows what the hand-off made.
        trace.get_current_span().set_attributes({"agentforge.model_version": version.name,
                                                 "agentforge.model_version.created": created})
        _log.info("training hand-off %s", "registered" if created else "already registered",
                  extra={"model_version": version.name, "checkpoint": handoff.checkpoint,
                         "event_id": envelope.id})

    async def run(self, stop: asyncio.Event | None = None) -> None:
        await self._bus.consume(self._stream, self._group, None, self.handle, stop=stop)
