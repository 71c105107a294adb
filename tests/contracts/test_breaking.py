"""`buf breaking` catches a breaking edit to the contracts and lets an additive one pass."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / ".venv" / "bin" / "buf"
JOB = Path("proto/agentforge/training/v1/training_job.proto")
SERVICE = Path("proto/agentforge/training/v1/training_service.proto")


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(ROOT / "proto", ws / "proto")
    shutil.copy(ROOT / "buf.yaml", ws / "buf.yaml")
    subprocess.run([str(BUF), "build", "-o", str(tmp_path / "base.binpb")], cwd=ws, check=True)
    return ws


def _breaking(ws: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(ws.parent / "base.binpb")],
        cwd=ws,
        capture_output=True,
        text=True,
    )


def test_unchanged_contracts_pass(workspace):
    assert _breaking(workspace).returncode == 0


def test_removing_a_field_is_caught(workspace):
    path = workspace / JOB
    text = path.read_text()
    new, n = re.subn(r"\n  // Human-readable name.*?\];\n", "\n", text, count=1, flags=re.S)
    assert n == 1
    path.write_text(new)
    result = _breaking(workspace)
    assert result.returncode != 0
    assert "display_name" in result.stdout + result.stderr


def test_renaming_an_rpc_is_caught(workspace):
    path = workspace / SERVICE
    path.write_text(path.read_text().replace("rpc GetTrainingJob(", "rpc FetchTrainingJob(", 1))
    subprocess.run(
        ["sed", "-i", "s/message GetTrainingJobRequest/message FetchTrainingJobRequest/",
         str(workspace / "proto/agentforge/training/v1/request_response.proto")],
        check=True,
    )
    path.write_text(path.read_text().replace("(GetTrainingJobRequest)", "(FetchTrainingJobRequest)"))
    result = _breaking(workspace)
    assert result.returncode != 0
    assert "GetTrainingJob" in result.stdout + result.stderr


def test_adding_a_field_passes(workspace):
    path = workspace / JOB
    text = path.read_text()
    # the next free number of TrainingJob, whatever fields it has gained since
    body = text[text.index("message TrainingJob {"):]
    body = body[:body.index("\n}\n")]
    free = max(int(n) for n in re.findall(r"= (\d+)[ ;\[]", body)) + 1
    text = text.replace(
        '  string request_id = 18 [(google.api.field_behavior) = OUTPUT_ONLY];\n',
        '  string request_id = 18 [(google.api.field_behavior) = OUTPUT_ONLY];\n'
        f'  // Added later.\n  string note = {free} [(google.api.field_behavior) = OUTPUT_ONLY];\n',
    )
    assert f"note = {free}" in text
    path.write_text(text)
    assert _breaking(workspace).returncode == 0
