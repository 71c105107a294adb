"""Get/List latency of the model and training services under an open-loop load.

One run, on 127.0.0.1, through the public API of a real mesh (the launcher: embedded
Valkey, the real model and training services with no workers, Envoy from the template),
seeded with ``--models`` models, ``--versions`` versions of one of them (metrics, tags,
aliases) and ``--jobs`` training jobs. For each RPC — ``GetModel``, ``ListModelVersions``
(one page of 50), ``GetTrainingJob``, ``ListTrainingJobs`` (one page of 50) — and each path
(directly to the service with the mesh identity Envoy would add; through Envoy with a
bearer token), it offers ``--rate`` requests/s in total from ``--clients`` HTTP/2
connections for ``--seconds`` (after ``--warmup`` seconds at the same rate, not counted).

The load generator is h2load (Debian ``nghttp2-client``, native): ``--rps`` requests per
second per connection, the connections opened 1 ms apart so their schedules interleave
instead of firing together, up to ``-m`` streams in flight per connection — requests are
sent on schedule whether or not earlier ones answered (open loop), and each one's
latency is taken from that send (``--log-file``). A request waits for a free stream only
if a connection has ``-m`` in flight, i.e. only if latencies pass ``m / rps`` seconds; the
report says whether that happened, and h2load's own CPU use. h2load can still fall behind
its schedule (a starved process, its timer's rounding): the k-th request of a run was due
``k / rate`` after the first, so each request's lag behind that schedule is measured and
the target is judged on latency *from the schedule* (lag + the request's own time). gRPC calls are POSTs of a length-prefixed message; h2load sees HTTP 200 for gRPC
errors too, so the service's ``grpc_server_handled_total`` by code is read before and
after each run and any non-OK answer is reported, and so are answers Envoy gave itself
(requests minus its ``cluster.<service>.upstream_rq_completed``).

Targets (issue 13 item 6): p99 <= 5 ms direct, <= 10 ms through Envoy, at 1,000
requests/s from 100 clients. Ratios are against the direct path measured in the same run.

Run::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/read_open_loop.py --rate 1000 --clients 100 --seconds 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _p in (str(ROOT / "gen" / "python"), str(ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import grpc  # noqa: E402
import psutil  # noqa: E402
from agentforge.model.v1 import model_pb2, model_service_pb2_grpc, model_version_pb2  # noqa: E402
from agentforge.model.v1 import request_response_pb2 as mrr  # noqa: E402
from agentforge.training.v1 import request_response_pb2 as trr  # noqa: E402
from agentforge.training.v1 import training_job_pb2, training_service_pb2_grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from google.protobuf.message import Message  # noqa: E402

from services.launcher.mesh import Mesh, MeshConfig  # noqa: E402

SPEC = {
    "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC"},
    "model": {"layers": 2, "width": 128, "heads": 4, "contextLength": 4},
    "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "beta1": 0.9, "beta2": 0.98},
    "grokfast": {"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0},
    "batchSize": 512,
    "maxSteps": 1000,
}
MODEL_SERVICE = "agentforge.model.v1.ModelService"
TRAINING_SERVICE = "agentforge.training.v1.TrainingService"


def seed(mesh: Mesh, md: Sequence[tuple[str, str]], args: argparse.Namespace) -> dict[str, Message]:
    """Create the data; return the request of each measured RPC."""
    with grpc.insecure_channel(mesh.edge_addr) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        training = training_service_pb2_grpc.TrainingServiceStub(channel)
        for i in range(args.models):
            models.CreateModel(mrr.CreateModelRequest(model_id=f"m-{i:03d}", model=model_pb2.Model(
                display_name=f"model {i}", labels={"team": "bench", "i": str(i)}, tags=["bench"])), metadata=md)
        for v in range(args.versions):
            models.CreateModelVersion(mrr.CreateModelVersionRequest(
                parent="models/m-000", model_version=model_version_pb2.ModelVersion(
                    description=f"version {v + 1}", tags=["nightly"] if v % 2 else ["nightly", "candidate"],
                    metrics={"val_loss": 1.0 / (v + 1), "val_accuracy": v / args.versions},
                    parameters={"layers": "2", "width": "128"})), metadata=md)
        job = ""
        for j in range(args.jobs):
            created = training.CreateTrainingJob(trr.CreateTrainingJobRequest(
                training_job=training_job_pb2.TrainingJob(
                    display_name=f"job {j}", labels={"team": "bench"},
                    spec=json_format.ParseDict(SPEC, training_job_pb2.TrainingJobSpec()))), metadata=md)
            job = job or created.name
    return {
        "GetModel": mrr.GetModelRequest(name="models/m-000"),
        "ListModelVersions": mrr.ListModelVersionsRequest(parent="models/m-000", page_size=50),
        "GetTrainingJob": trr.GetTrainingJobRequest(name=job),
        "ListTrainingJobs": trr.ListTrainingJobsRequest(page_size=50),
    }


def envoy_stat(mesh: Mesh, name: str) -> int:
    """One counter from Envoy's admin /stats (0 when absent)."""
    import urllib.request

    with urllib.request.urlopen(f"{mesh.admin_url}/stats?filter=^{name}$", timeout=5) as resp:  # noqa: S310
        for line in resp.read().decode().splitlines():
            key, _, value = line.partition(": ")
            if key == name and value.strip().isdigit():
                return int(value)
    return 0


def grpc_frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return b"\x00" + len(body).to_bytes(4, "big") + body


def handled(port: int, method: str) -> dict[str, float]:
    """``grpc_server_handled_total`` of ``method`` by code, from the service's /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:  # noqa: S310 - loopback
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "grpc_server_handled_total" and s.labels.get("grpc_method") == method:
                out[s.labels["grpc_code"]] = out.get(s.labels["grpc_code"], 0) + s.value
    return out


def h2load(url: str, body: Path, headers: Sequence[tuple[str, str]], *, rate: float, clients: int,
           seconds: float, streams: int, log: Path) -> tuple[list[tuple[int, int, int]], float, str]:
    """Run h2load open-loop; per request (start µs, HTTP status, duration µs), its CPU s, its summary."""
    per_client = rate / clients
    argv = ["h2load", "-c", str(clients), "-t", "1", "-m", str(streams), "--rps", f"{per_client:g}",
            "-r", "1", "--rate-period", "1ms", "-n", str(int(rate * seconds)),
            "-d", str(body), "--log-file", str(log),
            "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for k, v in headers:
        argv += ["-H", f"{k}: {v}"]
    argv.append(url)
    log.unlink(missing_ok=True)  # h2load appends to an existing log
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds * 3 + 60, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr[-2000:]}{proc.stdout[-2000:]}")
    rows = []
    for line in log.read_text().splitlines():
        start, status, micros = line.split("\t")[:3]
        rows.append((int(start), int(status), int(micros)))
    summary = next((ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("requests:")), "")
    return rows, cpu, summary


def saturation(url: str, body: Path, headers: Sequence[tuple[str, str]], *, clients: int,
               seconds: float) -> tuple[float, str]:
    """Closed loop (each connection sends its next request when the last answered): requests/s."""
    argv = ["h2load", "-c", str(clients), "-t", "1", "-m", "1", "-D", f"{seconds:g}", "--warm-up-time", "1",
            "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers"]
    for k, v in headers:
        argv += ["-H", f"{k}: {v}"]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds * 3 + 60, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("finished in")), "")
    # "finished in 10.00s, 1234.50 req/s, 1.23MB/s"
    rps = float(line.split(",")[1].split()[0]) if line else float("nan")
    return rps, line


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("h2load") is None:
        raise SystemExit("h2load is missing: apt-get install nghttp2-client")
    from services.shared.auth import ensure_dev_secrets, mint_token
    from services.shared.authz import outgoing_metadata

    ensure_dev_secrets()
    token = mint_token("viewer", subject="bench-read", ttl_s=3600)
    admin = (("authorization", f"Bearer {mint_token('operator', subject='bench-read', ttl_s=3600)}"),)
    results: dict[str, Any] = {"rate": args.rate, "clients": args.clients, "seconds": args.seconds, "rows": []}
    with tempfile.TemporaryDirectory(prefix="bench-read-") as tmp, Mesh(MeshConfig(
        services=("model", "training"), training_workers=0, data_dir=Path(tmp) / "data", run_dir=Path(tmp) / "run",
        env={f"EDGE_RATE_LIMIT_{c}": "1000000/1000000" for c in ("READ", "WRITE", "STREAM")},
    )) as mesh:
        requests = seed(mesh, admin, args)
        paths = {
            "direct": (lambda service: f"http://127.0.0.1:{mesh.grpc_ports[service]}", tuple(outgoing_metadata())),
            "envoy": (lambda service: f"http://{mesh.edge_addr}", (("authorization", f"Bearer {token}"),)),
        }
        load_before = os.getloadavg()
        for method in args.methods:
            service, service_name = (("model", MODEL_SERVICE) if method in ("GetModel", "ListModelVersions")
                                     else ("training", TRAINING_SERVICE))
            body = Path(tmp) / f"{method}.bin"
            body.write_bytes(grpc_frame(requests[method]))
            metrics_port = mesh.metrics_ports[service]
            for path in args.paths:
                base, headers = paths[path]
                url = f"{base(service)}/{service_name}/{method}"
                log = Path(tmp) / "h2load.log"
                h2load(url, body, headers, rate=args.rate, clients=args.clients, seconds=args.warmup,
                       streams=args.streams, log=log)
                upstream = f"cluster.{service}.upstream_rq_completed"
                upstream_before = envoy_stat(mesh, upstream)
                codes_before = handled(metrics_port, method)
                procs = {"service": psutil.Process(mesh.process(service).pid),
                         "envoy": psutil.Process(mesh.process("envoy").pid)}
                cpu_before = {k: sum(p.cpu_times()[:2]) for k, p in procs.items()}
                t0 = time.monotonic()
                rows, cpu, summary = h2load(url, body, headers, rate=args.rate, clients=args.clients,
                                            seconds=args.seconds, streams=args.streams, log=log)
                wall = time.monotonic() - t0
                cpu_ms = {k: 1000 * (sum(p.cpu_times()[:2]) - cpu_before[k]) / max(1, len(rows))
                          for k, p in procs.items()}
                codes_after = handled(metrics_port, method)
                # Answers Envoy gave itself (rate limit, no upstream, ...) never reach the service.
                local = max(0, len(rows) - (envoy_stat(mesh, upstream) - upstream_before)) if path == "envoy" else 0
                codes = {c: codes_after.get(c, 0) - codes_before.get(c, 0) for c in codes_after}
                ms = sorted(r[2] / 1000 for r in rows if r[1] == 200)
                by_start = sorted(rows)
                starts = [r[0] for r in by_start]
                span = (starts[-1] - starts[0]) / 1e6 if len(starts) > 1 else float("nan")
                # The schedule: the k-th request of the run is due k / rate after the first.
                # Lag = how late the generator sent it; latency from the schedule = lag + its
                # own time (what a user who wanted it at that moment waited).
                lag = [max(0.0, (r[0] - starts[0]) / 1000 - 1000 * k / args.rate) for k, r in enumerate(by_start)]
                from_schedule = sorted(lg + r[2] / 1000 for lg, r in zip(lag, by_start) if r[1] == 200)
                lag.sort()
                row = {
                    "method": method, "path": path, "requests": len(rows),
                    "http_errors": sum(1 for r in rows if r[1] != 200), "envoy_local_replies": local,
                    "grpc_codes": {c: int(n) for c, n in codes.items() if n},
                    "offered_rps": args.rate, "sent_rps": (len(rows) - 1) / span if span else float("nan"),
                    "p50_ms": percentile(ms, 0.50), "p90_ms": percentile(ms, 0.90),
                    "p99_ms": percentile(ms, 0.99), "max_ms": ms[-1] if ms else float("nan"),
                    "p50_from_schedule_ms": percentile(from_schedule, 0.50),
                    "p99_from_schedule_ms": percentile(from_schedule, 0.99),
                    "send_lag_p99_ms": percentile(lag, 0.99), "send_lag_max_ms": lag[-1] if lag else float("nan"),
                    "generator_cpu_percent": 100 * cpu / wall, "summary": summary,
                    "service_cpu_ms_per_request": cpu_ms["service"],
                    "envoy_cpu_ms_per_request": cpu_ms["envoy"] if path == "envoy" else 0.0,
                    "queued_at_client_possible": bool(ms) and ms[-1] / 1000 >= args.streams * args.clients / args.rate,
                }
                if args.saturation:
                    row["closed_loop_rps"], _ = saturation(url, body, headers, clients=args.clients,
                                                           seconds=args.saturation)
                results["rows"].append(row)
                print(f"  {method:<18} {path:<7} p99 from schedule {row['p99_from_schedule_ms']:7.2f} "
                      f"(send lag p99 {row['send_lag_p99_ms']:.2f})  p50 {row['p50_ms']:6.2f}  p99 {row['p99_ms']:7.2f}  "
                      f"max {row['max_ms']:7.1f} ms  sent {row['sent_rps']:6.0f}/s  codes {row['grpc_codes']}  "
                      f"h2load CPU {row['generator_cpu_percent']:.0f}%  service CPU "
                      f"{row['service_cpu_ms_per_request']:.3f} ms/req", file=sys.stderr, flush=True)
        results["load_average"] = [load_before, os.getloadavg()]
    return results


def report(results: dict[str, Any]) -> None:
    (b1, b5, b15), (a1, _, _) = results["load_average"]
    print(f"open loop: {results['rate']:g} requests/s offered from {results['clients']} HTTP/2 connections, "
          f"{results['seconds']:g} s per row; load average {b1:.1f} before, {a1:.1f} after, on {os.cpu_count()} CPUs")
    print("latency from the send (p50..max) and from the schedule (p99 sched: the k-th request was due k/rate "
          "after the first; lag = how late h2load sent it)")
    print(f"{'rpc':<18}{'path':<8}{'sent/s':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
          f"{'lag p99':>9}{'p99 sched':>11}{'vs direct':>11}{'non-OK':>8}{'h2load CPU':>12}{'svc CPU ms/req':>16}"
          "  target (p99 sched)")
    direct = {r["method"]: r for r in results["rows"] if r["path"] == "direct"}
    for r in results["rows"]:
        base = direct.get(r["method"])
        ratio = f"{r['p99_from_schedule_ms'] / base['p99_from_schedule_ms']:.2f}x" if base else "-"
        bad = (r["http_errors"] + r.get("envoy_local_replies", 0)
               + sum(n for c, n in r["grpc_codes"].items() if c != "OK"))
        target = 5.0 if r["path"] == "direct" else 10.0
        verdict = "met" if r["p99_from_schedule_ms"] <= target and bad == 0 else "NOT met"
        print(f"{r['method']:<18}{r['path']:<8}{r['sent_rps']:>8.0f}{r['p50_ms']:>9.2f}{r['p90_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['max_ms']:>9.1f}{r['send_lag_p99_ms']:>9.2f}{r['p99_from_schedule_ms']:>11.2f}"
              f"{ratio:>11}{bad:>8}{r['generator_cpu_percent']:>11.0f}%"
              f"{r['service_cpu_ms_per_request']:>16.3f}  p99 <= {target:g} ms: {verdict}")
        if "closed_loop_rps" in r:
            print(f"    closed loop, {results['clients']} connections x 1 request: {r['closed_loop_rps']:.0f} requests/s")
        if r["queued_at_client_possible"]:
            print("    (a connection reached its stream limit: some requests waited in the client)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="requests/s offered, all clients together")
    parser.add_argument("--clients", type=int, default=100, help="HTTP/2 connections")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per RPC and path")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds at the same rate before, not counted")
    parser.add_argument("--streams", type=int, default=16, help="most requests in flight per connection")
    parser.add_argument("--saturation", type=float, default=0.0, metavar="SECONDS",
                        help="also measure closed-loop requests/s (--clients connections, 1 in flight each)")
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--versions", type=int, default=60, help="versions of the measured model")
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--methods", nargs="+", default=["GetModel", "ListModelVersions", "GetTrainingJob",
                                                          "ListTrainingJobs"])
    parser.add_argument("--paths", nargs="+", default=["direct", "envoy"], choices=["direct", "envoy"])
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args()
    results = run(args)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
