"""`forge` commands that need no running mesh: token, up (it starts one), usage errors."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFORGE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")])
    return env


def forge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "agentforge.cli", *args], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr and not CONTROL.search(proc.stdout + proc.stderr)
    return proc


def test_token_prints_a_signed_token_for_the_role() -> None:
    proc = forge("token", "--role", "trainer", "--sub", "alice", "--ttl", "60")
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert proc.stdout == token + "\n"  # nothing but the token on stdout
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["role"] == "trainer" and claims["sub"] == "alice" and claims["exp"] - claims["iat"] == 60
    bad = forge("token", "--role", "king")
    assert bad.returncode == 2 and "unknown role" in bad.stderr


def test_usage_errors_are_exit_2() -> None:
    assert forge("no-such-command").returncode == 2
    assert forge("jobs", "get").returncode == 2  # missing argument
    assert forge("--timeout", "-1", "health").returncode == 2


@pytest.mark.slow
@pytest.mark.e2e
def test_forge_up_runs_the_mesh_until_interrupted(tmp_path: Path) -> None:
    """`forge up` is the launcher: a (partial) mesh comes up, Ctrl-C stops it, exit 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentforge.cli", "up", "--edge-port", "0", "--services", "realtime",
         "--run-dir", str(tmp_path / "run"), "--data-dir", str(tmp_path / "data")],
        env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("mesh is up"):
                break
            assert time.monotonic() < deadline, "".join(lines[-20:])
        else:
            pytest.fail("forge up exited before the mesh was up:\n" + "".join(lines[-30:]))
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + rest
    assert "stopped" in rest


def test_exit_codes_follow_the_documented_table() -> None:
    import grpc

    from agentforge.cli.main import CommandFailed, UsageFailure, exit_code
    from agentforge.client.errors import error_class

    def code_of(status: grpc.StatusCode) -> int:
        return exit_code(error_class(status)(status, "x"))

    assert code_of(grpc.StatusCode.INVALID_ARGUMENT) == code_of(grpc.StatusCode.OUT_OF_RANGE) == 2
    assert exit_code(UsageFailure("x")) == 2
    for status in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED):
        assert code_of(status) == 3, status
    for status in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
        assert code_of(status) == 4, status
    for status in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL, grpc.StatusCode.ALREADY_EXISTS):
        assert code_of(status) == 1, status
    assert exit_code(CommandFailed("job failed")) == 1


def test_trace_lists_traces_and_prints_one_as_a_tree(tmp_path: Path) -> None:
    """`forge trace` reads the OTLP/JSON files the SDK's file exporter writes."""
    from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import SpanKind

    for service, child in (("forge", "saga cognate"), ("training", "send training.jobs.normal")):
        provider = TracerProvider(resource=Resource.create({"service.name": service}))
        provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(tmp_path / f"{service}.jsonl")))
        tracer = provider.get_tracer("t")
        with tracer.start_as_current_span(f"{service}.v1.S/Call", kind=SpanKind.SERVER) as root:
            with tracer.start_as_current_span(child):
                pass
        provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"  # the training one

    listed = forge("trace", "--dir", str(tmp_path), "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["traceId"] for r in rows][0] == trace_id and len(rows) == 2  # newest first
    tree = forge("trace", "--dir", str(tmp_path), trace_id[:12])
    assert tree.returncode == 0, tree.stderr
    lines = tree.stdout.splitlines()
    assert lines[0].startswith(f"trace {trace_id}  2 spans")
    assert lines[1].startswith("[training] training.v1.S/Call  server")
    assert lines[2].startswith("└─ [training] send training.jobs.normal  internal")
    missing = forge("trace", "--dir", str(tmp_path), "0123456789abcdef")
    assert missing.returncode == 4 and "no trace 0123456789abcdef" in missing.stderr
    assert forge("trace", "--dir", str(tmp_path), "xyz").returncode == 2
    assert forge("trace", "--dir", str(tmp_path / "nowhere")).returncode == 4
