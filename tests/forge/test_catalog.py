"""Phase catalog and Cognate parameter checks (pure logic)."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2

from agentforge.training.v1 import training_job_pb2 as tj
from services.forge.catalog import CATALOG, cognate_training_job, phase_proto, resolve_parameters
from services.shared.errors import InvalidArgument


def _struct(**kw) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(kw)
    return s


def test_catalog_has_the_eight_phases_in_prerequisite_order():
    ids = list(CATALOG)
    assert ids == ["cognate", "evomerge", "quietstar", "bitnet", "forge-training", "tool-persona", "adas",
                   "final-compression"]
    for i, pid in enumerate(ids[1:], 1):
        assert CATALOG[pid].prerequisites == (ids[i - 1],)
    assert [p for p in ids if CATALOG[p].available] == ["cognate"]


def test_defaults_fill_in_and_the_seeds_max_steps_is_honoured():
    params = resolve_parameters(CATALOG["cognate"], _struct(max_steps=42))
    assert params["max_steps"] == 42 and params["batch_size"] == 16 and params["grokfast"] == "ema"


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"max_steps": 0}, "parameters.max_steps"),
        ({"max_steps": 1.5}, "parameters.max_steps"),
        ({"max_steps": "ten"}, "parameters.max_steps"),
        ({"learning_rate": -1}, "parameters.learning_rate"),
        ({"grokfast": "fast"}, "parameters.grokfast"),
        ({"bogus": 1}, "parameters.bogus"),
        ({"width": 66, "heads": 4}, "parameters.width"),
        ({"dataset_path": "relative.txt"}, "parameters.dataset_path"),
    ],
)
def test_bad_parameters_name_the_field(given, field):
    with pytest.raises(InvalidArgument) as err:
        resolve_parameters(CATALOG["cognate"], _struct(**given))
    assert field in [f for f, _ in err.value.violations]


def test_cognate_parameters_become_a_cognate_training_job():
    params = resolve_parameters(CATALOG["cognate"], _struct(max_steps=10, grokfast="ma", width=32, heads=2))
    job = cognate_training_job(params, phase_run="phaseRuns/r1")
    assert job.spec.task.kind == tj.TASK_KIND_COGNATE
    assert job.spec.task.dataset.builtin == tj.BUILTIN_DATASET_ARITHMETIC_WORD_PROBLEMS
    assert job.spec.max_steps == 10 and job.spec.model.width == 32 and job.spec.model.heads == 2
    assert job.spec.grokfast.kind == tj.GROKFAST_KIND_MA
    assert job.phase_run == "phaseRuns/r1" and job.labels["model"] == "cognate"


def test_phase_proto_lists_parameters_with_defaults_and_bounds():
    msg = phase_proto(CATALOG["cognate"], "phaseRuns/x")
    by_name = {p.name: p for p in msg.parameters}
    assert by_name["max_steps"].default_value.number_value == 300
    assert by_name["max_steps"].minimum == 1
    assert msg.latest_run == "phaseRuns/x" and msg.available
