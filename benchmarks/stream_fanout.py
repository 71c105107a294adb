"""Thousands of server streams through the edge: realtime ``Subscribe`` (and training watches).

One run starts, on 127.0.0.1 only: an embedded Valkey, the realtime service
(``python -m services.realtime``), optionally the training service with its workers
(``--watch-streams``), and Envoy rendered from envoy/envoy.yaml.tmpl. Then, per scenario
``TOPICS:RATE`` (``--scenario``, repeatable):

1. opens ``--streams`` gRPC ``Subscribe`` streams through Envoy (grpc.aio, spread over
   channels of ``--per-channel`` streams each: one HTTP/2 connection per channel) and
   ``--web-streams`` grpc-web streams (HTTP/1.1, one connection each), spread evenly
   over TOPICS topics;
2. publishes RATE messages per second in total (round robin over the topics) through
   Envoy for ``--seconds``, then waits ``--drain`` seconds;
3. reports: streams that received every message published on their topic (goal: all),
   delivery lag from publish (``publish_time`` set by the service) to receipt, p50/p99,
   stream errors, Redis connections in use (``INFO clients``), the realtime process's RSS
   per 1,000 open streams, and its RSS after every client cancelled (vs. before).

The floor, measured in the same run on the same Valkey: the bus's own XADD → XREAD BLOCK
latency (``EventBus.publish`` to a blocked reader), ``--floor-samples`` times. Ratios
are lag / floor.

``--watch-streams N --jobs J`` adds a training part: J jobs are created and N
``WatchTrainingJob`` streams (evenly over the jobs) follow them through Envoy until the
jobs end; reported the same way (complete = every event of the job, in order).

The client is one asyncio process sharing the machine's cores with everything else,
so on a small box it is itself a bottleneck; the figures measure the whole box.

Run (``make bench`` uses modest sizes, see run_all.py)::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/stream_fanout.py \\
        --streams 5000 --web-streams 500 --scenario 1:2 --scenario 100:50 --seconds 60
"""

from __future__ import annotations

import argparse
from collections import Counter
import asyncio
import contextlib
import gc
import json
import math
import os
import platform
import signal
import struct
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
for _p in (str(ROOT / "gen" / "python"), str(ROOT), str(BENCH_DIR)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grpc  # noqa: E402
import grpc.aio  # noqa: E402
import httpx  # noqa: E402
import psutil  # noqa: E402
from google.protobuf import struct_pb2  # noqa: E402

from agentforge.realtime.v1 import realtime_service_pb2_grpc  # noqa: E402
from agentforge.realtime.v1 import request_response_pb2 as rr  # noqa: E402
from benchmarks._auth import bearer_metadata  # noqa: E402
from edge_unary import Children, _free_port, _http_get, _read_ready_port  # noqa: E402

__all__ = ["ScenarioResult", "main", "run"]

STARTUP_TIMEOUT_S = 60.0
SUBSCRIBE_PATH = "/agentforge.realtime.v1.RealtimeService/Subscribe"


# ------------------------------------------------------------------ the processes
def _auth_metadata(subject: str = "bench") -> tuple[tuple[str, str], ...]:
    """Credentials for ``subject``. Streams are spread over several subjects, as many users
    would be (the edge rate-limits per subject)."""
    return bearer_metadata("admin", subject)


def _user_metadata(count: int, per_user: int = 20) -> list[tuple[tuple[str, str], ...]]:
    """Metadata for ``count`` streams, one simulated user per ``per_user`` streams."""
    users = [_auth_metadata(f"bench-user-{u}") for u in range(math.ceil(count / per_user))]
    return [users[i // per_user] for i in range(count)]


def start_envoy(children: Children, upstreams: dict[str, int], realtime_ports: Sequence[int] = ()) -> tuple[int, int]:
    """Envoy with realtime (and training, when started) at their ports; the other
    clusters point at the realtime port (nothing here calls them). ``realtime_ports``:
    every realtime process (the cluster lists them all, as the launcher renders it)."""
    from services.launcher.envoy_config import (
        RATE_LIMITS,
        SERVICES,
        RateLimit,
        default_descriptor_path,
        render_envoy_config,
    )
    from services.launcher.mesh import envoy_argv, find_envoy, unhealthy_upstreams

    edge_port, admin_port = _free_port(), _free_port()
    fallback = upstreams["realtime"]
    rendered: dict[str, object] = {name: ("127.0.0.1", upstreams.get(name, fallback)) for name in SERVICES}
    if realtime_ports:
        rendered["realtime"] = [("127.0.0.1", port) for port in realtime_ports]
    health = {**upstreams, **{f"realtime#{i}": port for i, port in enumerate(realtime_ports)}}
    config = render_envoy_config(
        listen_port=edge_port,
        admin_port=admin_port,
        upstreams=rendered,  # type: ignore[arg-type]
        descriptor_path=default_descriptor_path(),
        # One token subject opens every stream: the per-subject limits would meter the
        # benchmark's client, not the mesh.
        rate_limits={name: RateLimit(1e6, 1_000_000) for name in RATE_LIMITS},
    )
    config_path = children.workdir / "envoy.yaml"
    config_path.write_text(config)
    child = children.spawn("envoy", envoy_argv(find_envoy(), config_path, "warning"), ready_line=False)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        if child.proc.poll() is not None:
            raise RuntimeError(f"envoy exited ({child.proc.returncode}):\n{child.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"envoy not ready:\n{child.log_tail()}")
        status, body = _http_get(f"http://127.0.0.1:{admin_port}/ready")
        if status == 200 and body.strip() == "LIVE":
            _, clusters = _http_get(f"http://127.0.0.1:{admin_port}/clusters")
            if not unhealthy_upstreams(clusters, health):
                return edge_port, admin_port
        time.sleep(0.1)


@dataclass
class Mesh:
    children: Children
    redis_url: str
    edge_port: int
    pids: dict[str, int]
    realtime_config: dict[str, int]
    #: Every realtime process (``pids["realtime"]`` is the first).
    realtime_pids: list[int] = field(default_factory=list)


def start_mesh(children: Children, redis_url: str, *, training: bool, realtime_processes: int = 1) -> Mesh:
    workdir = children.workdir
    os.environ["REDIS_URL"] = redis_url
    os.environ.setdefault("AF_DATA_DIR", str(workdir / "data"))
    for name in ("REALTIME", "TRAINING"):
        os.environ[f"AF_{name}_METRICS_PORT"] = "-1"
        os.environ[f"AF_{name}_LOG_LEVEL"] = "WARNING"
    os.environ["AF_REALTIME_BRIDGE_ROUTES"] = ""
    os.environ["AF_REALTIME_PORT"] = "0"  # each process a free port (read from its ready line)
    rts = [children.spawn("realtime" if i == 0 else f"realtime-{i + 1}", [sys.executable, "-m", "services.realtime"],
                          ready_line=True) for i in range(realtime_processes)]
    realtime_ports = [_read_ready_port(rt) for rt in rts]
    upstreams = {"realtime": realtime_ports[0]}
    pids = {"realtime": rts[0].proc.pid}
    if training:
        os.environ.setdefault("AF_TRAINING_WORKERS", "2")
        tr = children.spawn("training", [sys.executable, "-m", "services.training"], ready_line=True)
        upstreams["training"] = _read_ready_port(tr)
        pids["training"] = tr.proc.pid
    edge_port, _admin = start_envoy(children, upstreams, realtime_ports)
    pids["envoy"] = children.started[-1].proc.pid
    from services.realtime.config import RealtimeConfig
    from services.shared.bus import BusConfig

    rc = RealtimeConfig.from_env()
    bound = {"fanout_readers": rc.fanout_readers, "watch_connections": rc.watch_connections,
             "bus_max_connections": BusConfig.from_env().max_connections}
    return Mesh(children, redis_url, edge_port, pids, bound, [rt.proc.pid for rt in rts])


# ------------------------------------------------------------------ measurements
def rss_mib(pid: int | Sequence[int]) -> float:
    """RSS of a process, or the sum over several (MiB)."""
    try:
        if isinstance(pid, int):
            return psutil.Process(pid).memory_info().rss / 2**20
        return sum(psutil.Process(p).memory_info().rss for p in pid) / 2**20
    except psutil.Error:
        return float("nan")


def cpu_s(pid: int) -> float:
    try:
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except psutil.Error:
        return float("nan")


async def redis_clients(url: str) -> int:
    from redis.asyncio import Redis

    async with Redis.from_url(url) as probe:
        return int((await probe.info("clients"))["connected_clients"]) - 1  # not the probe


def percentile(samples: Sequence[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def bus_floor(url: str, samples: int) -> list[float]:
    """XADD → XREAD BLOCK latency of the bus itself (ms), one publish at a time."""
    from services.shared.bus import BusConfig, EventBus

    config = BusConfig(url=url)
    stream = f"bench:floor:{os.getpid()}"
    lags: list[float] = []
    async with EventBus(config) as publisher, EventBus(config) as reader:
        last = "$"
        for i in range(samples):
            read = asyncio.ensure_future(reader.blocking_client.xread({stream: last}, count=1, block=2000))
            await asyncio.sleep(0.002)  # the read is blocked before the publish
            t0 = time.perf_counter()
            await publisher.publish(stream, struct_pb2.Value(number_value=i), subject="floor")
            reply = await read
            lags.append((time.perf_counter() - t0) * 1000)
            last = reply[0][1][-1][0].decode()
        await publisher.client.delete(stream, f"{stream}:epoch", f"{stream}:seq")
    return lags


# ------------------------------------------------------------------ clients
@dataclass
class StreamRec:
    topic: str
    kind: str
    seqs: list[int] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)
    error: str = ""
    ready: asyncio.Event = field(default_factory=asyncio.Event)


def _on_message(rec: StreamRec, message: object) -> None:
    msg = message  # agentforge.realtime.v1.Message
    rec.seqs.append(msg.sequence)  # type: ignore[attr-defined]
    sent = msg.publish_time.ToNanoseconds() / 1e6  # type: ignore[attr-defined]
    rec.lags_ms.append(time.time() * 1000 - sent)


async def grpc_stream(stub: realtime_service_pb2_grpc.RealtimeServiceStub, rec: StreamRec,
                      metadata: tuple[tuple[str, str], ...]) -> None:
    call = stub.Subscribe(rr.SubscribeRequest(topics=[rec.topic]), metadata=metadata)
    try:
        async for item in call:
            kind = item.WhichOneof("kind")
            if kind == "message":
                _on_message(rec, item.message)
            elif kind == "heartbeat":
                rec.ready.set()
            elif kind == "stream_end" and item.stream_end.code:
                rec.error = f"stream_end {item.stream_end.code} {item.stream_end.message}"
    except asyncio.CancelledError:
        call.cancel()
        raise
    except grpc.aio.AioRpcError as exc:
        rec.error = f"{exc.code().name}: {exc.details()}"
    rec.ready.set()


def _web_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    frames = []
    while len(buffer) >= 5:
        flag, length = buffer[0], struct.unpack(">I", bytes(buffer[1:5]))[0]
        if len(buffer) < 5 + length:
            break
        frames.append((flag, bytes(buffer[5:5 + length])))
        del buffer[:5 + length]
    return frames


async def web_stream(client: httpx.AsyncClient, url: str, rec: StreamRec,
                     metadata: tuple[tuple[str, str], ...]) -> None:
    body = rr.SubscribeRequest(topics=[rec.topic]).SerializeToString()
    frame = b"\x00" + struct.pack(">I", len(body)) + body
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **dict(metadata)}
    try:
        async with client.stream("POST", url + SUBSCRIBE_PATH, content=frame, headers=headers) as response:
            status = response.headers.get("grpc-status")
            if response.status_code != 200 or status not in (None, "0"):  # trailers-only error
                rec.error = f"HTTP {response.status_code} grpc-status {status} {response.headers.get('grpc-message', '')}"
                return
            buffer = bytearray()
            async for chunk in response.aiter_raw():
                buffer += chunk
                for flag, payload in _web_frames(buffer):
                    if flag & 0x80:
                        trailers = payload.decode(errors="replace")
                        if "grpc-status:0" not in trailers.replace(" ", ""):
                            rec.error = rec.error or trailers.strip()
                        continue
                    item = rr.SubscribeResponse.FromString(payload)
                    kind = item.WhichOneof("kind")
                    if kind == "message":
                        _on_message(rec, item.message)
                    elif kind == "heartbeat":
                        rec.ready.set()
    except httpx.HTTPError as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    finally:
        rec.ready.set()


@dataclass
class ScenarioResult:
    scenario: str
    streams: int
    web_streams: int
    topics: int
    rate_per_s: float
    seconds: float
    published: int
    deliveries_expected: int
    complete_streams: int
    errors: int
    lag_p50_ms: float
    lag_p99_ms: float
    lag_max_ms: float
    floor_p50_ms: float
    floor_p99_ms: float
    lag_p50_ratio: float
    lag_p99_ratio: float
    redis_clients: int
    redis_clients_bound: int
    rss_cold_mib: float
    rss_baseline_mib: float
    rss_open_mib: float
    rss_per_1000_mib: float
    rss_after_cancel_mib: float
    rss_after_cancel_vs_baseline: float
    envoy_rss_open_mib: float
    subscribe_seconds: float
    first_error: str = ""
    realtime_processes: int = 1
    #: CPU seconds each realtime process used while the messages were published.
    realtime_cpu_s: list[float] = field(default_factory=list)


async def _open_and_cancel(target: str, names: list[str], streams: int, web_streams: int, per_channel: int,
                           metadata: tuple[tuple[str, str], ...], pid: int) -> float:
    """Open the streams, note the service's RSS, cancel them; the RSS while open (MiB)."""
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, math.ceil(streams / per_channel)))]
    stubs = [realtime_service_pb2_grpc.RealtimeServiceStub(ch) for ch in channels]
    recs = [StreamRec(names[i % len(names)], "grpc") for i in range(streams)]
    web_recs = [StreamRec(names[i % len(names)], "grpc-web") for i in range(web_streams)]
    async with httpx.AsyncClient(http1=True, http2=False, timeout=httpx.Timeout(None, connect=30),
                                 limits=httpx.Limits(max_connections=web_streams + 1)) as web:
        grpc_md, web_md = _user_metadata(streams), _user_metadata(web_streams)
        tasks = [asyncio.create_task(grpc_stream(stubs[i // per_channel], r, grpc_md[i])) for i, r in enumerate(recs)]
        tasks += [asyncio.create_task(web_stream(web, f"http://{target}", r, web_md[i]))
                  for i, r in enumerate(web_recs)]
        await asyncio.wait_for(asyncio.gather(*(r.ready.wait() for r in recs + web_recs)), 300)
        await asyncio.sleep(1)
        rss_open = rss_mib(pid)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for ch in channels:
        await ch.close()
    await asyncio.sleep(5)
    return rss_open


async def run_subscribe(mesh: Mesh, *, streams: int, web_streams: int, topics: int, rate: float,
                        seconds: float, drain: float, per_channel: int, floor: list[float],
                        tag: str) -> ScenarioResult:
    metadata = _auth_metadata()
    target = f"127.0.0.1:{mesh.edge_port}"
    names = [f"bench/{tag}/{i}" for i in range(topics)]
    realtime_pid = mesh.realtime_pids or [mesh.pids["realtime"]]
    gc.collect()
    rss_cold = rss_mib(realtime_pid)
    # Open and cancel the same streams once first: the RSS they add to the idle process
    # is the memory per stream; what the process keeps after they are gone (allocator
    # arenas, gRPC's pools) is reused by the next streams, so the measured run below
    # compares its after-cancel RSS with this warm idle one.
    rss_first_open = await _open_and_cancel(target, names, streams, web_streams, per_channel, metadata,
                                            realtime_pid)
    rss_baseline = rss_mib(realtime_pid)
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1),
                                                           ("grpc.max_concurrent_streams", per_channel)])
                for _ in range(max(1, math.ceil(streams / per_channel)))]
    stubs = [realtime_service_pb2_grpc.RealtimeServiceStub(ch) for ch in channels]
    recs = [StreamRec(names[i % topics], "grpc") for i in range(streams)]
    web_recs = [StreamRec(names[i % topics], "grpc-web") for i in range(web_streams)]
    web = httpx.AsyncClient(http1=True, http2=False, timeout=httpx.Timeout(None, connect=30),
                            limits=httpx.Limits(max_connections=web_streams + 1,
                                                max_keepalive_connections=web_streams + 1))
    t_open = time.monotonic()
    grpc_md, web_md = _user_metadata(streams), _user_metadata(web_streams)
    tasks = [asyncio.create_task(grpc_stream(stubs[i // per_channel], rec, grpc_md[i])) for i, rec in enumerate(recs)]
    tasks += [asyncio.create_task(web_stream(web, f"http://{target}", rec, web_md[i]))
              for i, rec in enumerate(web_recs)]
    all_recs = recs + web_recs
    await asyncio.wait_for(asyncio.gather(*(r.ready.wait() for r in all_recs)), 300)
    subscribe_seconds = time.monotonic() - t_open
    for rec in all_recs:  # only what is published from now on counts
        rec.seqs.clear()
        rec.lags_ms.clear()

    publisher = grpc.aio.insecure_channel(target)
    pub = realtime_service_pb2_grpc.RealtimeServiceStub(publisher)
    published: dict[str, list[int]] = {n: [] for n in names}
    total = int(rate * seconds)
    cpu_before = [cpu_s(p) for p in realtime_pid]
    start = time.monotonic()
    for i in range(total):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        topic = names[i % topics]
        content = struct_pb2.Struct()
        content.update({"i": i})
        try:
            response = await pub.Publish(rr.PublishRequest(topic=topic, data=content), metadata=metadata, timeout=10)
            published[topic].append(response.sequence)
        except grpc.aio.AioRpcError as exc:
            print(f"publish failed: {exc.code().name} {exc.details()}", file=sys.stderr)
    await asyncio.sleep(drain)
    cpu_used = [cpu_s(p) - before for p, before in zip(realtime_pid, cpu_before)]

    rss_open = rss_mib(realtime_pid)
    envoy_rss = rss_mib(mesh.pids["envoy"])
    clients = await redis_clients(mesh.redis_url)
    complete = sum(1 for r in all_recs if not r.error and sorted(r.seqs) == published[r.topic]
                   and len(r.seqs) == len(set(r.seqs)))
    lags = [lag for r in all_recs for lag in r.lags_ms]
    errors = [r.error for r in all_recs if r.error]
    if errors:
        kinds = Counter(f"{r.kind} {r.error[:60]} (received {len(r.seqs)})" for r in all_recs if r.error)
        print(f"  errors by kind: {kinds.most_common(5)}", flush=True)

    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await web.aclose()
    for ch in [*channels, publisher]:
        await ch.close()
    await asyncio.sleep(5)  # the service notices the cancellations and frees the streams
    rss_after = rss_mib(realtime_pid)

    bound = sum(mesh.realtime_config.values()) * len(realtime_pid)
    p50, p99 = percentile(lags, 0.5), percentile(lags, 0.99)
    f50, f99 = percentile(floor, 0.5), percentile(floor, 0.99)
    n = streams + web_streams
    return ScenarioResult(
        scenario=f"{topics} topic(s) @ {rate:g}/s", streams=streams, web_streams=web_streams, topics=topics,
        rate_per_s=rate, seconds=seconds, published=sum(len(v) for v in published.values()),
        deliveries_expected=sum(len(published[r.topic]) for r in all_recs), complete_streams=complete,
        errors=len(errors), lag_p50_ms=p50, lag_p99_ms=p99, lag_max_ms=max(lags, default=float("nan")),
        floor_p50_ms=f50, floor_p99_ms=f99, lag_p50_ratio=p50 / f50, lag_p99_ratio=p99 / f99,
        redis_clients=clients, redis_clients_bound=bound, rss_cold_mib=rss_cold, rss_baseline_mib=rss_baseline, rss_open_mib=rss_open,
        rss_per_1000_mib=(rss_first_open - rss_cold) / n * 1000 if n else 0.0, rss_after_cancel_mib=rss_after,
        rss_after_cancel_vs_baseline=rss_after / rss_baseline - 1, envoy_rss_open_mib=envoy_rss,
        subscribe_seconds=subscribe_seconds, first_error=errors[0] if errors else "",
        realtime_processes=len(realtime_pid), realtime_cpu_s=cpu_used,
    )


# ------------------------------------------------------------------ training watches
async def run_watches(mesh: Mesh, *, streams: int, jobs: int, steps: int, per_channel: int) -> dict[str, object]:
    from agentforge.training.v1 import request_response_pb2 as trr
    from agentforge.training.v1 import training_job_pb2 as job_pb
    from agentforge.training.v1 import training_service_pb2_grpc

    metadata = _auth_metadata()
    target = f"127.0.0.1:{mesh.edge_port}"
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(max(1, math.ceil(streams / per_channel)))]
    stubs = [training_service_pb2_grpc.TrainingServiceStub(ch) for ch in channels]
    spec = job_pb.TrainingJobSpec(
        task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_MODULAR_ARITHMETIC, modulus=23),
        model=job_pb.ModelArchitecture(layers=1, width=32, heads=2, context_length=4),
        optimizer=job_pb.OptimizerSpec(kind=job_pb.OPTIMIZER_KIND_ADAM, learning_rate=1e-3),
        batch_size=64, max_steps=steps, eval_interval=max(1, steps // 4), checkpoint_interval=steps,
        progress_interval=1, seed=0, device=job_pb.DEVICE_CPU,
    )
    created = [await stubs[0].CreateTrainingJob(trr.CreateTrainingJobRequest(
        training_job=job_pb.TrainingJob(spec=spec)), metadata=metadata) for _ in range(jobs)]
    pid = mesh.pids["training"]
    rss_before = rss_mib(pid)
    results: list[tuple[str, list[int], list[float], str]] = []

    async def watch(i: int) -> None:
        name = created[i % jobs].name
        seqs: list[int] = []
        lags: list[float] = []
        error = ""
        try:
            async for event in stubs[i // per_channel].WatchTrainingJob(
                    trr.WatchTrainingJobRequest(name=name), metadata=metadata):
                if event.HasField("stream_end"):
                    if event.stream_end.code:
                        error = event.stream_end.message
                    continue
                if event.HasField("heartbeat"):
                    continue  # keepalive of a quiet stream
                seqs.append(event.sequence)
                if event.HasField("time"):
                    lags.append(time.time() * 1000 - event.time.ToNanoseconds() / 1e6)
        except grpc.aio.AioRpcError as exc:
            error = f"{exc.code().name}: {exc.details()}"
        results.append((name, seqs, lags, error))

    t0 = time.monotonic()
    peak = {"rss": rss_before, "clients": 0}

    async def sample() -> None:
        while True:
            await asyncio.sleep(1)
            peak["rss"] = max(peak["rss"], rss_mib(pid))
            peak["clients"] = max(peak["clients"], await redis_clients(mesh.redis_url))

    sampler = asyncio.create_task(sample())
    await asyncio.gather(*(watch(i) for i in range(streams)))
    sampler.cancel()
    seconds = time.monotonic() - t0
    for ch in channels:
        await ch.close()
    complete = sum(1 for _n, seqs, _l, err in results if not err and seqs == list(range(1, len(seqs) + 1))
                   and len(seqs) > 2)
    lags = [lag for _n, _s, ls, _e in results for lag in ls]
    errors = [e for *_rest, e in results if e]
    return {"streams": streams, "jobs": jobs, "seconds": round(seconds, 1), "complete_streams": complete,
            "errors": len(errors), "first_error": errors[0] if errors else "",
            "events": sum(len(s) for _n, s, _l, _e in results),
            "lag_p50_ms": percentile(lags, 0.5), "lag_p99_ms": percentile(lags, 0.99),
            "redis_clients_peak": peak["clients"], "rss_before_mib": rss_before, "rss_peak_mib": peak["rss"],
            "rss_per_1000_mib": (peak["rss"] - rss_before) / streams * 1000}


# ------------------------------------------------------------------ main
def _fmt(result: ScenarioResult) -> str:
    n = result.streams + result.web_streams
    return "\n".join([
        f"--- {result.scenario}, {result.realtime_processes} realtime process(es): "
        f"{result.streams} gRPC + {result.web_streams} grpc-web streams, "
        f"{result.published} messages in {result.seconds:g}s (opened in {result.subscribe_seconds:.1f}s)",
        f"  complete streams   {result.complete_streams}/{n}   errors {result.errors} {result.first_error[:80]}",
        f"  delivery lag       p50 {result.lag_p50_ms:.1f} ms  p99 {result.lag_p99_ms:.1f} ms  "
        f"max {result.lag_max_ms:.0f} ms",
        f"  bus floor          p50 {result.floor_p50_ms:.2f} ms  p99 {result.floor_p99_ms:.2f} ms  "
        f"-> ratios p50 x{result.lag_p50_ratio:.0f}  p99 x{result.lag_p99_ratio:.0f}",
        f"  Redis connections  {result.redis_clients} (realtime bound {result.redis_clients_bound})",
        f"  realtime RSS       {result.rss_cold_mib:.0f} MiB idle, +{result.rss_per_1000_mib:.1f} MiB per "
        f"1,000 open streams; {result.rss_baseline_mib:.0f} MiB idle after a first open/cancel, "
        f"{result.rss_open_mib:.0f} MiB open again, {result.rss_after_cancel_mib:.0f} MiB after "
        f"cancel ({result.rss_after_cancel_vs_baseline:+.0%} vs warm idle); envoy {result.envoy_rss_open_mib:.0f} MiB",
        f"  realtime CPU       {' + '.join(f'{c:.1f}' for c in result.realtime_cpu_s)} s while publishing",
    ])


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Every scenario once per ``--realtime-processes`` count, each on a fresh mesh."""
    results: list[ScenarioResult] = []
    watches = None
    floor: list[float] = []
    for count in args.realtime_processes:
        floor, part, part_watches = await _run_mesh(args, count)
        results += part
        watches = watches or part_watches
    counts = args.realtime_processes
    if len(counts) > 1:  # ratios against the first count, scenario by scenario, same run
        for scenario in args.scenario:
            rows = [r for r in results if r.scenario.startswith(f"{scenario.partition(':')[0]} topic")]
            base = rows[0]
            for row in rows[1:]:
                print(f"ratio {row.scenario}: {row.realtime_processes} vs {base.realtime_processes} processes: "
                      f"lag p50 x{row.lag_p50_ms / base.lag_p50_ms:.2f}, p99 x{row.lag_p99_ms / base.lag_p99_ms:.2f}; "
                      f"complete {row.complete_streams} vs {base.complete_streams}", flush=True)
    return {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                        "load_average": os.getloadavg()},
            "floor_ms": {"p50": percentile(floor, 0.5), "p99": percentile(floor, 0.99)},
            "subscribe": [asdict(r) for r in results], "watch_training_job": watches}


async def _run_mesh(args: argparse.Namespace, realtime_processes: int
                    ) -> tuple[list[float], list[ScenarioResult], dict[str, object] | None]:
    from services.shared.valkey import EmbeddedValkey

    saved_env = dict(os.environ)  # start_mesh configures the children through it
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp, EmbeddedValkey() as valkey:
        children = Children(Path(tmp))
        try:
            mesh = start_mesh(children, valkey.url, training=args.watch_streams > 0,
                              realtime_processes=realtime_processes)
        except BaseException:
            children.stop_all()
            raise
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        try:
            floor = await bus_floor(valkey.url, args.floor_samples)
            print(f"{realtime_processes} realtime process(es); load average {os.getloadavg()[0]:.1f}; "
                  f"bus floor (XADD -> XREAD BLOCK): p50 {percentile(floor, 0.5):.2f} ms  "
                  f"p99 {percentile(floor, 0.99):.2f} ms over {len(floor)} samples", flush=True)
            results = []
            for i, scenario in enumerate(args.scenario):
                topics, _, rate = scenario.partition(":")
                result = await run_subscribe(
                    mesh, streams=args.streams, web_streams=args.web_streams, topics=int(topics),
                    rate=float(rate or 50), seconds=args.seconds, drain=args.drain,
                    per_channel=args.per_channel, floor=floor, tag=f"p{realtime_processes}s{i}")
                print(_fmt(result), flush=True)
                results.append(result)
            watches = None
            if args.watch_streams:
                watches = await run_watches(mesh, streams=args.watch_streams, jobs=args.jobs,
                                            steps=args.job_steps, per_channel=args.per_channel)
                print(f"--- WatchTrainingJob: {json.dumps(watches)}", flush=True)
        finally:
            mesh.children.stop_all()
    return floor, results, watches


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=5000, help="gRPC Subscribe streams per scenario")
    ap.add_argument("--web-streams", type=int, default=500, help="grpc-web Subscribe streams per scenario")
    ap.add_argument("--scenario", action="append", metavar="TOPICS:RATE",
                    help="topics and total publish rate per second (repeatable; default 1:2 and 100:50)")
    ap.add_argument("--seconds", type=float, default=60.0, help="publishing time per scenario")
    ap.add_argument("--drain", type=float, default=3.0, help="wait after the last publish (s)")
    ap.add_argument("--per-channel", type=int, default=900, help="streams per gRPC channel (HTTP/2 connection)")
    ap.add_argument("--floor-samples", type=int, default=300)
    ap.add_argument("--watch-streams", type=int, default=0, help="WatchTrainingJob streams (0: skip)")
    ap.add_argument("--jobs", type=int, default=20, help="training jobs the watches follow")
    ap.add_argument("--job-steps", type=int, default=60)
    ap.add_argument("--json", type=Path, help="write the figures here")
    ap.add_argument("--realtime-processes", default="1", metavar="N[,N...]",
                    help="realtime processes behind Envoy; several counts run every scenario once per "
                         "count on a fresh mesh and print ratios against the first (e.g. 1,2)")
    args = ap.parse_args(argv)
    args.scenario = args.scenario or ["1:2", "100:50"]
    args.realtime_processes = [int(n) for n in str(args.realtime_processes).split(",") if n.strip()]
    if not args.realtime_processes or min(args.realtime_processes) < 1:
        ap.error("--realtime-processes: counts >= 1")
    return args


async def _run_until_signalled(args: argparse.Namespace) -> dict[str, object]:
    """``run``, cancelled by SIGTERM/SIGINT so that every child process is stopped."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    return await run(args)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = asyncio.run(_run_until_signalled(args))
    except asyncio.CancelledError:
        return 130
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    failed = [s for s in report["subscribe"] if s["errors"] or s["complete_streams"] < s["streams"] + s["web_streams"]]
    return 1 if failed else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
