"""Per-token revocation through the real edge (issue 9): an admin revokes a token by its
``jti`` (``POST /v1/revokedTokens`` = ``MonitoringService.RevokeToken``, or ``make
revoke``); every service refuses it (401 / UNAUTHENTICATED ``TOKEN_REVOKED``) within
about a second, and a stream already open with it ends UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest

from agentforge.training.v1 import request_response_pb2 as training_rr
from agentforge.training.v1 import training_service_pb2_grpc
from services.launcher.mesh import Mesh
from services.shared import auth, revocation
from tests.support import error_details

from .conftest import tiny_job

pytestmark = pytest.mark.e2e


def _token(role: str = "trainer") -> tuple[str, str, dict[str, str]]:
    jwt_token = auth.mint_token(role, subject=f"rev-{uuid.uuid4().hex[:6]}", ttl_s=900)
    claims = auth.decode_claims_header(jwt_token.split(".")[1])
    return jwt_token, claims["jti"], {"authorization": f"Bearer {jwt_token}"}


def _reason(resp: httpx.Response) -> str:
    return next(d["reason"] for d in resp.json()["details"] if d["@type"].endswith("ErrorInfo"))


def _refused_everywhere(rest: httpx.Client, headers: dict[str, str], timeout: float = 10.0) -> None:
    """Every service answers 401 TOKEN_REVOKED (each reads the list on its own)."""
    paths = ["/v1/trainingJobs", "/v1/models", "/v1/topics", "/v1/systemHealth", "/v1/phaseRuns"]
    deadline = time.monotonic() + timeout
    for path in paths:
        while True:
            resp = rest.get(path, headers=headers)
            if resp.status_code == 401:
                assert _reason(resp) == "TOKEN_REVOKED", resp.text
                break
            assert resp.status_code == 200, resp.text
            assert time.monotonic() < deadline, f"{path} still accepts the revoked token"
            time.sleep(0.1)


def test_only_admins_may_revoke(rest: httpx.Client) -> None:
    _, jti, _ = _token()
    for role in ("viewer", "trainer", "operator"):
        _, _, as_role = _token(role)
        resp = rest.post("/v1/revokedTokens", json={"jti": jti}, headers=as_role)
        assert resp.status_code == 403 and _reason(resp) == "ROLE_REQUIRED", resp.text
    bad = rest.post("/v1/revokedTokens", json={"jti": "not a jti!"})
    assert bad.status_code == 400, bad.text


async def test_a_revoked_token_is_refused_everywhere_and_its_stream_ends(rest: httpx.Client, mesh: Mesh) -> None:
    jwt_token, jti, headers = _token()
    other_token, _, other_headers = _token()
    created = rest.post("/v1/trainingJobs", json=tiny_job(maxSteps="100000"), headers=headers)
    assert created.status_code == 200, created.text
    name = created.json()["name"]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{mesh.edge_port}") as channel:
            stub = training_service_pb2_grpc.TrainingServiceStub(channel)
            call = stub.WatchTrainingJob(training_rr.WatchTrainingJobRequest(name=name),
                                         metadata=(("authorization", f"Bearer {jwt_token}"),))
            first = await call.read()
            assert first.sequence == 1
            exp = auth.decode_claims_header(jwt_token.split(".")[1])["exp"]
            body: dict[str, Any] = {"jti": jti, "expireTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)),
                                    "reason": "test"}
            revoked = rest.post("/v1/revokedTokens", json=body)
            assert revoked.status_code == 200, revoked.text
            assert revoked.json()["jti"] == jti and revoked.json()["revokedBy"].startswith("test-admin")
            audit = [json.loads(line) for line in
                     (Path(mesh.data_dir) / "audit" / "monitoring.jsonl").read_text().splitlines()]
            assert any(r["method"].endswith("/RevokeToken") and r["resource"] == jti and r["outcome"] == "OK"
                       for r in audit), audit[-3:]

            ends = []
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    message = await asyncio.wait_for(call.read(), 30)
                    if message is grpc.aio.EOF:
                        break
                    if message.HasField("stream_end"):
                        ends.append(message.stream_end)
            assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED, ended.value
            info, _ = error_details(ended.value)
            assert info is not None and info.reason == "TOKEN_REVOKED"
            assert [e.code for e in ends] == [grpc.StatusCode.UNAUTHENTICATED.value[0]]

        _refused_everywhere(rest, headers)
        assert rest.get(f"/v1/{name}", headers=other_headers).status_code == 200  # others unaffected
    finally:
        rest.post(f"/v1/{name}:cancel", json={})


def test_make_revoke_revokes_a_token_given_whole(rest: httpx.Client, mesh: Mesh,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    jwt_token, jti, headers = _token("viewer")
    assert rest.get("/v1/trainingJobs", headers=headers).status_code == 200
    assert revocation.main(["--token", jwt_token, "--edge", mesh.edge_url]) == 0
    assert jti in capsys.readouterr().out
    _refused_everywhere(rest, headers)
    assert revocation.main(["--edge", mesh.edge_url]) == 2  # nothing named
