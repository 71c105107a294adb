"""Spec validation: every bad field raises SpecError naming it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.training.engine import SpecError, TrainingSpec, default_spec


def _with(section: str | None, **changes: object) -> TrainingSpec:
    spec = default_spec("modular_arithmetic")
    if section is None:
        return spec.replace(**changes)
    return spec.replace(**{section: replace(getattr(spec, section), **changes)})


@pytest.mark.parametrize(
    ("section", "changes", "field"),
    [
        ("model", {"heads": 0}, "model.heads"),
        ("model", {"heads": -2}, "model.heads"),
        ("model", {"width": 130, "heads": 4}, "model.width"),
        ("model", {"layers": 0}, "model.layers"),
        ("model", {"context_length": 3}, "model.context_length"),
        ("model", {"vocab_size": 50}, "model.vocab_size"),
        ("model", {"dropout": 1.0}, "model.dropout"),
        ("model", {"block_style": "post_ln"}, "model.block_style"),
        ("task", {"data_order": "sorted"}, "task.data_order"),
        ("task", {"kind": "cognate", "data_order": "paper"}, "task.data_order"),
        ("optimizer", {"lr": -1e-3}, "optimizer.lr"),
        ("optimizer", {"lr": 0.0}, "optimizer.lr"),
        ("optimizer", {"kind": "sgd"}, "optimizer.kind"),
        ("optimizer", {"beta2": 1.0}, "optimizer.beta2"),
        ("optimizer", {"weight_decay": -0.1}, "optimizer.weight_decay"),
        ("optimizer", {"warmup_steps": -1}, "optimizer.warmup_steps"),
        ("grokfast", {"kind": "fft"}, "grokfast.kind"),
        ("grokfast", {"alpha": 1.5}, "grokfast.alpha"),
        ("grokfast", {"lamb": -1.0}, "grokfast.lamb"),
        ("grokfast", {"window": 0}, "grokfast.window"),
        ("task", {"kind": "chess"}, "task.kind"),
        ("task", {"modulus": 1}, "task.modulus"),
        ("task", {"train_fraction": 1.0}, "task.train_fraction"),
        ("task", {"kind": "cognate", "dataset": "/nonexistent/data.jsonl"}, "task.dataset"),
        ("task", {"kind": "cognate", "dataset": "data.csv"}, "task.dataset"),
        (None, {"batch_size": 0}, "batch_size"),
        (None, {"max_steps": 0}, "max_steps"),
        (None, {"eval_interval": 0}, "eval_interval"),
        (None, {"keep_checkpoints": 0}, "keep_checkpoints"),
        (None, {"seed": -1}, "seed"),
        (None, {"device": "tpu"}, "device"),
    ],
)
def test_bad_field_raises_spec_error_naming_it(section: str | None, changes: dict, field: str) -> None:
    with pytest.raises(SpecError) as info:
        _with(section, **changes).validate()
    assert field in info.value.fields
    assert info.value.field_path == field or field in info.value.fields


def test_several_violations_are_reported_together() -> None:
    spec = _with("model", heads=0).replace(batch_size=0)
    with pytest.raises(SpecError) as info:
        spec.validate()
    assert set(info.value.fields) == {"model.heads", "batch_size"}


def test_defaults_are_valid_and_round_trip_through_dict(tmp_path: Path) -> None:
    for kind in ("modular_arithmetic", "cognate"):
        spec = default_spec(kind).validate()
        assert TrainingSpec.from_dict(spec.to_dict()) == spec
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "hi"}\n')
    spec = TrainingSpec.from_dict({"task": {"kind": "cognate", "dataset": str(data)},
                                   "model": {"context_length": 8}})
    assert spec.validate().task.dataset == str(data)


def test_from_dict_rejects_unknown_fields_and_wrong_types() -> None:
    with pytest.raises(SpecError) as info:
        TrainingSpec.from_dict({"model": {"depth": 3, "width": "wide"}, "colour": 1})
    assert set(info.value.fields) == {"model.depth", "model.width", "colour"}


def test_auto_styles_resolve_per_task_kind() -> None:
    modular, cognate = default_spec("modular_arithmetic"), default_spec("cognate")
    assert modular.model.resolved_block_style(modular.task.kind) == "grokfast_paper"
    assert modular.task.resolved_data_order() == "paper"
    assert cognate.model.resolved_block_style(cognate.task.kind) == "pre_ln"
    assert cognate.task.resolved_data_order() == "seeded"
    explicit = replace(modular.model, block_style="pre_ln")
    assert explicit.resolved_block_style("modular_arithmetic") == "pre_ln"
