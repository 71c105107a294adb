"""For every RPC, protovalidate accepts a valid request and rejects an invalid one, naming
the bad field; and the spec's cross-field rules hold."""

from __future__ import annotations

import protovalidate
import pytest
from google.protobuf import json_format

from .conftest import message_class
from .examples import EXAMPLES


def _field_path(violation) -> str:
    return ".".join(e.field_name for e in violation.proto.field.elements)


def _request(services, method_name: str):
    for s in services:
        for m in s.methods:
            if m.full_name == method_name:
                return message_class(m.input_type)
    raise KeyError(method_name)


def test_every_rpc_has_examples(services):
    all_methods = {m.full_name for s in services for m in s.methods}
    assert all_methods - set(EXAMPLES) == set(), "add examples for these RPCs"
    assert set(EXAMPLES) - all_methods == set(), "examples for RPCs that do not exist"


@pytest.mark.parametrize("method", sorted(EXAMPLES))
def test_valid_and_invalid_requests_are_told_apart(services, method):
    cls = _request(services, method)
    valid, invalid, bad_field = EXAMPLES[method]
    good = json_format.ParseDict(valid, cls())
    assert protovalidate.collect_violations(good) == []
    bad = json_format.ParseDict(invalid, cls())
    violations = protovalidate.collect_violations(bad)
    assert violations, f"{method}: invalid example accepted"
    paths = [_field_path(v) for v in violations]
    assert any(p == bad_field or p.startswith(bad_field + ".") or bad_field.startswith(p + ".") for p in paths), paths


def test_width_must_be_divisible_by_heads(services):
    cls = _request(services, "agentforge.training.v1.TrainingService.CreateTrainingJob")
    req = json_format.ParseDict(EXAMPLES["agentforge.training.v1.TrainingService.CreateTrainingJob"][0], cls())
    req.training_job.spec.model.width = 130
    violations = protovalidate.collect_violations(req)
    assert [v.proto.rule_id for v in violations] == ["model.width_divisible_by_heads"]
    assert _field_path(violations[0]) == "training_job.spec.model"


def test_adjust_needs_at_least_one_change(services):
    cls = _request(services, "agentforge.training.v1.TrainingService.AdjustTrainingJob")
    violations = protovalidate.collect_violations(cls(name="trainingJobs/a"))
    assert [v.proto.rule_id for v in violations] == ["adjust.at_least_one"]


def test_negative_learning_rate_in_spec_is_rejected(services):
    cls = _request(services, "agentforge.training.v1.TrainingService.CreateTrainingJob")
    req = json_format.ParseDict(EXAMPLES["agentforge.training.v1.TrainingService.CreateTrainingJob"][0], cls())
    req.training_job.spec.optimizer.learning_rate = -0.1
    paths = [_field_path(v) for v in protovalidate.collect_violations(req)]
    assert paths == ["training_job.spec.optimizer.learning_rate"]
