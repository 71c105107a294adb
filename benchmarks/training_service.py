"""Training service benchmarks: overhead vs the bare engine, concurrency, progress latency.

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/training_service.py [--steps 300] [--jobs 16]

Starts an embedded Valkey and the service in this process (real spawned workers), then:

1. overhead — the same job (seed, spec) run by the bare engine ``Trainer.run()`` in this
   process and through the service on one worker, alternating ``--repeat`` times; seconds
   per step = (wall of the run, setup included) / steps, for the service the job's
   ``end_time - start_time``; the minimum of each side counts (the least disturbed run
   on a shared box).
2. concurrency — ``--jobs`` small jobs created at once on ``--workers`` workers vs the same
   jobs one after another; aggregate optimizer steps per second.
3. latency — for every progress event a watcher receives: receive time minus the event's
   ``time`` (stamped by the engine right after the step), p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import torch
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_pb2 as job_pb
from agentforge.training.v1 import training_service_pb2_grpc

from services.shared.client import make_channel
from services.shared.config import ServerConfig
from services.shared.valkey import EmbeddedValkey
from services.training import mapping
from services.training.config import TrainingConfig
from services.training.engine import Trainer
from services.training.server import create_server


def spec(steps: int, *, seed: int = 0, progress_interval: int = 1, width: int = 64) -> job_pb.TrainingJobSpec:
    return job_pb.TrainingJobSpec(
        task=job_pb.TaskSpec(kind=job_pb.TASK_KIND_MODULAR_ARITHMETIC, modulus=97),
        model=job_pb.ModelArchitecture(layers=2, width=width, heads=4, context_length=4),
        optimizer=job_pb.OptimizerSpec(kind=job_pb.OPTIMIZER_KIND_ADAM, learning_rate=1e-3, weight_decay=0.005,
                                       warmup_steps=10),
        grokfast=job_pb.GrokfastSpec(kind=job_pb.GROKFAST_KIND_EMA, alpha=0.98, lamb=2.0),
        batch_size=512, max_steps=steps, eval_interval=max(1, steps // 10), checkpoint_interval=max(1, steps // 4),
        progress_interval=progress_interval, seed=seed, device=job_pb.DEVICE_CPU,
    )


def seconds(ts) -> float:  # type: ignore[no-untyped-def]
    return ts.seconds + ts.nanos / 1e9


def bare(job_spec: job_pb.TrainingJobSpec, threads: int) -> float:
    """Seconds per step of the bare engine loop (same spec, same thread count)."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        outcome = Trainer(mapping.spec_from_proto(job_spec), run_dir, num_threads=threads).run()
        return (time.perf_counter() - start) / outcome.step


async def run_job(stub, job_spec, latencies: list[float] | None = None) -> job_pb.TrainingJob:  # type: ignore[no-untyped-def]
    job = await stub.CreateTrainingJob(rr.CreateTrainingJobRequest(training_job=job_pb.TrainingJob(spec=job_spec)))
    async for event in stub.WatchTrainingJob(rr.WatchTrainingJobRequest(name=job.name)):
        if latencies is not None and event.HasField("progress"):
            latencies.append(time.time() - seconds(event.time))
    return await stub.GetTrainingJob(rr.GetTrainingJobRequest(name=job.name))


async def with_service(workers: int, threads: int, body):  # type: ignore[no-untyped-def]
    with EmbeddedValkey() as valkey, tempfile.TemporaryDirectory() as data:
        config = TrainingConfig(data_dir=Path(data), redis_url=valkey.url, workers=workers, torch_threads=threads,
                                key_prefix=f"b{uuid.uuid4().hex[:6]}:")
        service, app = await create_server(config, ServerConfig(metrics_port=-1, log_level="WARNING", log_format="text"))
        channel = make_channel(f"127.0.0.1:{service.port}", default_timeout=None)  # with the mesh identity
        stub = training_service_pb2_grpc.TrainingServiceStub(channel)
        try:
            await run_job(stub, spec(5))  # warm up the worker (imports, allocator)
            return await body(stub)
        finally:
            await service.shutdown(1)  # ends open streams before the channel goes away
            await channel.close()
            await app.aclose()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--job-steps", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--intervals", default="1,10",
                        help="progress intervals of the overhead runs (comma-separated; empty: skip)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="bare/service overhead runs per interval, alternating; the minimum of each side counts")
    parser.add_argument("--no-concurrency", action="store_true", help="skip the concurrency runs")
    args = parser.parse_args()
    results: dict[str, object] = {"torch_threads_per_worker": 1}

    for interval in (int(i) for i in args.intervals.split(",") if i.strip()):
        s = spec(args.steps, progress_interval=interval)

        async def runs(stub, s=s):  # type: ignore[no-untyped-def]
            # Bare and service runs alternate in the same environment (idle service up):
            # load from elsewhere on the box hits both sides alike; min of each side.
            bare_runs: list[float] = []
            service_runs: list[float] = []
            latencies: list[float] = []
            for _ in range(args.repeat):
                bare_runs.append(await asyncio.to_thread(bare, s, 1))
                job = await run_job(stub, s, latencies)
                service_runs.append((seconds(job.end_time) - seconds(job.start_time)) / job.progress.step)
            return bare_runs, service_runs, latencies

        bare_runs, service_runs, latencies = await with_service(1, 1, runs)
        results[f"overhead_progress_every_{interval}"] = {
            "bare_s_per_step": round(min(bare_runs), 5), "service_s_per_step": round(min(service_runs), 5),
            "ratio": round(min(service_runs) / min(bare_runs), 3),
            "bare_runs": [round(x, 5) for x in bare_runs], "service_runs": [round(x, 5) for x in service_runs]}
        if interval == 1:
            lat = sorted(latencies)
            results["progress_latency_ms"] = {
                "events": len(lat), "p50": round(1000 * statistics.median(lat), 2),
                "p99": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2)}

    if args.no_concurrency:
        print(json.dumps(results, indent=2))
        return

    async def sequential(stub):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        for i in range(args.jobs):
            await run_job(stub, spec(args.job_steps, seed=i, width=32, progress_interval=10))
        return args.jobs * args.job_steps / (time.perf_counter() - start)

    async def concurrent(stub):  # type: ignore[no-untyped-def]
        start = time.perf_counter()
        await asyncio.gather(*(run_job(stub, spec(args.job_steps, seed=i, width=32, progress_interval=10))
                               for i in range(args.jobs)))
        return args.jobs * args.job_steps / (time.perf_counter() - start)

    seq = await with_service(args.workers, 1, sequential)
    conc = await with_service(args.workers, 1, concurrent)
    results[f"{args.jobs}_jobs_x_{args.job_steps}_steps_on_{args.workers}_workers"] = {
        "sequential_steps_per_s": round(seq, 1), "concurrent_steps_per_s": round(conc, 1),
        "speedup": round(conc / seq, 2)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
