"""Memory per open stream at the edge, and what a client that stops reading costs.

One run, through the public API of a real mesh (the launcher: embedded Valkey, the real
realtime service, Envoy from the template, with the streaming idle timeout shortened to
``--idle`` seconds so the run ends):

1. **baseline**: nothing open; Envoy's heap (admin ``/memory``: ``allocated``), Envoy's
   and realtime's RSS.
2. **reading**: ``--streams`` REST ``Subscribe`` streams (one HTTP/1.1 connection each,
   NDJSON) on one topic, every client reading, while ``--rate`` messages/s of
   ``--size`` bytes are published through the edge for ``--seconds``.
3. **not reading**: the readers hang up; as many new clients subscribe and never read
   (small socket receive buffer) while ``--stall-size`` byte messages are published.
   Their buffers fill (the kernel's socket buffers first, then Envoy's 1 MiB per
   connection), flow control stops each stream, and it ends: by the service's
   slow-consumer policy, or by Envoy's idle timeout; peak memory while they are stalled,
   how many Envoy cut (``downstream_rq_idle_timeout``), and when all had ended.
4. **after**: every client gone; memory against the baseline.

Per-stream figures are (phase − baseline) / streams. Envoy keeps freed memory in its
allocator, so RSS does not fall back; ``allocated`` does.

Run::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/edge_stream_memory.py --streams 300 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "gen" / "python"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import httpx  # noqa: E402
import psutil  # noqa: E402

from services.launcher.envoy_config import EdgeLimits  # noqa: E402
from benchmarks._auth import bearer_headers  # noqa: E402
from services.launcher.mesh import Mesh, MeshConfig  # noqa: E402

TOPIC = "bench/edge-memory"
MIB = 1024 * 1024


def _admin_json(mesh: Mesh, path: str) -> Any:
    with urllib.request.urlopen(f"{mesh.admin_url}{path}", timeout=5) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _stat(mesh: Mesh, name: str) -> int:
    with urllib.request.urlopen(f"{mesh.admin_url}/stats?filter={name}", timeout=5) as resp:  # noqa: S310
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key.endswith(name) and value.strip().isdigit():
                return int(value)
    return 0


def measure(mesh: Mesh) -> dict[str, float]:
    memory = _admin_json(mesh, "/memory")
    return {
        "envoy_allocated_mib": int(memory["allocated"]) / MIB,
        "envoy_rss_mib": psutil.Process(mesh.process("envoy").pid).memory_info().rss / MIB,
        "realtime_rss_mib": psutil.Process(mesh.process("realtime").pid).memory_info().rss / MIB,
        "active_streams": _stat(mesh, "http.edge.downstream_rq_active"),
    }


def _request(headers: dict[str, str]) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"GET /v1/topics:subscribe?topics={TOPIC}&heartbeatInterval=5s HTTP/1.1\r\n"
            f"Host: edge\r\n{extra}\r\n").encode()


async def _reader(port: int, request: bytes, stop: asyncio.Event, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    try:
        while not stop.is_set():
            line = await reader.readline()  # chunk sizes and NDJSON lines, one per line
            if not line:
                return
            if line.startswith(b'{"message"'):
                counts[0] += 1
            elif line.startswith((b'{"historyLost"', b'{"streamEnd"')):
                counts[1] += 1
    finally:
        writer.close()


async def _publisher(client: httpx.AsyncClient, rate: float, size: int, stop: asyncio.Event) -> int:
    sent = 0
    payload = {"blob": "x" * size}
    next_at = time.monotonic()
    while not stop.is_set():
        resp = await client.post(f"/v1/topics/{TOPIC}:publish", json={"data": payload})
        resp.raise_for_status()
        sent += 1
        next_at += 1 / rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


def _stalled_client(port: int, request: bytes) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(request)
    return sock


async def run(args: argparse.Namespace) -> dict[str, Any]:
    headers = bearer_headers("admin", "bench-edge-memory")
    limits = EdgeLimits(streaming_idle_timeout_s=args.idle)
    with tempfile.TemporaryDirectory(prefix="bench-edge-mem-") as tmp, Mesh(MeshConfig(
        services=("realtime",), edge_limits=limits, data_dir=Path(tmp) / "data", run_dir=Path(tmp) / "run",
        # One token subject opens every stream: lift the edge's per-subject rate limits.
        env={f"EDGE_RATE_LIMIT_{c}": "1000000/1000000" for c in ("READ", "WRITE", "STREAM")},
    )) as mesh:
        port = mesh.edge_port
        request = _request(headers)
        async with httpx.AsyncClient(base_url=mesh.edge_url, headers=headers, timeout=30) as client:
            (await client.post(f"/v1/topics/{TOPIC}:publish", json={"data": {"warmup": True}})).raise_for_status()
            await asyncio.sleep(2)
            baseline = measure(mesh)

            # 2. readers
            stop = asyncio.Event()
            counts = [0, 0]  # messages, gap notices or stream ends
            readers = [asyncio.create_task(_reader(port, request, stop, counts)) for _ in range(args.streams)]
            await asyncio.sleep(2)
            pub_stop = asyncio.Event()
            publisher = asyncio.create_task(_publisher(client, args.rate, args.size, pub_stop))
            await asyncio.sleep(args.seconds)
            reading = measure(mesh)
            pub_stop.set()
            published = await publisher
            await asyncio.sleep(2)  # what is in flight arrives
            stop.set()
            early = sum(task.done() for task in readers)  # ended before we hung up
            failures = [repr(t.exception())[:120] for t in readers if t.done() and t.exception() is not None]
            for task in readers:
                task.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
            received_per_stream = counts[0] / args.streams
            reader_gaps = counts[1]
            await asyncio.sleep(2)

            # 3. clients that never read
            before_cut = _stat(mesh, "http.edge.downstream_rq_idle_timeout")
            stalled = [_stalled_client(port, request) for _ in range(args.streams)]
            start = time.monotonic()
            pub_stop = asyncio.Event()
            publisher = asyncio.create_task(_publisher(client, args.rate, args.stall_size, pub_stop))
            peak = measure(mesh)
            cut_at: float | None = None
            deadline = start + args.idle + 180
            while time.monotonic() < deadline:
                await asyncio.sleep(1)
                now = measure(mesh)
                if now["envoy_allocated_mib"] > peak["envoy_allocated_mib"]:
                    peak = now
                if now["active_streams"] == 0:  # every stalled stream has ended
                    cut_at = time.monotonic() - start
                    break
            pub_stop.set()
            await publisher
            cut = _stat(mesh, "http.edge.downstream_rq_idle_timeout") - before_cut
            for sock in stalled:
                sock.close()
            await asyncio.sleep(3)
            after = measure(mesh)

    def per_stream(phase: dict[str, float], key: str) -> float:
        return (phase[key] - baseline[key]) * 1024 / args.streams  # KiB

    return {
        "streams": args.streams, "rate": args.rate, "size": args.size, "stall_size": args.stall_size,
        "idle_timeout_s": args.idle,
        "published": published, "received_per_stream": received_per_stream, "reader_gaps": reader_gaps,
        "readers_ended_early": early, "reader_failures": sorted(set(failures)),
        "baseline": baseline, "reading": reading, "not_reading_peak": peak, "after": after,
        "kib_per_stream": {
            "reading": {k: per_stream(reading, k) for k in ("envoy_allocated_mib", "realtime_rss_mib")},
            "not_reading": {k: per_stream(peak, k) for k in ("envoy_allocated_mib", "realtime_rss_mib")},
        },
        "not_reading_cut_by_envoy": cut, "all_cut_after_s": cut_at,
    }


def _print(result: dict[str, Any]) -> None:
    n = result["streams"]
    print(f"{n} REST Subscribe streams, {result['rate']:g} msg/s of {result['size']} B "
          f"({result['stall_size']} B while not reading), streaming idle timeout {result['idle_timeout_s']:g} s")
    print(f"{'phase':<24}{'envoy heap MiB':>16}{'envoy RSS MiB':>15}{'realtime RSS MiB':>18}{'open streams':>14}")
    for phase in ("baseline", "reading", "not_reading_peak", "after"):
        row = result[phase]
        print(f"{phase:<24}{row['envoy_allocated_mib']:>16.1f}{row['envoy_rss_mib']:>15.1f}"
              f"{row['realtime_rss_mib']:>18.1f}{row['active_streams']:>14}")
    for phase, row in result["kib_per_stream"].items():
        print(f"per stream, {phase:<12} envoy heap {row['envoy_allocated_mib']:8.1f} KiB   "
              f"realtime RSS {row['realtime_rss_mib']:8.1f} KiB")
    base, after = result["baseline"]["envoy_allocated_mib"], result["after"]["envoy_allocated_mib"]
    print(f"readers got {result['received_per_stream']:.1f} of {result['published']} messages each on average "
          f"({result['reader_gaps']} gap notices or stream ends among them); "
          f"{result['readers_ended_early']} reader streams ended early {result['reader_failures']}")
    ended = result["all_cut_after_s"]
    print(f"not reading: all {n} ended after {ended:.0f} s" if ended is not None else
          f"not reading: NOT all {n} ended in time")
    print(f"  {result['not_reading_cut_by_envoy']} by Envoy's streaming idle timeout, the rest by the service "
          f"(slow consumer)")
    print(f"envoy heap after all clients left: {after:.1f} MiB = {after / base:.2f}x baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0, help="reading phase length")
    parser.add_argument("--rate", type=float, default=50.0, help="messages published per second")
    parser.add_argument("--size", type=int, default=1024, help="bytes per message")
    parser.add_argument("--stall-size", type=int, default=262144,
                        help="bytes per message while clients do not read (fills their buffers sooner)")
    parser.add_argument("--idle", type=float, default=10.0, help="Envoy's streaming idle timeout for the run")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
