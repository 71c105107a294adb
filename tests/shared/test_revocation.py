"""Per-token revocation (services/shared/revocation.py) on a real Valkey, and the auth
interceptor of a real server refusing a revoked ``jti`` — also on a stream already open.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import grpc.aio
import pytest

from agentforge.realtime.v1 import realtime_service_pb2_grpc
from agentforge.realtime.v1 import request_response_pb2 as rr
from services.shared import auth, revocation
from services.shared.config import ServerConfig
from services.shared.errors import Unavailable
from services.shared.revocation import RevocationList
from services.shared.server import Service, build_server
from services.shared.valkey import EmbeddedValkey
from tests.auth import anonymous_channel
from tests.support import error_details

from .test_authz import FakeRealtime


def _key() -> str:
    return f"t{uuid.uuid4().hex[:8]}:revoked"


async def test_a_revoked_jti_is_seen_by_every_list_reading_the_set(valkey: EmbeddedValkey) -> None:
    key = _key()
    writer = RevocationList(valkey.url, key=key, refresh_s=0.05)
    reader = RevocationList(valkey.url, key=key, refresh_s=0.05)
    try:
        await reader.start()
        assert reader.loaded and not reader.is_revoked("j1")
        kept = await writer.revoke("j1", time.time() + 60)
        assert writer.is_revoked("j1")  # this process at once
        async with asyncio.timeout(5):
            while not reader.is_revoked("j1"):
                await asyncio.sleep(0.02)
        # revoking again keeps the later expiry, never shortens it
        assert await writer.revoke("j1", time.time() + 10) == pytest.approx(kept)
        assert not reader.is_revoked("someone-else")
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_entries_live_as_long_as_their_token(valkey: EmbeddedValkey) -> None:
    key = _key()
    revocations = RevocationList(valkey.url, key=key, refresh_s=60)
    try:
        await revocations.revoke("expired-long-ago", time.time() - 3600)
        await revocations.revoke("live", time.time() + 3600)
        assert await revocations.refresh()
        assert not revocations.is_revoked("expired-long-ago")  # pruned: refused as expired anyway
        assert revocations.is_revoked("live")
        client = revocations._client
        assert await client.zrange(key, 0, -1) == ["live"]
        # without an expiry: the longest token life
        await revocations.revoke("no-exp")
        score = await client.zscore(key, "no-exp")
        assert score == pytest.approx(time.time() + revocation.DEFAULT_MAX_TTL_S, abs=60)
    finally:
        await revocations.aclose()


async def test_a_watch_fires_when_its_jti_is_revoked(valkey: EmbeddedValkey) -> None:
    key = _key()
    revocations = RevocationList(valkey.url, key=key, refresh_s=0.05)
    other = RevocationList(valkey.url, key=key)
    try:
        await revocations.start()
        with revocations.watch("s1") as s1, revocations.watch("s2") as s2:
            await other.revoke("s1", time.time() + 60)
            await asyncio.wait_for(s1.wait(), 5)
            assert not s2.is_set()
        assert revocations._watchers == {}
    finally:
        await revocations.aclose()
        await other.aclose()


async def test_valkey_away_keeps_the_last_list_and_refuses_new_revocations(
        valkey_factory: Callable[[], EmbeddedValkey]) -> None:
    server = valkey_factory()
    revocations = RevocationList(server.url, key=_key(), refresh_s=60)
    try:
        await revocations.revoke("before", time.time() + 60)
        assert await revocations.refresh()
        server.stop()
        assert not await revocations.refresh()  # fail open on the last list read...
        assert revocations.is_revoked("before")  # ...which is still enforced
        with pytest.raises(Unavailable):
            await revocations.revoke("during", time.time() + 60)  # not recorded: the caller is told
        assert not revocations.is_revoked("during")
    finally:
        await revocations.aclose()


# --- the interceptor -------------------------------------------------------------------


@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 valkey: EmbeddedValkey) -> AsyncIterator[Service]:
    monkeypatch.setenv("AF_AUDIT_LOG", str(tmp_path / "audit.jsonl"))
    monkeypatch.setenv("REDIS_URL", valkey.url)
    monkeypatch.setenv("AF_REVOCATION_REFRESH_S", "0.1")
    fake = FakeRealtime()
    service = await build_server(ServerConfig(host="127.0.0.1", grace_seconds=0.2, metrics_port=-1), "authz",
                                 fake.register)
    try:
        yield service
    finally:
        await service.shutdown(0.2)
    assert revocation.process_list() is None  # released with the server


def _md(jti: str) -> tuple[tuple[str, str], ...]:
    claims = {"sub": "rev", "role": "viewer", "exp": time.time() + 600, "jti": jti}
    return ((auth.MESH_IDENTITY_HEADER, auth.mesh_secret()), (auth.CLAIMS_HEADER, auth.encode_claims_header(claims)))


async def test_a_revoked_token_is_refused_and_its_open_stream_ends(served: Service, valkey: EmbeddedValkey) -> None:
    jti, bystander = uuid.uuid4().hex, uuid.uuid4().hex
    admin = RevocationList(valkey.url)
    async with anonymous_channel(f"127.0.0.1:{served.port}") as channel:
        stub = realtime_service_pb2_grpc.RealtimeServiceStub(channel)
        await stub.ListTopics(rr.ListTopicsRequest(), metadata=_md(jti), timeout=5)
        call = stub.Subscribe(rr.SubscribeRequest(topics=["a"]), metadata=_md(jti))
        other = stub.Subscribe(rr.SubscribeRequest(topics=["a"]), metadata=_md(bystander))
        beats, ends = 0, []
        with pytest.raises(grpc.aio.AioRpcError) as ended:
            async with asyncio.timeout(15):
                async for message in call:
                    if message.HasField("stream_end"):
                        ends.append(message.stream_end)
                        continue
                    beats += 1
                    if beats == 2:
                        await admin.revoke(jti, time.time() + 600)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert [e.code for e in ends] == [grpc.StatusCode.UNAUTHENTICATED.value[0]]
        info, _ = error_details(ends[0])
        assert info is not None and info.reason == "TOKEN_REVOKED"

        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.ListTopics(rr.ListTopicsRequest(), metadata=_md(jti), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info, _ = error_details(refused.value)
        assert info is not None and info.reason == "TOKEN_REVOKED"

        # another token's stream and calls go on
        async with asyncio.timeout(5):
            message = await other.read()
        assert not message.HasField("stream_end")
        other.cancel()
        await stub.ListTopics(rr.ListTopicsRequest(), metadata=_md(bystander), timeout=5)
    await admin.aclose()


@pytest.mark.parametrize("exp", ["99999999999999", "nan", "inf", "1e20"])
def test_make_revoke_refuses_an_exp_that_is_no_time_without_a_traceback(
        exp: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``make revoke JTI=abc EXP=99999999999999`` printed a ValueError traceback."""
    from services.shared.revocation import main

    assert main(["--jti", "abc", "--exp", exp, "--edge", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "EXP=" in err and "Traceback" not in err
