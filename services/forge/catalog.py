"""The Agent Forge phase catalog and the Cognate phase's parameters.

The original pipeline's phases, in order. Only phases with a real implementation in this
deployment are ``available``; starting another one is FAILED_PRECONDITION, never a
pretend run. Parameters are checked against each phase's specs here (pure logic, no I/O),
and the Cognate parameters become a training job spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import struct_pb2

from agentforge.forge.v1 import phase_pb2
from agentforge.training.v1 import training_job_pb2 as tj
from services.shared.errors import InvalidArgument

__all__ = ["CATALOG", "ParamSpec", "PhaseDef", "cognate_training_job", "phase_proto", "resolve_parameters"]

P = phase_pb2.ParameterType


@dataclass(frozen=True)
class ParamSpec:
    name: str
    type: int
    description: str
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] = ()


@dataclass(frozen=True)
class PhaseDef:
    id: str
    display_name: str
    description: str
    prerequisites: tuple[str, ...] = ()
    parameters: tuple[ParamSpec, ...] = ()
    outputs: tuple[tuple[str, str, str, str], ...] = ()  # name, description, resource type, alias
    available: bool = False
    steps: tuple[str, ...] = field(default=())


COGNATE_STEPS = ("create_training_job", "train", "register_model_version", "set_alias")

COGNATE_PARAMS = (
    ParamSpec("max_steps", P.PARAMETER_TYPE_INTEGER, "Optimizer steps.", 300, 1, 1_000_000),
    ParamSpec("batch_size", P.PARAMETER_TYPE_INTEGER, "Sequences per step.", 16, 1, 4096),
    ParamSpec("layers", P.PARAMETER_TYPE_INTEGER, "Transformer blocks.", 2, 1, 24),
    ParamSpec("width", P.PARAMETER_TYPE_INTEGER, "Model width (multiple of heads).", 64, 8, 2048),
    ParamSpec("heads", P.PARAMETER_TYPE_INTEGER, "Attention heads.", 4, 1, 32),
    ParamSpec("context_length", P.PARAMETER_TYPE_INTEGER, "Context length in bytes.", 64, 8, 4096),
    ParamSpec("learning_rate", P.PARAMETER_TYPE_NUMBER, "Peak AdamW learning rate.", 3e-3, 1e-6, 1.0),
    ParamSpec("weight_decay", P.PARAMETER_TYPE_NUMBER, "AdamW weight decay.", 0.01, 0.0, 10.0),
    ParamSpec("warmup_steps", P.PARAMETER_TYPE_INTEGER, "Linear LR warmup steps.", 10, 0, 100_000),
    ParamSpec("grokfast", P.PARAMETER_TYPE_STRING, "GrokFast filter.", "ema", allowed=("none", "ema", "ma")),
    ParamSpec("grokfast_alpha", P.PARAMETER_TYPE_NUMBER, "GrokFast EMA α.", 0.98, 0.0, 0.9999),
    ParamSpec("grokfast_lamb", P.PARAMETER_TYPE_NUMBER, "GrokFast λ.", 2.0, 0.0, 100.0),
    ParamSpec("seed", P.PARAMETER_TYPE_INTEGER, "Seed.", 0, 0, 2**32 - 1),
    ParamSpec("dataset_path", P.PARAMETER_TYPE_STRING,
              "Absolute .txt/.jsonl path on the workers; empty = built-in arithmetic word problems.", ""),
    ParamSpec("eval_interval", P.PARAMETER_TYPE_INTEGER, "Evaluate every N steps (0 = auto).", 0, 0, 1_000_000),
    ParamSpec("progress_interval", P.PARAMETER_TYPE_INTEGER, "Progress event every N steps.", 5, 1, 100_000),
    ParamSpec("model", P.PARAMETER_TYPE_STRING, "Registry model id the result is registered under.", "cognate"),
    ParamSpec("alias", P.PARAMETER_TYPE_STRING, "Alias moved to the new version.", "cognate-latest"),
)

CATALOG: dict[str, PhaseDef] = {
    p.id: p
    for p in (
        PhaseDef("cognate", "Cognate",
                 "Pretrain a small decoder-only language model from scratch with the GrokFast "
                 "gradient filter; register it as a model version.",
                 parameters=COGNATE_PARAMS,
                 outputs=(("model_version", "The trained model's registry version.",
                           "agentforge.dev/ModelVersion", "cognate-latest"),),
                 available=True, steps=COGNATE_STEPS),
        PhaseDef("evomerge", "EvoMerge", "Evolutionary merging of candidate models.", ("cognate",)),
        PhaseDef("quietstar", "Quiet-STaR", "Teach the model to think before speaking.", ("evomerge",)),
        PhaseDef("bitnet", "BitNet", "1.58-bit quantization-aware compression.", ("quietstar",)),
        PhaseDef("forge-training", "Forge training", "Main training loop with GrokFast.", ("bitnet",)),
        PhaseDef("tool-persona", "Tool & persona baking", "Bake tool use and persona.", ("forge-training",)),
        PhaseDef("adas", "ADAS", "Automated design of agentic systems.", ("tool-persona",)),
        PhaseDef("final-compression", "Final compression", "SeedLM + VPTQ + hypercompression.", ("adas",)),
    )
}


def phase_proto(p: PhaseDef, latest_run: str = "") -> phase_pb2.Phase:
    msg = phase_pb2.Phase(
        name=f"phases/{p.id}", display_name=p.display_name, description=p.description,
        prerequisites=[f"phases/{x}" for x in p.prerequisites], available=p.available,
        latest_run=latest_run,
    )
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


def resolve_parameters(p: PhaseDef, given: struct_pb2.Struct) -> dict[str, Any]:
    """Defaults filled in, types and bounds checked; InvalidArgument names each bad key."""
    values = dict(given.items()) if given is not None else {}
    known = {s.name: s for s in p.parameters}
    violations = [(f"parameters.{k}", f"unknown parameter for phase {p.id}") for k in values if k not in known]
    out: dict[str, Any] = {}
    for s in p.parameters:
        v = values.get(s.name, s.default)
        path = f"parameters.{s.name}"
        if s.type == P.PARAMETER_TYPE_INTEGER:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or float(v) != int(v):
                violations.append((path, "must be an integer"))
                continue
            v = int(v)
        elif s.type == P.PARAMETER_TYPE_NUMBER:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                violations.append((path, "must be a number"))
                continue
            v = float(v)
        elif s.type == P.PARAMETER_TYPE_STRING:
            if not isinstance(v, str):
                violations.append((path, "must be a string"))
                continue
            if s.allowed and v not in s.allowed:
                violations.append((path, f"must be one of {', '.join(s.allowed)}"))
                continue
        if s.minimum is not None and v < s.minimum:
            violations.append((path, f"must be >= {s.minimum:g}"))
        elif s.maximum is not None and v > s.maximum:
            violations.append((path, f"must be <= {s.maximum:g}"))
        out[s.name] = v
    if not violations and p.id == "cognate" and out["width"] % out["heads"]:
        violations.append(("parameters.width", "must be divisible by parameters.heads"))
    if not violations and p.id == "cognate" and out["dataset_path"] and (
        not out["dataset_path"].startswith("/") or not out["dataset_path"].endswith((".txt", ".jsonl"))
    ):
        violations.append(("parameters.dataset_path", "must be an absolute path to a .txt or .jsonl file"))
    if violations:
        raise InvalidArgument("invalid phase parameters", violations=violations)
    return out


def cognate_training_job(params: dict[str, Any], *, phase_run: str) -> tj.TrainingJob:
    """The training job a Cognate run asks for."""
    kind = {"none": tj.GROKFAST_KIND_NONE, "ema": tj.GROKFAST_KIND_EMA, "ma": tj.GROKFAST_KIND_MA}
    dataset = (
        tj.DatasetSpec(path=params["dataset_path"])
        if params["dataset_path"]
        else tj.DatasetSpec(builtin=tj.BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS)
    )
    spec = tj.TrainingJobSpec(
        task=tj.TaskSpec(kind=tj.TASK_KIND_COGNATE, dataset=dataset),
        model=tj.ModelArchitecture(layers=params["layers"], width=params["width"], heads=params["heads"],
                                   context_length=params["context_length"]),
        optimizer=tj.OptimizerSpec(kind=tj.OPTIMIZER_KIND_ADAMW, learning_rate=params["learning_rate"],
                                   weight_decay=params["weight_decay"], warmup_steps=params["warmup_steps"]),
        grokfast=tj.GrokfastSpec(kind=kind[params["grokfast"]], alpha=params["grokfast_alpha"],
                                 lamb=params["grokfast_lamb"]),
        batch_size=params["batch_size"],
        max_steps=params["max_steps"],
        eval_interval=params["eval_interval"],
        progress_interval=params["progress_interval"],
        seed=params["seed"],
        device=tj.DEVICE_AUTO,
        priority=tj.PRIORITY_NORMAL,
    )
    return tj.TrainingJob(
        display_name=f"cognate ({phase_run})",
        labels={"model": params["model"], "phase": "cognate"},
        spec=spec,
        phase="phases/cognate",
        phase_run=phase_run,
    )
