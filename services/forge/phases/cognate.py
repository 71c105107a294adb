"""Cognate: pretrain several small byte-level language models and pick the winner.

Steps (each undone in reverse order when the run fails or is cancelled):

====================== ============================================= ===========================
step                   does                                          compensation
====================== ============================================= ===========================
create_training_jobs   one CognateTask training job per candidate     cancel the jobs; delete any
                       (``candidates``, default 3; seeds ``seed +     version registered from them
                       i·seed_stride``, learning rates spread by
                       ``learning_rate_spread``, widths from
                       ``widths``); request ids derived from the run
train                  watch every job to its end (in parallel on     —
                       the worker pool), relaying their progress
register_model_versions wait for the registry's hand-off to register delete the versions
                       each job's final checkpoint as a READY version
                       of ``model`` (lineage: job, checkpoint, run)
set_winner_alias       ``models/{model}@{alias}`` → the version with  alias back to its old target
                       the lowest validation loss (``eval_loss``)
====================== ============================================= ===========================

A job that SUCCEEDED just before a cancel is handed to the registry over the bus, maybe
after this compensation ran: the hand-off reads the run's state before and after
registering and undoes itself for a run that is COMPENSATING, CANCELLED or FAILED
(services/model/handoff.py), so no version of an undone run stays.

Output (for EvoMerge): ``{"versions": [...], "winner": ..., "val_loss": {version: loss}}``.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import grpc
from google.rpc import code_pb2

from agentforge.model.v1 import model_version_pb2 as mv
from agentforge.model.v1 import request_response_pb2 as mreq
from agentforge.training.v1 import request_response_pb2 as treq
from agentforge.training.v1 import training_job_pb2 as tj
from services.forge.phases.base import P, ParamSpec, Phase, PhaseContext, Step, StepFailedError
from services.forge.phases.common import delete_versions, move_alias, restore_alias

__all__ = ["Cognate", "cognate_training_job", "candidate_settings"]

JOB_TERMINAL = {tj.TRAINING_JOB_STATE_SUCCEEDED, tj.TRAINING_JOB_STATE_FAILED, tj.TRAINING_JOB_STATE_CANCELLED}


def candidate_settings(params: dict[str, Any]) -> list[dict[str, Any]]:
    """Seed, learning rate and width of each candidate."""
    n = params["candidates"]
    widths = params["widths"] or [params["width"]] * n
    out = []
    for i in range(n):
        exponent = i - (n - 1) / 2
        out.append({"seed": params["seed"] + i * params["seed_stride"],
                    "learning_rate": params["learning_rate"] * params["learning_rate_spread"] ** exponent,
                    "width": int(widths[i])})
    return out


def cognate_training_job(params: dict[str, Any], *, phase_run: str, candidate: int = 0) -> tj.TrainingJob:
    """The training job of candidate ``candidate`` of a Cognate run."""
    settings = candidate_settings(params)[candidate]
    kind = {"none": tj.GROKFAST_KIND_NONE, "ema": tj.GROKFAST_KIND_EMA, "ma": tj.GROKFAST_KIND_MA}
    dataset = (tj.DatasetSpec(path=params["dataset_path"]) if params["dataset_path"]
               else tj.DatasetSpec(builtin=tj.BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS))
    if params.get("tokenizer") == "char":
        dataset.tokenizer = tj.TOKENIZER_CHAR
    spec = tj.TrainingJobSpec(
        task=tj.TaskSpec(kind=tj.TASK_KIND_COGNATE, dataset=dataset),
        model=tj.ModelArchitecture(layers=params["layers"], width=settings["width"], heads=params["heads"],
                                   context_length=params["context_length"]),
        optimizer=tj.OptimizerSpec(kind=tj.OPTIMIZER_KIND_ADAMW, learning_rate=settings["learning_rate"],
                                   weight_decay=params["weight_decay"], warmup_steps=params["warmup_steps"]),
        grokfast=tj.GrokfastSpec(kind=kind[params["grokfast"]], alpha=params["grokfast_alpha"],
                                 lamb=params["grokfast_lamb"]),
        batch_size=params["batch_size"], max_steps=params["max_steps"], eval_interval=params["eval_interval"],
        progress_interval=params["progress_interval"], seed=settings["seed"],
        device=tj.DEVICE_AUTO, priority=tj.PRIORITY_NORMAL,
    )
    return tj.TrainingJob(
        display_name=f"cognate candidate {candidate + 1} ({phase_run})",
        labels={"model": params["model"], "phase": "cognate", "candidate": str(candidate + 1)},
        spec=spec, phase="phases/cognate", phase_run=phase_run,
    )


class Cognate(Phase):
    id = "cognate"
    display_name = "Cognate"
    description = ("Pretrain several small decoder-only language models (different seeds, learning rates or "
                   "widths) with the GrokFast gradient filter, in parallel on the worker pool; register each "
                   "as a model version and move the `winner` alias to the one with the lowest validation loss.")
    parameters = (
        ParamSpec("candidates", P.PARAMETER_TYPE_INTEGER, "Models to train.", 3, 1, 8),
        ParamSpec("max_steps", P.PARAMETER_TYPE_INTEGER, "Optimizer steps per model.", 300, 1, 1_000_000),
        ParamSpec("batch_size", P.PARAMETER_TYPE_INTEGER, "Sequences per step.", 16, 1, 4096),
        ParamSpec("layers", P.PARAMETER_TYPE_INTEGER, "Transformer blocks.", 2, 1, 24),
        ParamSpec("width", P.PARAMETER_TYPE_INTEGER, "Model width (multiple of heads).", 64, 8, 2048),
        ParamSpec("widths", P.PARAMETER_TYPE_LIST,
                  "Per-candidate widths (one per candidate); empty = all `width`. Models of different widths "
                  "cannot be merged by EvoMerge.", []),
        ParamSpec("heads", P.PARAMETER_TYPE_INTEGER, "Attention heads.", 4, 1, 32),
        ParamSpec("context_length", P.PARAMETER_TYPE_INTEGER, "Context length in tokens.", 64, 8, 4096),
        ParamSpec("learning_rate", P.PARAMETER_TYPE_NUMBER, "Peak AdamW learning rate (the middle candidate's).",
                  3e-3, 1e-6, 1.0),
        ParamSpec("learning_rate_spread", P.PARAMETER_TYPE_NUMBER,
                  "Candidate i uses learning_rate × spread^(i − (n−1)/2); 1 = all the same.", 1.0, 0.1, 10.0),
        ParamSpec("weight_decay", P.PARAMETER_TYPE_NUMBER, "AdamW weight decay.", 0.01, 0.0, 10.0),
        ParamSpec("warmup_steps", P.PARAMETER_TYPE_INTEGER, "Linear LR warmup steps.", 10, 0, 100_000),
        ParamSpec("grokfast", P.PARAMETER_TYPE_STRING, "GrokFast filter.", "ema", allowed=("none", "ema", "ma")),
        ParamSpec("grokfast_alpha", P.PARAMETER_TYPE_NUMBER, "GrokFast EMA α.", 0.98, 0.0, 0.9999),
        ParamSpec("grokfast_lamb", P.PARAMETER_TYPE_NUMBER, "GrokFast λ.", 2.0, 0.0, 100.0),
        ParamSpec("seed", P.PARAMETER_TYPE_INTEGER, "Seed of the first candidate.", 0, 0, 2**31 - 1),
        ParamSpec("seed_stride", P.PARAMETER_TYPE_INTEGER,
                  "Candidate i uses seed + i × stride; 0 = one seed (same initialisation and data order).", 1, 0,
                  1_000_000),
        ParamSpec("dataset_path", P.PARAMETER_TYPE_STRING,
                  "Absolute .txt/.jsonl path on the workers; empty = built-in arithmetic word problems.", ""),
        ParamSpec("tokenizer", P.PARAMETER_TYPE_STRING,
                  "byte: UTF-8 bytes; char: the dataset's characters (TOKENIZER_CHAR; later phases score the "
                  "models with that vocabulary).", "byte", allowed=("byte", "char")),
        ParamSpec("eval_interval", P.PARAMETER_TYPE_INTEGER, "Evaluate every N steps (0 = auto).", 0, 0, 1_000_000),
        ParamSpec("progress_interval", P.PARAMETER_TYPE_INTEGER, "Progress event every N steps.", 5, 1, 100_000),
        ParamSpec("model", P.PARAMETER_TYPE_STRING, "Registry model id the versions are registered under.", "cognate"),
        ParamSpec("alias", P.PARAMETER_TYPE_STRING, "Alias moved to the winner.", "winner"),
    )
    outputs = (("model_version", "The winner: the candidate with the lowest validation loss.",
                "agentforge.dev/ModelVersion", "winner"),)

    def check(self, params: dict[str, Any]) -> list[tuple[str, str]]:
        v = []
        widths = params["widths"]
        if widths and len(widths) != params["candidates"]:
            v.append(("parameters.widths", f"needs one width per candidate ({params['candidates']})"))
        for w in widths or [params["width"]]:
            if not isinstance(w, (int, float)) or isinstance(w, bool) or w != int(w) or not 8 <= w <= 2048:
                v.append(("parameters.widths" if widths else "parameters.width", "widths must be integers in [8, 2048]"))
                break
            if int(w) % params["heads"]:
                v.append(("parameters.widths" if widths else "parameters.width",
                          "must be divisible by parameters.heads"))
                break
        path = params["dataset_path"]
        if path and (not path.startswith("/") or not path.endswith((".txt", ".jsonl"))):
            v.append(("parameters.dataset_path", "must be an absolute path to a .txt or .jsonl file"))
        if not params["model"] or len(params["model"]) > 63 or not params["model"].replace("-", "a").isalnum() \
                or not params["model"].islower():
            v.append(("parameters.model", "must be a model id: lowercase letters, digits and '-'"))
        if params["alias"] == "latest" or not params["alias"][:1].isalpha():
            v.append(("parameters.alias", "must start with a letter and not be 'latest'"))
        return v

    def steps(self) -> tuple[Step, ...]:
        return (
            Step("create_training_jobs", 0.02, self.create_jobs, self.cancel_jobs),
            Step("train", 0.88, self.train),
            Step("register_model_versions", 0.07, self.register, delete_versions),
            Step("set_winner_alias", 0.03, self.set_winner, restore_alias),
        )

    # -- steps --------------------------------------------------------------------
    async def create_jobs(self, ctx: PhaseContext) -> str:
        names = []
        for i in range(ctx.params["candidates"]):
            job = cognate_training_job(ctx.params, phase_run=ctx.run.name, candidate=i)
            created = await ctx.peers.training.CreateTrainingJob(
                treq.CreateTrainingJobRequest(training_job=job, request_id=ctx.request_id(f"train-{i + 1}")),
                timeout=30)
            names.append(created.name)
            await ctx.log(f"candidate {i + 1}: {created.name} (seed {job.spec.seed}, "
                          f"lr {job.spec.optimizer.learning_rate:.3g}, width {job.spec.model.width})")
        ctx.data[f"{ctx.phase_id}.jobs"] = names
        await ctx.save()
        if not ctx.in_pipeline:
            ctx.run.outputs.training_job = names[0]
        for i, n in enumerate(names, 1):
            ctx.run.outputs.artifacts[ctx.artifact_key(f"training_job_{i}")] = n
        return ",".join(names)

    async def train(self, ctx: PhaseContext) -> str:
        jobs: list[str] = ctx.data[f"{ctx.phase_id}.jobs"]
        fractions = {j: 0.0 for j in jobs}
        lines: dict[str, str] = {}

        async def follow(job_name: str) -> None:
            cursor, retries = "", 0
            while True:
                try:
                    async for event in ctx.peers.training.WatchTrainingJob(
                            treq.WatchTrainingJobRequest(name=job_name, cursor=cursor), timeout=None):
                        kind = event.WhichOneof("kind")
                        if kind == "heartbeat":
                            continue  # a keepalive of the quiet stream, not an event
                        cursor, retries = event.cursor, 0
                        if kind == "progress":
                            p = event.progress
                            fractions[job_name] = p.fraction_done
                            lines[job_name] = (f"step {p.step}/{p.total_steps} loss {p.train_loss:.4f}"
                                               + (f" val_loss {p.eval.loss:.4f}" if p.HasField("eval") else ""))
                            await ctx.progress(sum(fractions.values()) / len(jobs), " | ".join(
                                f"{i}: {lines[j]}" for i, j in enumerate(jobs, 1) if j in lines))
                        elif kind == "state_changed" and event.state_changed.to_state in JOB_TERMINAL:
                            change = event.state_changed
                            if change.to_state != tj.TRAINING_JOB_STATE_SUCCEEDED:
                                raise StepFailedError(
                                    change.error.code or code_pb2.ABORTED,
                                    f"{job_name} ended {tj.TrainingJobState.Name(change.to_state)}"
                                    + (f": {change.error.message}" if change.error.message else ""))
                    return
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or retries >= 20:
                        raise
                    retries += 1
                    await asyncio.sleep(min(5.0, 0.2 * 2**retries))

        await asyncio.gather(*(follow(j) for j in jobs))
        for i, name in enumerate(jobs, 1):
            job = await ctx.peers.training.GetTrainingJob(treq.GetTrainingJobRequest(name=name), timeout=10)
            if job.state != tj.TRAINING_JOB_STATE_SUCCEEDED:
                raise StepFailedError(code_pb2.ABORTED, f"{name} is {tj.TrainingJobState.Name(job.state)}")
            if job.latest_checkpoint:
                ctx.run.outputs.artifacts[ctx.artifact_key(f"checkpoint_{i}")] = job.latest_checkpoint
        return ",".join(jobs)

    async def register(self, ctx: PhaseContext) -> str:
        """The registry registers each final checkpoint from the bus hand-off; wait for all."""
        jobs: list[str] = ctx.data[f"{ctx.phase_id}.jobs"]
        parent = f"models/{ctx.params['model']}"
        deadline = time.monotonic() + ctx.peers.config.register_timeout_s
        found: dict[str, mv.ModelVersion] = {}
        while len(found) < len(jobs):
            if time.monotonic() > deadline:
                missing = [j for j in jobs if j not in found]
                raise StepFailedError(code_pb2.DEADLINE_EXCEEDED,
                                      f"the model registry did not register {', '.join(missing)} within "
                                      f"{ctx.peers.config.register_timeout_s:g}s")
            try:
                token = ""
                while True:
                    page = await ctx.peers.model.ListModelVersions(
                        mreq.ListModelVersionsRequest(parent=parent, page_size=1000, page_token=token), timeout=10)
                    for version in page.model_versions:
                        job = version.lineage.training_job
                        if job not in jobs:
                            continue
                        if version.state == mv.MODEL_VERSION_STATE_FAILED:
                            raise StepFailedError(code_pb2.ABORTED, f"the registry failed to register {version.name}")
                        if version.state == mv.MODEL_VERSION_STATE_READY:
                            found[job] = version
                    token = page.next_page_token
                    if not token:
                        break
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
            if len(found) < len(jobs):
                await asyncio.sleep(0.5)
        versions = [found[j].name for j in jobs]
        losses = {found[j].name: found[j].metrics.get("eval_loss", math.inf) for j in jobs}
        ctx.data[f"{ctx.phase_id}.versions"] = versions
        ctx.data[f"{ctx.phase_id}.val_loss"] = {k: (v if math.isfinite(v) else None) for k, v in losses.items()}
        await ctx.save()
        for i, name in enumerate(versions, 1):
            ctx.run.outputs.artifacts[ctx.artifact_key(f"candidate_{i}")] = name
            if math.isfinite(losses[name]):
                ctx.run.outputs.metrics[ctx.metric_key(f"candidate_{i}_val_loss")] = losses[name]
        await ctx.log("registered " + ", ".join(f"{v} (val_loss {losses[v]:.4f})" for v in versions))
        return ",".join(versions)

    async def set_winner(self, ctx: PhaseContext) -> str:
        versions: list[str] = ctx.data[f"{ctx.phase_id}.versions"]
        losses = {k: (math.inf if v is None else v) for k, v in ctx.data[f"{ctx.phase_id}.val_loss"].items()}
        winner = min(versions, key=lambda v: (losses[v], versions.index(v)))
        resource = await move_alias(ctx, ctx.params["model"], ctx.params["alias"], winner)
        ctx.run.outputs.model_version = winner
        ctx.run.outputs.artifacts[ctx.artifact_key("winner")] = winner
        if math.isfinite(losses[winner]):
            ctx.run.outputs.metrics[ctx.metric_key("winner_val_loss")] = losses[winner]
        await ctx.set_output({"versions": versions, "winner": winner,
                              "val_loss": {k: (v if math.isfinite(v) else None) for k, v in losses.items()}})
        return resource

    # -- compensations --------------------------------------------------------------
    async def cancel_jobs(self, ctx: PhaseContext, resource: str) -> None:
        jobs = [j for j in resource.split(",") if j]
        for name in jobs:
            try:
                await ctx.peers.training.CancelTrainingJob(treq.CancelTrainingJobRequest(name=name), timeout=30)
            except grpc.aio.AioRpcError as exc:
                if exc.code() not in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    raise
        # a job that finished before the cancel was registered by the hand-off: remove it too
        parent = f"models/{ctx.params['model']}"
        try:
            page = await ctx.peers.model.ListModelVersions(
                mreq.ListModelVersionsRequest(parent=parent, page_size=1000), timeout=10)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return
            raise
        stale = [v.name for v in page.model_versions if v.lineage.training_job in jobs]
        await delete_versions(ctx, ",".join(stale))
