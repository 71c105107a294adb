"""make run's closing summary: every winner of the run, its judgement and where its weights are."""

from __future__ import annotations

from pathlib import Path

from agentforge.forge.v1 import phase_run_pb2 as pr
from agentforge.model.v1 import model_version_pb2 as mv
from services.launcher.summary import summary_lines


def _version(name: str, **metrics: float) -> mv.ModelVersion:
    v = mv.ModelVersion(name=name, aliases=["winner"], metrics=metrics)
    v.artifact.sha256 = "ab" * 32
    v.artifact.size_bytes = 1234
    return v


def test_pipeline_summary_names_each_winner_its_metrics_and_its_files() -> None:
    run = pr.PhaseRun(name="phaseRuns/r", phase="phases/pipeline")
    run.outputs.artifacts.update({"cognate.winner": "models/cognate/versions/3", "cognate.candidate_1": "x",
                                  "evomerge.winner": "models/evomerge/versions/1",
                                  "bitnet.winner": "models/bitnet/versions/2"})
    run.outputs.metrics.update({"cognate.candidate_1_val_loss": 2.5, "cognate.candidate_2_val_loss": 2.0})
    evo = _version("models/evomerge/versions/1", val_loss=1.9, best_parent_val_loss=2.0)
    evo.lineage.merge_method = "ties"
    evo.lineage.parent_versions.extend(["models/cognate/versions/1", "models/cognate/versions/2"])
    versions = {
        "models/cognate/versions/3": _version("models/cognate/versions/3", eval_loss=2.0),
        "models/evomerge/versions/1": evo,
        "models/bitnet/versions/2": _version("models/bitnet/versions/2", bits_per_weight=1.6, size_ratio=0.34,
                                             size_bytes=1000, val_loss=2.09, source_val_loss=1.9),
    }
    lines = summary_lines(run, versions.__getitem__, edge_url="http://127.0.0.1:8080", data_dir=Path("/d"))
    text = "\n".join(lines)
    assert lines[0] == "winners:"
    assert text.index("cognate") < text.index("evomerge") < text.index("models/bitnet")
    assert "val_loss 2.0000 (candidates: 2.5000, 2.0000)" in text
    assert "ties merge of 2 parents, held-out val_loss 1.9000 beats the best parent's 2.0000 (0.9500x)" in text
    assert "1.60 bits per ternary weight" in text and "(1.100x)" in text
    assert "/d/model/artifacts/bitnet/2/artifact" in text
    assert "download GET http://127.0.0.1:8080/v1/models/evomerge/versions/1:download" in text


def test_a_version_that_cannot_be_read_does_not_hide_the_rest() -> None:
    run = pr.PhaseRun(name="phaseRuns/r", phase="phases/cognate")
    run.outputs.artifacts["winner"] = "models/cognate/versions/1"

    def fail(name: str) -> mv.ModelVersion:
        raise RuntimeError("edge away")

    lines = summary_lines(run, fail, edge_url="http://e", data_dir=None)
    assert lines == ["winners:", "  cognate  models/cognate/versions/1  (could not read it: edge away)"]
