"""Phase runs as sagas over the training and model services.

A Cognate run is four steps, each with a compensation:

====================== =========================================== =============================
step                   does                                        compensation
====================== =========================================== =============================
create_training_job    TrainingService.CreateTrainingJob            CancelTrainingJob
                       (request_id derived from the run: a retry
                       or a resumed run never makes a second job)
train                  WatchTrainingJob to its end, relaying        —
                       progress; resumes from its cursor
register_model_version wait until the model registry registered     DeleteModelVersion
                       the job's final checkpoint (it consumes the
                       TrainingJobCompleted bus event)
set_alias              SetModelAlias(<alias> → the new version)     alias back to its old target
====================== =========================================== =============================

A failed step compensates the completed ones in reverse order (state COMPENSATING) and
ends FAILED; a cancel does the same and ends CANCELLED. Every change is saved with an
event (``WatchPhaseRun``) and state changes go on the bus (``events.forge``). Runs that
were in flight when the service stopped are resumed at start-up: completed steps are
skipped and the others are idempotent.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2

from agentforge.events.v1 import event_pb2
from agentforge.forge.v1 import phase_run_event_pb2 as ev
from agentforge.forge.v1 import phase_run_pb2 as pr
from agentforge.model.v1 import model_service_pb2_grpc, model_version_pb2 as mv, request_response_pb2 as mreq
from agentforge.training.v1 import request_response_pb2 as treq
from agentforge.training.v1 import training_job_pb2 as tj
from agentforge.training.v1 import training_service_pb2_grpc
from services.forge.catalog import CATALOG, cognate_training_job, resolve_parameters
from services.forge.config import ForgeConfig
from services.forge.store import RunStore
from services.shared.bus import EventBus
from services.shared.events import publish_event
from services.shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.shared.tasks import cancel_and_wait

__all__ = ["RunManager", "StepFailed", "parse_cursor"]

log = logging.getLogger(__name__)

S = pr.PhaseRunState
TERMINAL = {S.PHASE_RUN_STATE_SUCCEEDED, S.PHASE_RUN_STATE_FAILED, S.PHASE_RUN_STATE_CANCELLED}
JOB_TERMINAL = {tj.TRAINING_JOB_STATE_SUCCEEDED, tj.TRAINING_JOB_STATE_FAILED, tj.TRAINING_JOB_STATE_CANCELLED}
# Share of the run's progress each Cognate step stands for.
WEIGHTS = {"create_training_job": 0.02, "train": 0.9, "register_model_version": 0.05, "set_alias": 0.03}
BUS_STREAM = "events.forge"


class StepFailed(Exception):
    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status


def parse_cursor(cursor: str, epoch: str) -> int:
    """The sequence to resume after; 0 (replay all) for a cursor of an older epoch."""
    if not cursor:
        return 0
    cur_epoch, dot, seq = cursor.rpartition(".")
    if not dot or not seq.isdigit() or not cur_epoch:
        raise InvalidArgument("malformed cursor", violations=[("cursor", "not a cursor returned by WatchPhaseRun")])
    return int(seq) if cur_epoch == epoch else 0


def _now() -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.GetCurrentTime()
    return ts


def _rpc_status(exc: BaseException) -> status_pb2.Status:
    if isinstance(exc, grpc.aio.AioRpcError):
        return status_pb2.Status(code=exc.code().value[0], message=f"{exc.code().name}: {exc.details()}")
    if isinstance(exc, StepFailed):
        return exc.status
    return status_pb2.Status(code=code_pb2.INTERNAL, message=f"{type(exc).__name__}: {exc}")


class RunManager:
    """Starts, drives, cancels and replays phase runs."""

    def __init__(
        self,
        store: RunStore,
        training: training_service_pb2_grpc.TrainingServiceStub,
        model: model_service_pb2_grpc.ModelServiceStub,
        bus: EventBus | None,
        config: ForgeConfig,
    ) -> None:
        self._store = store
        self._training = training
        self._model = model
        self._bus = bus
        self._config = config
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Condition()

    # -- public API ---------------------------------------------------------------
    async def start(
        self,
        *,
        phase: str,
        parameters: struct_pb2.Struct,
        run_id: str,
        request_id: str,
        labels: dict[str, str],
        input_model_version: str,
    ) -> pr.PhaseRun:
        phase_id = phase.split("/", 1)[1]
        if request_id:
            existing = await asyncio.to_thread(self._store.by_request_id, request_id)
            if existing is not None:
                return existing
        definition = CATALOG.get(phase_id)
        if definition is None:
            raise NotFound(f"phase {phase} does not exist", reason="PHASE_NOT_FOUND")
        if not definition.available:
            raise FailedPrecondition(
                f"phase {phase} is in the catalog but not implemented in this deployment",
                reason="PHASE_UNAVAILABLE",
            )
        params = resolve_parameters(definition, parameters)
        run_id = run_id or uuid.uuid4().hex[:12]
        now = _now()
        run = pr.PhaseRun(
            name=f"phaseRuns/{run_id}", phase=phase, state=S.PHASE_RUN_STATE_PENDING,
            input_model_version=input_model_version, labels=labels, request_id=request_id,
            create_time=now, update_time=now,
        )
        run.parameters.update(params)
        for name in definition.steps:
            run.steps.add(name=name, state=pr.SAGA_STEP_STATE_PENDING,
                          compensation_state=pr.COMPENSATION_STATE_NOT_REQUIRED)
        run.progress.steps_total = len(definition.steps)
        if not await asyncio.to_thread(self._store.insert, run):
            if request_id:
                again = await asyncio.to_thread(self._store.by_request_id, request_id)
                if again is not None:
                    return again
            raise AlreadyExists(f"phase run {run.name} already exists")
        await self._record(run, ev.PhaseRunEvent(state_changed=ev.PhaseRunStateChanged(
            from_state=S.PHASE_RUN_STATE_UNSPECIFIED, to_state=S.PHASE_RUN_STATE_PENDING, reason="started")))
        self._launch(run)
        return run

    async def get(self, name: str) -> pr.PhaseRun:
        run = await asyncio.to_thread(self._store.get, name.split("/", 1)[1])
        if run is None:
            raise NotFound(f"{name} does not exist", reason="PHASE_RUN_NOT_FOUND")
        return run

    async def cancel(self, name: str, reason: str) -> pr.PhaseRun:
        """Stop driving the run, then compensate its completed steps; ends CANCELLED.

        The saga task is cancelled first and left to end (a cancelled task cannot be
        trusted to await anything else); compensation runs as a task of its own, so it
        completes even if the caller of CancelPhaseRun goes away.
        """
        run = await self.get(name)
        if run.state in TERMINAL:
            raise FailedPrecondition(f"{name} already ended ({S.Name(run.state)})")
        run_id = name.split("/", 1)[1]
        reason = reason or "cancelled by request"
        data = await asyncio.to_thread(self._store.saga_data, run_id)
        data["cancel_reason"] = reason
        await asyncio.to_thread(self._store.set_saga_data, run_id, data)
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=30)
        run = await self.get(name)
        if run.state not in TERMINAL:
            undo = asyncio.create_task(
                self._compensate(run, S.PHASE_RUN_STATE_CANCELLED, reason, None),
                name=f"compensate {name}", context=contextvars.Context())
            self._tasks[run_id] = undo
            undo.add_done_callback(lambda t: self._forget(run_id, t))
            await asyncio.wait({undo}, timeout=60)
        return await self.get(name)

    async def watch(self, name: str, cursor: str) -> AsyncIterator[ev.PhaseRunEvent]:
        run = await self.get(name)
        run_id = name.split("/", 1)[1]
        seq = parse_cursor(cursor, self._store.epoch)
        while True:
            async with self._changed:
                events = await asyncio.to_thread(self._store.events_after, run_id, seq)
                if not events:
                    run = await self.get(name)
                    if run.state in TERMINAL:
                        return
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
                    continue
            for event in events:
                seq = event.sequence
                yield event

    async def recover(self) -> None:
        """Resume the runs that were in flight when the service last stopped."""
        for run in await asyncio.to_thread(self._store.unfinished):
            log.info("resuming phase run", extra={"phase_run": run.name})
            self._launch(run)

    async def aclose(self) -> None:
        """Stop driving runs (service shutdown); they resume at the next start."""
        tasks = list(self._tasks.values())
        await cancel_and_wait(tasks)

    # -- saga ---------------------------------------------------------------------
    def _launch(self, run: pr.PhaseRun) -> None:
        run_id = run.name.split("/", 1)[1]
        # A fresh context: the saga outlives the RPC that started it, so it must not
        # inherit that call's deadline (propagated to outgoing calls) or request id.
        task = asyncio.create_task(self._drive(run), name=f"saga {run.name}", context=contextvars.Context())
        self._tasks[run_id] = task
        task.add_done_callback(lambda t: self._forget(run_id, t))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(run_id) is task:
            del self._tasks[run_id]

    async def _record(self, run: pr.PhaseRun, event: ev.PhaseRunEvent | None = None) -> None:
        run.update_time.CopyFrom(_now())
        if event is not None:
            event.time.CopyFrom(run.update_time)
        await asyncio.to_thread(self._store.save, run, event)
        async with self._changed:
            self._changed.notify_all()

    async def _set_state(self, run: pr.PhaseRun, state: int, reason: str,
                         error: status_pb2.Status | None = None) -> None:
        before = run.state
        if before == state:
            return
        run.state = state
        if state == S.PHASE_RUN_STATE_RUNNING and not run.HasField("start_time"):
            run.start_time.CopyFrom(_now())
        if state in TERMINAL:
            run.end_time.CopyFrom(_now())
        if error is not None:
            run.error.CopyFrom(error)
        change = ev.PhaseRunStateChanged(from_state=before, to_state=state, reason=reason, error=error)
        await self._record(run, ev.PhaseRunEvent(state_changed=change))
        if self._bus is not None:
            payload = event_pb2.PhaseRunStateChanged(phase_run=run, previous_state=before)
            try:
                await publish_event(self._bus, BUS_STREAM, payload, source="forge", subject=run.name)
            except Exception:  # the run's own history is durable; the bus is best effort here
                log.exception("could not publish phase run state change", extra={"phase_run": run.name})

    async def _log(self, run: pr.PhaseRun, message: str, step: str = "",
                   severity: int = ev.LOG_SEVERITY_INFO) -> None:
        await self._record(run, ev.PhaseRunEvent(log=ev.PhaseRunLog(severity=severity, message=message, step=step)))

    async def _drive(self, run: pr.PhaseRun) -> None:
        run_id = run.name.split("/", 1)[1]
        steps: dict[str, Callable[[pr.PhaseRun, dict[str, Any]], Awaitable[str]]] = {
            "create_training_job": self._create_training_job,
            "train": self._train,
            "register_model_version": self._register,
            "set_alias": self._set_alias,
        }
        try:
            data = await asyncio.to_thread(self._store.saga_data, run_id)
            if "cancel_reason" in data:  # cancelled before the service stopped
                await self._compensate(run, S.PHASE_RUN_STATE_CANCELLED, data["cancel_reason"], None)
                return
            if run.state == S.PHASE_RUN_STATE_COMPENSATING:
                await self._compensate(run, S.PHASE_RUN_STATE_FAILED, "compensation resumed", run.error)
                return
            await self._set_state(run, S.PHASE_RUN_STATE_RUNNING, "saga started")
            # Struct numbers are doubles: resolve again to get ints back.
            params = resolve_parameters(CATALOG[run.phase.split("/", 1)[1]], run.parameters)
            for index, step in enumerate(run.steps):
                if step.state == pr.SAGA_STEP_STATE_SUCCEEDED:
                    continue
                await self._run_step(run, index, steps[step.name], params)
            await self._finish(run)
        except asyncio.CancelledError:
            raise  # cancel() compensates; at shutdown recover() resumes the run later
        except StepFailed as exc:
            await self._compensate(run, S.PHASE_RUN_STATE_FAILED, exc.status.message, exc.status)
        except Exception as exc:  # a bug or an unexpected peer answer: fail the run, keep the service
            log.exception("phase run failed", extra={"phase_run": run.name})
            await self._compensate(run, S.PHASE_RUN_STATE_FAILED, "internal error", _rpc_status(exc))

    async def _run_step(self, run: pr.PhaseRun, index: int, fn, params: dict[str, Any]) -> None:
        step = run.steps[index]
        step.state = pr.SAGA_STEP_STATE_RUNNING
        step.attempts += 1
        step.start_time.CopyFrom(_now())
        run.progress.current_step = step.name
        run.progress.message = f"{step.name}…"
        await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
        try:
            step.resource = await fn(run, params)
        except (grpc.aio.AioRpcError, StepFailed) as exc:
            step.state = pr.SAGA_STEP_STATE_FAILED
            step.error.CopyFrom(_rpc_status(exc))
            step.end_time.CopyFrom(_now())
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
            raise StepFailed(step.error) from exc
        step.state = pr.SAGA_STEP_STATE_SUCCEEDED
        step.end_time.CopyFrom(_now())
        if step.name in ("create_training_job", "register_model_version", "set_alias"):
            step.compensation_state = pr.COMPENSATION_STATE_PENDING
        run.progress.steps_done = index + 1
        run.progress.fraction_done = sum(WEIGHTS.get(s.name, 0) for s in run.steps[: index + 1])
        await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))

    async def _finish(self, run: pr.PhaseRun) -> None:
        for step in run.steps:  # nothing to undo once the run succeeded
            step.compensation_state = pr.COMPENSATION_STATE_NOT_REQUIRED
        run.progress.fraction_done = 1.0
        run.progress.current_step = ""
        run.progress.message = f"done: {run.outputs.model_version}"
        await self._set_state(run, S.PHASE_RUN_STATE_SUCCEEDED, "all steps succeeded")

    async def _compensate(self, run: pr.PhaseRun, final: int, reason: str,
                          error: status_pb2.Status | None) -> None:
        await self._set_state(run, S.PHASE_RUN_STATE_COMPENSATING, reason, error)
        undo = {
            "create_training_job": self._undo_training_job,
            "register_model_version": self._undo_version,
            "set_alias": self._undo_alias,
        }
        for index in reversed(range(len(run.steps))):
            step = run.steps[index]
            if step.name not in undo or not step.resource:
                continue
            if step.compensation_state not in (pr.COMPENSATION_STATE_PENDING, pr.COMPENSATION_STATE_RUNNING):
                continue
            step.compensation_state = pr.COMPENSATION_STATE_RUNNING
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
            try:
                await asyncio.shield(undo[step.name](run, step))
                step.compensation_state = pr.COMPENSATION_STATE_SUCCEEDED
            except Exception as exc:
                step.compensation_state = pr.COMPENSATION_STATE_FAILED
                step.compensation_error.CopyFrom(_rpc_status(exc))
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
        await self._set_state(run, final, reason, error)

    # -- Cognate steps ------------------------------------------------------------
    async def _create_training_job(self, run: pr.PhaseRun, params: dict[str, Any]) -> str:
        job = cognate_training_job(params, phase_run=run.name)
        created = await self._training.CreateTrainingJob(
            treq.CreateTrainingJobRequest(training_job=job, request_id=f"{run.name.split('/')[1]}-train"),
            timeout=30,
        )
        run.outputs.training_job = created.name
        await self._log(run, f"created {created.name}", "create_training_job")
        return created.name

    async def _train(self, run: pr.PhaseRun, params: dict[str, Any]) -> str:
        job_name = run.outputs.training_job
        cursor = ""
        last_emit = 0.0
        retries = 0
        while True:
            try:
                async for event in self._training.WatchTrainingJob(
                        treq.WatchTrainingJobRequest(name=job_name, cursor=cursor), timeout=None):
                    cursor = event.cursor
                    retries = 0
                    kind = event.WhichOneof("kind")
                    if kind == "progress" and time.monotonic() - last_emit >= self._config.progress_every_s:
                        p = event.progress
                        last_emit = time.monotonic()
                        run.progress.fraction_done = WEIGHTS["create_training_job"] + WEIGHTS["train"] * p.fraction_done
                        run.progress.message = (
                            f"step {p.step}/{p.total_steps} loss {p.train_loss:.4f} acc {p.train_accuracy:.3f}"
                            + (f" val_loss {p.eval.loss:.4f}" if p.HasField("eval") else "")
                        )
                        await self._record(run, ev.PhaseRunEvent(progress=run.progress))
                    elif kind == "state_changed" and event.state_changed.to_state in JOB_TERMINAL:
                        change = event.state_changed
                        if change.to_state != tj.TRAINING_JOB_STATE_SUCCEEDED:
                            status = change.error if change.HasField("error") else status_pb2.Status(
                                code=code_pb2.ABORTED, message=f"training job ended {tj.TrainingJobState.Name(change.to_state)}")
                            raise StepFailed(status)
                break
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or retries >= 20:
                    raise
                retries += 1
                await asyncio.sleep(min(5.0, 0.2 * 2**retries))
        job = await self._training.GetTrainingJob(treq.GetTrainingJobRequest(name=job_name), timeout=10)
        if job.state != tj.TRAINING_JOB_STATE_SUCCEEDED:
            raise StepFailed(status_pb2.Status(code=code_pb2.ABORTED,
                                               message=f"training job is {tj.TrainingJobState.Name(job.state)}"))
        run.outputs.metrics.clear()
        run.outputs.metrics.update(dict(job.final_metrics))
        if job.latest_checkpoint:
            run.outputs.artifacts["checkpoint"] = job.latest_checkpoint
        return job_name

    async def _register(self, run: pr.PhaseRun, params: dict[str, Any]) -> str:
        """The registry registers the final checkpoint from the bus hand-off; wait for it."""
        job_name = run.outputs.training_job
        parent = f"models/{params['model']}"
        deadline = time.monotonic() + self._config.register_timeout_s
        while time.monotonic() < deadline:
            try:
                page = await self._model.ListModelVersions(
                    mreq.ListModelVersionsRequest(parent=parent, page_size=100), timeout=10)
                for version in page.model_versions:
                    if version.lineage.training_job != job_name:
                        continue
                    if version.state == mv.MODEL_VERSION_STATE_FAILED:
                        raise StepFailed(status_pb2.Status(
                            code=code_pb2.ABORTED, message=f"the registry failed to register {version.name}"))
                    if version.state == mv.MODEL_VERSION_STATE_READY:
                        run.outputs.model_version = version.name
                        await self._log(run, f"registered {version.name}", "register_model_version")
                        return version.name
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
            await asyncio.sleep(0.5)
        raise StepFailed(status_pb2.Status(
            code=code_pb2.DEADLINE_EXCEEDED,
            message=f"the model registry did not register {job_name} within {self._config.register_timeout_s:g}s"))

    async def _set_alias(self, run: pr.PhaseRun, params: dict[str, Any]) -> str:
        model_name = f"models/{params['model']}"
        alias = params["alias"]
        model = await self._model.GetModel(mreq.GetModelRequest(name=model_name), timeout=10)
        run_id = run.name.split("/", 1)[1]
        data = await asyncio.to_thread(self._store.saga_data, run_id)
        data.setdefault("previous_alias_target", model.aliases.get(alias, ""))
        await asyncio.to_thread(self._store.set_saga_data, run_id, data)
        version_id = run.outputs.model_version.rsplit("/", 1)[1]
        await self._model.SetModelAlias(
            mreq.SetModelAliasRequest(name=model_name, alias=alias, version=version_id), timeout=10)
        await self._log(run, f"{alias} → {run.outputs.model_version}", "set_alias")
        return f"{model_name}@{alias}"

    # -- compensations ------------------------------------------------------------
    async def _undo_training_job(self, run: pr.PhaseRun, step: pr.SagaStep) -> None:
        try:
            await self._training.CancelTrainingJob(treq.CancelTrainingJobRequest(name=step.resource), timeout=30)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                raise  # already finished or gone: nothing to undo

    async def _undo_version(self, run: pr.PhaseRun, step: pr.SagaStep) -> None:
        try:
            await self._model.DeleteModelVersion(mreq.DeleteModelVersionRequest(name=step.resource), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise

    async def _undo_alias(self, run: pr.PhaseRun, step: pr.SagaStep) -> None:
        model_name, _, alias = step.resource.partition("@")
        data = await asyncio.to_thread(self._store.saga_data, run.name.split("/", 1)[1])
        previous = data.get("previous_alias_target", "")
        if previous:
            await self._model.SetModelAlias(
                mreq.SetModelAliasRequest(name=model_name, alias=alias, version=previous), timeout=10)
        else:
            await self._model.DeleteModelAlias(
                mreq.DeleteModelAliasRequest(name=model_name, alias=alias), timeout=10)
