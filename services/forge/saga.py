"""Phase runs as sagas over the training and model services.

A run executes its phase's steps (:class:`services.forge.phases.base.Step`, declared by the
phase plug-in) in order. Every change is saved with an event (``WatchPhaseRun``) and
state changes go on the bus (``events.forge``). A failed step compensates the completed
ones in reverse order (state COMPENSATING) and ends FAILED; a cancel does the same and
ends CANCELLED. Runs that were in flight when the service stopped are resumed at start-up:
completed steps are skipped and the others are idempotent (request ids derived from the
run), so a resumed run picks up watching its training jobs where it left off.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2

from agentforge.events.v1 import event_pb2
from agentforge.forge.v1 import phase_run_event_pb2 as ev
from agentforge.forge.v1 import phase_run_pb2 as pr
from agentforge.model.v1 import model_service_pb2_grpc
from agentforge.training.v1 import training_service_pb2_grpc
from services.forge.catalog import CATALOG
from services.forge.config import ForgeConfig
from services.forge.phases.base import Peers, Phase, PhaseContext, Step, StepFailedError
from services.forge.store import RunStore
from services.shared import tracing
from services.shared.authz import acting_for_var, creator_subject, require_owner
from services.shared.bus import EventBus
from services.shared.events import publish_event
from services.shared.fanout import Fanout, Gap
from services.shared.errors import (AlreadyExists, FailedPrecondition, ForgeError, InvalidArgument, NotFound,
                                    as_domain_error, to_rpc_status)
from services.shared.tasks import cancel_and_wait

__all__ = ["RunManager", "StepFailed", "parse_cursor"]

log = logging.getLogger(__name__)

S = pr.PhaseRunState
TERMINAL = {S.PHASE_RUN_STATE_SUCCEEDED, S.PHASE_RUN_STATE_FAILED, S.PHASE_RUN_STATE_CANCELLED}
#: A watch without live events re-reads the store this often (s).
_WATCH_IDLE_CHECK_S = 2.0
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
    if isinstance(exc, StepFailedError):
        return status_pb2.Status(code=exc.code, message=exc.message)
    mapped = as_domain_error(exc)  # e.g. Redis away -> UNAVAILABLE, a domain error as raised
    if isinstance(mapped, ForgeError):
        return to_rpc_status(mapped)
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
        #: Hands every recorded event to the WatchPhaseRun streams of its run.
        self.fanout: Fanout[str, ev.PhaseRunEvent] = Fanout("forge")
        self._peers = Peers(training=training, model=model, work_dir=config.data_dir / "forge", config=config)

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
            existing = await self._store.db(self._store.by_request_id, request_id)
            if existing is not None:
                return existing
        definition = CATALOG.get(phase_id)
        if definition is None:  # a bad field of this request, not a missing resource it acts on
            known = ", ".join(f"phases/{p}" for p in CATALOG)
            raise InvalidArgument(f"there is no phase {phase}", [("phase", f"not in the catalog; one of: {known}")],
                                  reason="PHASE_UNKNOWN")
        if not definition.available:
            raise FailedPrecondition(
                f"phase {phase} is in the catalog but not implemented in this deployment",
                reason="PHASE_UNAVAILABLE",
            )
        params = definition.resolve(parameters)
        if input_model_version:  # the phase's `source` parameter, set the AIP way
            target = params.get(phase_id)
            if target is None or "source" not in target:
                raise InvalidArgument("this phase takes no input model version", violations=[
                    ("input_model_version", f"{phase} does not start from a model version; omit it")])
            target["source"] = input_model_version
        await definition.precheck(params, self._peers)
        run_id = run_id or uuid.uuid4().hex[:12]
        now = _now()
        run = pr.PhaseRun(
            name=f"phaseRuns/{run_id}", phase=phase, state=S.PHASE_RUN_STATE_PENDING,
            input_model_version=input_model_version, labels=labels, request_id=request_id,
            create_time=now, update_time=now, creator=creator_subject(),
        )
        run.parameters.update(params[phase_id] if len(params) == 1 and phase_id in params else
                              {**{k: v for k, v in _plain_struct(parameters).items() if k not in params},
                               **params})
        for step in definition.steps():
            run.steps.add(name=step.name, state=pr.SAGA_STEP_STATE_PENDING,
                          compensation_state=pr.COMPENSATION_STATE_NOT_REQUIRED)
        run.progress.steps_total = len(run.steps)
        if not await self._store.db(self._store.insert, run):
            if request_id:
                again = await self._store.db(self._store.by_request_id, request_id)
                if again is not None:
                    return again
            raise AlreadyExists(f"phase run {run.name} already exists")
        await self._record(run, ev.PhaseRunEvent(state_changed=ev.PhaseRunStateChanged(
            from_state=S.PHASE_RUN_STATE_UNSPECIFIED, to_state=S.PHASE_RUN_STATE_PENDING, reason="started")))
        self._launch(run)
        return run

    async def get(self, name: str) -> pr.PhaseRun:
        run = await self._store.db(self._store.get, name.split("/", 1)[1])
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
        require_owner(run.name, run.creator)
        if run.state in TERMINAL:
            raise FailedPrecondition(f"{name} already ended ({S.Name(run.state)})")
        run_id = name.split("/", 1)[1]
        reason = reason or "cancelled by request"
        data = await self._store.db(self._store.saga_data, run_id)
        data["cancel_reason"] = reason
        await self._store.db(self._store.set_saga_data, run_id, data)
        task = self._tasks.get(run_id)
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=30)
            data = await self._store.db(self._store.saga_data, run_id)  # the saga may have saved since
            data["cancel_reason"] = reason
            await self._store.db(self._store.set_saga_data, run_id, data)
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
        """The run's events after ``cursor``, then live ones, until the run has ended.

        Live events come through the service's one fan-out (:attr:`fanout`, fed by
        :meth:`_record`); the store is replayed at the start, after a gap (buffer
        overflow) or an event that does not follow the last one sent, and every
        ``_WATCH_IDLE_CHECK_S`` without events.
        """
        await self.get(name)  # NotFound before the stream starts
        run_id = name.split("/", 1)[1]
        seq = parse_cursor(cursor, self._store.epoch)
        watcher = await self.fanout.watch([run_id])  # before the store: no gap
        try:
            replay = True
            while True:
                if replay:
                    events = await self._store.db(self._store.events_after, run_id, seq)
                    for event in events:
                        seq = event.sequence
                        yield event
                    if events:
                        continue
                    if (await self.get(name)).state in TERMINAL:
                        return
                    replay = False
                got = await watcher.get(_WATCH_IDLE_CHECK_S)
                if got is None or isinstance(got, Gap):
                    replay = True
                    continue
                for _run, event in got:
                    if event.sequence <= seq:
                        continue
                    if event.sequence != seq + 1:
                        replay = True
                        break
                    seq = event.sequence
                    yield event
                    if event.HasField("state_changed") and event.state_changed.to_state in TERMINAL:
                        replay = True  # ends once the store has nothing more
                        break
        finally:
            await watcher.close()

    async def recover(self) -> None:
        """Resume the runs that were in flight when the service last stopped."""
        for run in await self._store.db(self._store.unfinished):
            log.info("resuming phase run", extra={"phase_run": run.name})
            self._launch(run)

    async def aclose(self) -> None:
        """Stop driving runs (service shutdown); they resume at the next start."""
        self.fanout.close()
        tasks = list(self._tasks.values())
        await cancel_and_wait(tasks)

    # -- saga ---------------------------------------------------------------------
    def _launch(self, run: pr.PhaseRun) -> None:
        run_id = run.name.split("/", 1)[1]
        # A fresh context: the saga outlives the RPC that started it, so it must not
        # inherit that call's deadline (propagated to outgoing calls) or request id; it
        # keeps the call's trace, so the saga's calls are part of it.
        task = asyncio.create_task(self._drive(run), name=f"saga {run.name}", context=tracing.fresh_context())
        self._tasks[run_id] = task
        task.add_done_callback(lambda t: self._forget(run_id, t))

    def _forget(self, run_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(run_id) is task:
            del self._tasks[run_id]

    async def _record(self, run: pr.PhaseRun, event: ev.PhaseRunEvent | None = None) -> None:
        run.update_time.CopyFrom(_now())
        if event is not None:
            event.time.CopyFrom(run.update_time)
        stored = await self._store.db(self._store.save, run, event)
        if stored is not None:
            self.fanout.publish(run.name.split("/", 1)[1], stored)

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

    def _phase(self, run: pr.PhaseRun) -> Phase:
        return CATALOG[run.phase.split("/", 1)[1]]

    def _context(self, run: pr.PhaseRun, step: Step, index: int, params: dict[str, dict[str, Any]],
                 data: dict[str, Any], phase: Phase) -> PhaseContext:
        run_id = run.name.split("/", 1)[1]
        steps = phase.steps()
        done_weight = sum(s.weight for s in steps[:index])
        last = [0.0]

        async def save() -> None:
            await self._store.db(self._store.set_saga_data, run_id, data)

        async def log(message: str) -> None:
            await self._log(run, message, step.name)

        async def report(fraction: float, message: str) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - last[0] < self._config.progress_every_s:
                return
            last[0] = now
            run.progress.fraction_done = done_weight + step.weight * fraction
            run.progress.message = message
            await self._record(run, ev.PhaseRunEvent(progress=run.progress))

        phase_id = step.phase or phase.id
        return PhaseContext(run=run, phase_id=phase_id, params=params[phase_id], peers=self._peers, data=data,
                            in_pipeline=bool(step.phase), save=save, log=log, report=report)

    async def _drive(self, run: pr.PhaseRun) -> None:
        with tracing.internal_span(f"saga {run.phase.rpartition('/')[2]}", {"agentforge.phase_run": run.name}):
            await self._drive_steps(run)

    async def _drive_steps(self, run: pr.PhaseRun) -> None:
        run_id = run.name.split("/", 1)[1]
        # The saga acts for whoever started the run (its own context, so this stays in
        # it): the training jobs it creates are theirs (docs/security.md).
        acting_for_var.set(run.creator)
        try:
            data = await self._store.db(self._store.saga_data, run_id)
            if "cancel_reason" in data:  # cancelled before the service stopped
                await self._compensate(run, S.PHASE_RUN_STATE_CANCELLED, data["cancel_reason"], None)
                return
            if run.state == S.PHASE_RUN_STATE_COMPENSATING:
                await self._compensate(run, S.PHASE_RUN_STATE_FAILED, "compensation resumed", run.error)
                return
            await self._set_state(run, S.PHASE_RUN_STATE_RUNNING, "saga started")
            phase = self._phase(run)
            params = phase.resolve(run.parameters)  # Struct numbers are doubles: resolve again for ints
            steps = phase.steps()
            for index, step in enumerate(steps):
                if run.steps[index].state == pr.SAGA_STEP_STATE_SUCCEEDED:
                    continue
                with tracing.internal_span(f"saga step {step.name}", {"agentforge.phase_run": run.name}):
                    await self._run_step(run, index, step, self._context(run, step, index, params, data, phase))
            await self._finish(run)
        except asyncio.CancelledError:
            raise  # cancel() compensates; at shutdown recover() resumes the run later
        except StepFailed as exc:
            await self._compensate(run, S.PHASE_RUN_STATE_FAILED, exc.status.message, exc.status)
        except Exception as exc:  # a bug or an unexpected peer answer: fail the run, keep the service
            log.exception("phase run failed", extra={"phase_run": run.name})
            await self._compensate(run, S.PHASE_RUN_STATE_FAILED, "internal error", _rpc_status(exc))

    async def _run_step(self, run: pr.PhaseRun, index: int, step_def: Step, ctx: PhaseContext) -> None:
        step = run.steps[index]
        step.state = pr.SAGA_STEP_STATE_RUNNING
        step.attempts += 1
        step.start_time.CopyFrom(_now())
        run.progress.current_step = step.name
        run.progress.message = f"{step.name}…"
        await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
        try:
            step.resource = await step_def.run(ctx)
        except asyncio.CancelledError:
            ctx.stop.set()  # work in a thread sees it and stops
            raise
        except (grpc.aio.AioRpcError, StepFailed, StepFailedError) as exc:
            step.state = pr.SAGA_STEP_STATE_FAILED
            step.error.CopyFrom(_rpc_status(exc))
            step.end_time.CopyFrom(_now())
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
            raise StepFailed(step.error) from exc
        step.state = pr.SAGA_STEP_STATE_SUCCEEDED
        step.end_time.CopyFrom(_now())
        if step_def.undo is not None:
            step.compensation_state = pr.COMPENSATION_STATE_PENDING
        run.progress.steps_done = index + 1
        run.progress.fraction_done = sum(s.weight for s in self._phase(run).steps()[: index + 1])
        await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))

    def _cleanup(self, run: pr.PhaseRun) -> None:
        shutil.rmtree(self._peers.work_dir / "runs" / run.name.split("/", 1)[1], ignore_errors=True)

    async def _finish(self, run: pr.PhaseRun) -> None:
        for step in run.steps:  # nothing to undo once the run succeeded
            step.compensation_state = pr.COMPENSATION_STATE_NOT_REQUIRED
        run.progress.fraction_done = 1.0
        run.progress.current_step = ""
        run.progress.message = f"done: {run.outputs.model_version}"
        await asyncio.to_thread(self._cleanup, run)
        await self._set_state(run, S.PHASE_RUN_STATE_SUCCEEDED, "all steps succeeded")

    async def _compensate(self, run: pr.PhaseRun, final: int, reason: str,
                          error: status_pb2.Status | None) -> None:
        acting_for_var.set(run.creator)  # a task of its own when cancel() started it
        await self._set_state(run, S.PHASE_RUN_STATE_COMPENSATING, reason, error)
        phase = self._phase(run)
        steps = phase.steps()
        run_id = run.name.split("/", 1)[1]
        data = await self._store.db(self._store.saga_data, run_id)
        try:
            params = phase.resolve(run.parameters)
        except InvalidArgument:  # parameters stored by an older version: undo with what can be read
            params = {}
        for index in reversed(range(len(run.steps))):
            step = run.steps[index]
            undo = steps[index].undo if index < len(steps) else None
            if undo is None or not step.resource:
                continue
            if step.compensation_state not in (pr.COMPENSATION_STATE_PENDING, pr.COMPENSATION_STATE_RUNNING):
                continue
            step.compensation_state = pr.COMPENSATION_STATE_RUNNING
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
            ctx = self._context(run, steps[index], index, params or {steps[index].phase or phase.id: {}}, data, phase)
            try:
                await asyncio.shield(undo(ctx, step.resource))
                step.compensation_state = pr.COMPENSATION_STATE_SUCCEEDED
            except Exception as exc:
                step.compensation_state = pr.COMPENSATION_STATE_FAILED
                step.compensation_error.CopyFrom(_rpc_status(exc))
            await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
        # What never ran is SKIPPED; what was running when the run was cancelled is
        # CANCELLED (issue 8: neither may stay PENDING/RUNNING in a terminal run).
        for index, step in enumerate(run.steps):
            before = step.state
            if step.state == pr.SAGA_STEP_STATE_PENDING:
                step.state = pr.SAGA_STEP_STATE_SKIPPED
            elif step.state == pr.SAGA_STEP_STATE_RUNNING:
                step.state = (pr.SAGA_STEP_STATE_CANCELLED if final == S.PHASE_RUN_STATE_CANCELLED
                              else pr.SAGA_STEP_STATE_FAILED)
                step.end_time.CopyFrom(_now())
            if step.state != before:
                await self._record(run, ev.PhaseRunEvent(step_changed=ev.SagaStepChanged(step=step, index=index)))
        await asyncio.to_thread(self._cleanup, run)
        await self._set_state(run, final, reason, error)


def _plain_struct(s: struct_pb2.Struct | None) -> dict[str, Any]:
    return {} if s is None else {k: v for k, v in s.items()}
