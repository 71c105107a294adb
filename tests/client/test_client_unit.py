"""The client's pieces that need no mesh: addresses, retry scope, request building, errors, types."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from agentforge.client import IDEMPOTENT_METHODS, Client, ClientConfig, InvalidArgumentError, NotFoundError
from agentforge.client._base import _keyed, _request, _Resume
from agentforge.client.errors import ApiError, DeadlineExceededError, UnavailableError, error_class, from_rpc_error
from agentforge.realtime.v1 import message_pb2, request_response_pb2 as realtime_rr
from agentforge.training.v1 import request_response_pb2 as training_rr
from agentforge.training.v1 import training_job_event_pb2

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("edge", "target", "tls"),
    [
        ("127.0.0.1:8080", "127.0.0.1:8080", False),
        ("http://localhost:9000/", "localhost:9000", False),
        ("grpc://host:1", "host:1", False),
        ("grpcs://edge.example", "edge.example:443", True),
        ("https://edge.example:8443", "edge.example:8443", True),
        ("[::1]:8080", "[::1]:8080", False),
        ("localhost", "localhost:8080", False),
    ],
)
def test_edge_addresses(edge: str, target: str, tls: bool) -> None:
    assert ClientConfig(edge=edge).target() == (target, tls)


def test_bad_edge_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="host:port"):
        ClientConfig(edge="http://host/path").target()


def test_environment_supplies_edge_and_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFORGE_EDGE", "10.0.0.1:9")
    monkeypatch.delenv("AGENTFORGE_TOKEN", raising=False)
    monkeypatch.setenv("AF_TOKEN", "tok-af")
    config = ClientConfig.resolve()
    assert config.edge == "10.0.0.1:9" and config.token == "tok-af"
    monkeypatch.setenv("AGENTFORGE_TOKEN", "tok-main")
    assert ClientConfig.resolve().token == "tok-main"
    assert ClientConfig.resolve("1.2.3.4:5", "explicit").token == "explicit"


def test_only_reads_and_request_id_keyed_calls_are_retried() -> None:
    names = {m.rpartition("/")[2] for m in IDEMPOTENT_METHODS}
    assert {"GetTrainingJob", "ListTrainingJobs", "WatchTrainingJob", "CreateTrainingJob", "StartPhaseRun",
            "Subscribe", "DownloadModelArtifact", "GetSystemHealth", "Publish"} <= names
    assert not names & {"CancelTrainingJob", "PauseTrainingJob", "DeleteTrainingJob", "AdjustTrainingJob",
                        "SetModelAlias", "AcknowledgeAlert", "UploadModelArtifact"}


def test_requests_from_fields_and_idempotency_keys() -> None:
    req = _request(training_rr.GetTrainingJobRequest, None, {"name": "trainingJobs/a"})
    assert req.name == "trainingJobs/a"
    with pytest.raises(TypeError, match="GetTrainingJobRequest"):
        _request(training_rr.GetTrainingJobRequest, None, {"nam": "x"})
    with pytest.raises(TypeError, match="not both"):
        _request(training_rr.GetTrainingJobRequest, req, {"name": "y"})
    with pytest.raises(TypeError, match="expected"):
        _request(training_rr.GetTrainingJobRequest, training_rr.CancelTrainingJobRequest(), {})
    create = training_rr.CreateTrainingJobRequest()
    keyed = _keyed(create)
    assert len(keyed.request_id) == 32 and create.request_id == ""  # the caller's message is untouched
    assert _keyed(keyed).request_id == keyed.request_id


def test_resume_state_drops_duplicates_by_cursor_and_sequence() -> None:
    state = _Resume("")
    ev = lambda seq, cursor: training_job_event_pb2.TrainingJobEvent(sequence=seq, cursor=cursor, epoch="e1")  # noqa: E731
    assert state.accept(ev(1, "c1")) and state.accept(ev(2, "c2"))
    assert not state.accept(ev(2, "c2")) and not state.accept(ev(1, "c1"))
    assert state.cursor == "c2"
    assert state.with_cursor(training_rr.WatchTrainingJobRequest(name="trainingJobs/a")).cursor == "c2"
    sub = _Resume("")
    msg = realtime_rr.SubscribeResponse(message=message_pb2.Message(topic="t", cursor="k1", sequence=1))
    assert sub.accept(msg) and not sub.accept(msg) and sub.cursor == "k1"


def test_watch_keepalives_are_never_handed_out_and_never_move_the_cursor() -> None:
    from types import SimpleNamespace

    from agentforge.client._base import SyncServiceBase
    from agentforge.client.retry import RetryPolicy
    from agentforge.common.v1 import common_pb2
    from agentforge.monitoring.v1 import alert_pb2
    from google.rpc import code_pb2

    Event = training_job_event_pb2.TrainingJobEvent
    beat = Event(heartbeat=common_pb2.StreamHeartbeat())
    beat.heartbeat.time.GetCurrentTime()
    ev = lambda seq: Event(sequence=seq, cursor=f"c{seq}", epoch="e1")  # noqa: E731
    dropped = _FakeError(grpc.StatusCode.UNAVAILABLE, "connection reset", None)
    # First call: a heartbeat, event 1, a heartbeat, then the connection drops; the
    # second (resumed after c1): a heartbeat, event 2, the OK end.
    calls = [[beat, ev(1), beat, dropped], [beat, ev(2), beat, Event(stream_end=status_pb2.Status(code=code_pb2.OK))]]
    requests: list[training_rr.WatchTrainingJobRequest] = []

    class _Call:
        def __init__(self, items: list[object]) -> None:
            self.items = items

        def __iter__(self):  # type: ignore[no-untyped-def]
            for item in self.items:
                if isinstance(item, Exception):
                    raise item
                yield item

        def cancel(self) -> None:
            pass

    def unary_stream(path: str, **_: object):  # type: ignore[no-untyped-def]
        def call(request, timeout=None, metadata=None):  # type: ignore[no-untyped-def]
            requests.append(request)
            return _Call(calls.pop(0))
        return call

    transport = SimpleNamespace(channel=SimpleNamespace(unary_stream=unary_stream), metadata=lambda md: md,
                                config=SimpleNamespace(retry=RetryPolicy(initial_backoff_s=0.001, max_backoff_s=0.001),
                                                       reconnect_timeout_s=5.0))
    service = SyncServiceBase(transport)  # type: ignore[arg-type]
    got = list(service._resumable_stream("WatchTrainingJob", training_rr.WatchTrainingJobRequest, Event, None,
                                         {"name": "trainingJobs/a"}, None, ()))
    assert [e.sequence for e in got] == [1, 2]
    assert [r.cursor for r in requests] == ["", "c1"]
    # Which messages are keepalives: the common StreamHeartbeat, on every watch stream.
    assert _Resume.is_heartbeat(beat) and not _Resume.is_heartbeat(ev(1))
    assert _Resume.is_heartbeat(alert_pb2.AlertEvent(heartbeat=common_pb2.StreamHeartbeat()))
    assert not _Resume.is_heartbeat(alert_pb2.AlertEvent(sequence=1))
    # Subscribe's own heartbeat carries a cursor and stays visible to callers.
    sub_beat = realtime_rr.SubscribeResponse(heartbeat=message_pb2.Heartbeat(cursor="k1"))
    assert not _Resume.is_heartbeat(sub_beat) and not _Resume.is_control(sub_beat)


class _FakeError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str, status: status_pb2.Status | None) -> None:
        self._code, self._details = code, details
        self._trailers = (("grpc-status-details-bin", status.SerializeToString()),) if status else ()

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailers


def _packed(msg: object) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)  # type: ignore[arg-type]
    return out


def test_errors_carry_reason_violations_and_retry_delay() -> None:
    bad = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="page_size", description="must be at most 1000")])
    info = error_details_pb2.ErrorInfo(reason="PAGE_TOO_BIG", domain="agentforge.dev", metadata={"max": "1000"})
    status = status_pb2.Status(code=3, message="invalid request", details=[_packed(info), _packed(bad)])
    err = from_rpc_error(_FakeError(grpc.StatusCode.INVALID_ARGUMENT, "x", status), "/s/M")
    assert isinstance(err, InvalidArgumentError) and err.reason == "PAGE_TOO_BIG"
    assert err.error_metadata == {"max": "1000"} and err.method == "/s/M"
    assert [(v.field, v.description) for v in err.field_violations] == [("page_size", "must be at most 1000")]
    assert "page_size: must be at most 1000" in str(err)
    assert json.loads(json.dumps(err.to_dict()))["fieldViolations"][0]["field"] == "page_size"
    plain = from_rpc_error(_FakeError(grpc.StatusCode.NOT_FOUND, "gone", None))
    assert isinstance(plain, NotFoundError) and plain.message == "gone" and plain.reason == ""
    assert issubclass(error_class(grpc.StatusCode.DEADLINE_EXCEEDED), UnavailableError)
    assert error_class(grpc.StatusCode.DEADLINE_EXCEEDED) is DeadlineExceededError
    assert error_class(grpc.StatusCode.INTERNAL) is ApiError


def test_unreachable_edge_raises_unavailable_fast() -> None:
    with Client("127.0.0.1:1", timeout_s=5) as client:
        with pytest.raises(UnavailableError) as exc:
            client.monitoring.get_system_health()
    assert exc.value.code is grpc.StatusCode.UNAVAILABLE


@pytest.mark.slow
def test_the_client_surface_type_checks(tmp_path: Path) -> None:
    """mypy sees the generated messages through the client: right types pass, wrong ones fail."""
    sample = tmp_path / "sample.py"
    sample.write_text(textwrap.dedent('''
        from agentforge.client import AsyncClient, Client

        def use(c: Client) -> int:
            job = c.training.get_training_job(name="trainingJobs/x")
            reveal_type(job)
            for event in c.training.watch_training_job(name=job.name):
                reveal_type(event)
            wrong: str = job.progress.step
            return job.state

        async def use_async(c: AsyncClient) -> None:
            reveal_type(await c.monitoring.get_system_health())
    '''))
    proc = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"), str(sample),
                           "agentforge"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert 'Revealed type is "agentforge.training.v1.training_job_pb2.TrainingJob"' in out, out
    assert 'Revealed type is "agentforge.training.v1.training_job_event_pb2.TrainingJobEvent"' in out, out
    assert 'Revealed type is "agentforge.monitoring.v1.health_pb2.SystemHealth"' in out, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 1 and "sample.py" in errors[0] and 'variable has type "str"' in errors[0], out
