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


def test_catalog_has_the_seeds_eight_phases_in_order_then_the_pipeline():
    ids = list(CATALOG)
    assert ids == ["cognate", "evomerge", "quietstar", "bitnet", "forge-training", "tool-persona", "adas",
                   "final-compression", "pipeline"]
    assert CATALOG["evomerge"].prerequisites == ("cognate",)
    assert CATALOG["bitnet"].prerequisites == ("evomerge",)  # until Quiet-STaR exists
    assert CATALOG["forge-training"].prerequisites == ("bitnet",)
    assert [p for p in ids if CATALOG[p].available] == ["cognate", "evomerge", "bitnet", "pipeline"]
    for planned in ("quietstar", "forge-training", "tool-persona", "adas", "final-compression"):
        assert "planned" in CATALOG[planned].description and not CATALOG[planned].steps()


def test_every_available_phase_declares_steps_with_weights_summing_to_one():
    for pid in ("cognate", "evomerge", "bitnet", "pipeline"):
        steps = CATALOG[pid].steps()
        assert steps and abs(sum(s.weight for s in steps) - 1.0) < 1e-9, pid
        assert len({s.name for s in steps}) == len(steps)
    names = [s.name for s in CATALOG["pipeline"].steps()]
    assert names[0] == "cognate.create_training_jobs" and names[-1] == "bitnet.set_winner_alias"


def test_defaults_fill_in_and_the_seeds_max_steps_is_honoured():
    params = resolve_parameters(CATALOG["cognate"], _struct(max_steps=42))
    assert params["max_steps"] == 42 and params["batch_size"] == 16 and params["grokfast"] == "ema"
    assert params["candidates"] == 3 and params["alias"] == "winner"


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
        ({"candidates": 9}, "parameters.candidates"),
        ({"widths": [64, 64]}, "parameters.widths"),
        ({"widths": [64, 64, 66]}, "parameters.widths"),
        ({"alias": "latest"}, "parameters.alias"),
    ],
)
def test_bad_parameters_name_the_field(given, field):
    with pytest.raises(InvalidArgument) as err:
        resolve_parameters(CATALOG["cognate"], _struct(**given))
    assert field in [f for f, _ in err.value.violations]


def test_cognate_parameters_become_a_cognate_training_job():
    params = resolve_parameters(CATALOG["cognate"], _struct(max_steps=10, grokfast="ma", width=32, heads=2))
    job = cognate_training_job(params, phase_run="phaseRuns/r1")
    assert job.spec.seed == 0 and cognate_training_job(params, phase_run="phaseRuns/r1", candidate=2).spec.seed == 2
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


def test_candidates_differ_by_seed_learning_rate_or_width_as_asked():
    params = resolve_parameters(CATALOG["cognate"], _struct(seed=5, seed_stride=0, learning_rate=0.01,
                                                            learning_rate_spread=2.0, widths=[32, 64, 96], heads=4))
    jobs = [cognate_training_job(params, phase_run="phaseRuns/r", candidate=i) for i in range(3)]
    assert [j.spec.seed for j in jobs] == [5, 5, 5]
    assert [j.spec.optimizer.learning_rate for j in jobs] == pytest.approx([0.005, 0.01, 0.02])
    assert [j.spec.model.width for j in jobs] == [32, 64, 96]


@pytest.mark.parametrize(
    ("given", "field"),
    [
        ({"cognate": {"max_steps": 0}}, "parameters.cognate.max_steps"),
        ({"evomerge": {"generations": 0}}, "parameters.evomerge.generations"),
        ({"evomerge": {"parents": ["models/cognate/versions/1", "models/cognate/versions/2"]}},
         "parameters.evomerge.parents"),
        ({"bitnet": {"qat_steps": -1}}, "parameters.bitnet.qat_steps"),
        ({"bitnet": {"bogus": 1}}, "parameters.bitnet.bogus"),
        ({"cognate": {"widths": [32, 64, 64]}}, "parameters.cognate.widths"),
        ({"cognate": 3}, "parameters.cognate"),
    ],
)
def test_pipeline_parameters_are_checked_per_phase(given, field):
    with pytest.raises(InvalidArgument) as err:
        CATALOG["pipeline"].resolve(_struct(**given))
    assert field in [f for f, _ in err.value.violations]


def test_pipeline_defaults_share_the_cognate_initialisation_and_take_the_seeds_max_steps():
    params = CATALOG["pipeline"].resolve(_struct(max_steps=40, evomerge={"generations": 2}))
    assert params["cognate"]["max_steps"] == 40 and params["cognate"]["seed_stride"] == 0
    assert params["evomerge"]["generations"] == 2 and params["bitnet"]["qat_steps"] == 100
    # what a run stores resolves again to the same (restart)
    stored = _struct(**params)
    assert CATALOG["pipeline"].resolve(stored)["cognate"]["max_steps"] == 40
