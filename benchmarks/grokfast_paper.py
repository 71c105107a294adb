"""GrokFast paper benchmark through the service's public API (not a test).

Starts a mesh (embedded Valkey, the training service with one ``spawn`` worker, Envoy) with
the launcher, then for each seed in ``--seeds``:

1. creates a ``modular_arithmetic`` job (x·y mod 97) with the paper's settings by
   ``POST /v1/trainingJobs`` on the edge — Adam lr 1e-3, betas 0.9/0.98, weight decay
   0.005, batch 512, 10-step warmup, Grokfast-EMA alpha 0.98 lamb 2.0, a 2-layer
   width-128 4-head model with the task's 4-token context — and follows
   ``GET /v1/trainingJobs/{id}:watch`` until the full validation set reaches 95 %
   accuracy (then cancels the job): steps to 95 % (paper: 910 at seed 0);
2. runs the paper's own loop the same way (``benchmarks/_paper_reference.py``, the
   reference code's model, data order and filter, in this process with the worker's
   thread count): its steps to 95 %.

Then, for seed 0 only, the baseline without the filter (weight decay 0) through the API
for as many steps: its validation accuracy there (paper: needs 39,890 steps to 95 %).

Printed: a row per seed, the medians, and seconds per step of the API path vs the
reference loop (the API's from the job's start and end time; both include evaluation).

Usage::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/grokfast_paper.py [--seeds 0,1,2,3,4] [--max-steps 3000]
"""

from __future__ import annotations

import argparse
import json
import signal
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._paper_reference import reference_run  # noqa: E402
from benchmarks._auth import bearer_headers  # noqa: E402
from services.launcher.mesh import Mesh, MeshConfig  # noqa: E402

PAPER_STEPS_GROKFAST = 910
PAPER_STEPS_BASELINE = 39_890


def paper_job(seed: int, max_steps: int, *, grokfast: bool = True) -> dict[str, Any]:
    """The REST body of the paper's job (``TrainingJob`` JSON)."""
    spec: dict[str, Any] = {
        "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC", "modulus": 97},
        "model": {"layers": 2, "width": 128, "heads": 4, "contextLength": 4},
        "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3, "beta1": 0.9, "beta2": 0.98,
                      "weightDecay": 0.005 if grokfast else 0.0, "warmupSteps": "10"},
        "grokfast": ({"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0} if grokfast
                     else {"kind": "GROKFAST_KIND_NONE"}),
        "batchSize": 512,
        "maxSteps": str(max_steps),
        "evalInterval": "10",
        "progressInterval": "10",
        "checkpointInterval": str(max_steps),
        "keepCheckpoints": 1,
        "seed": str(seed),
        "device": "DEVICE_CPU",
    }
    return {"displayName": f"grokfast paper seed {seed}", "labels": {"benchmark": "grokfast-paper"}, "spec": spec}


def _seconds(ts: str) -> float:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromJsonString(ts)
    return t.seconds + t.nanos / 1e9


def api_run(client: httpx.Client, body: dict[str, Any], target: float | None) -> dict[str, Any]:
    """Create the job over REST and follow its NDJSON watch stream; cancel at the target."""
    resp = client.post("/v1/trainingJobs", json=body)
    resp.raise_for_status()
    name = resp.json()["name"]
    curve: list[tuple[int, float]] = []
    hit: int | None = None
    with client.stream("GET", f"/v1/{name}:watch", timeout=httpx.Timeout(None)) as stream:
        stream.raise_for_status()
        for line in stream.iter_lines():
            if not line.strip():
                continue
            event = json.loads(line)
            if "evalCompleted" in event:
                e = event["evalCompleted"]
                curve.append((int(e.get("step", 0)), float(e.get("accuracy", 0.0))))
                if target is not None and hit is None and curve[-1][1] >= target:
                    hit = curve[-1][0]
                    client.post(f"/v1/{name}:cancel", json={})
            if "streamEnd" in event:
                break
    job = client.get(f"/v1/{name}").json()
    steps = int(job.get("progress", {}).get("step", 0))
    wall = _seconds(job["endTime"]) - _seconds(job["startTime"]) if "endTime" in job and "startTime" in job else 0.0
    return {"name": name, "steps_to_target": hit, "curve": curve, "steps": steps, "seconds": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (the issue's median: 0,1,2,3,4)")
    ap.add_argument("--max-steps", type=int, default=3000, help="cap per Grokfast run")
    ap.add_argument("--baseline-steps", type=int, default=0,
                    help="baseline length (default: seed 0's steps to 95%%; 0 with --no-baseline skips it)")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the worker and of the reference")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the mesh (finally) when killed
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    torch.set_num_threads(args.threads)

    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"seeds": seeds, "runs": rows}
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(MeshConfig(services=("training",), training_workers=1, data_dir=Path(tmp) / "data",
                               run_dir=Path(tmp) / "run",
                               env={"AF_TRAINING_TORCH_THREADS": str(args.threads)}))
        mesh.start()
        try:
            with httpx.Client(base_url=mesh.edge_url, timeout=60, headers=bearer_headers("admin", "bench-grokfast")) as client:
                for seed in seeds:
                    api = api_run(client, paper_job(seed, args.max_steps), 0.95)
                    t0 = time.perf_counter()
                    ref = reference_run(seed, args.max_steps, 0.95)
                    ref_secs = time.perf_counter() - t0
                    row = {"seed": seed, "api_steps_to_95": api["steps_to_target"], "api_curve": api["curve"],
                           "api_s_per_step": api["seconds"] / max(api["steps"], 1),
                           "reference_steps_to_95": ref.steps_to_target, "reference_curve": ref.curve,
                           "reference_s_per_step": ref_secs / max(len(ref.losses), 1)}
                    rows.append(row)
                    print(f"seed {seed}: API 95% at step {row['api_steps_to_95']} "
                          f"({api['seconds']:.0f}s), paper's loop at step {row['reference_steps_to_95']} "
                          f"({ref_secs:.0f}s)", flush=True)
                if not args.no_baseline:
                    base_steps = args.baseline_steps or rows[0]["api_steps_to_95"] or args.max_steps
                    base = api_run(client, paper_job(0, base_steps, grokfast=False), None)
                    result["baseline"] = {"steps": base_steps, "val_acc": base["curve"][-1][1] if base["curve"] else None,
                                          "steps_to_95": next((s for s, a in base["curve"] if a >= 0.95), None)}
                    print(f"baseline (no filter, wd 0) through the API: val acc "
                          f"{result['baseline']['val_acc']:.4f} at step {base_steps}", flush=True)
        finally:
            mesh.stop()

    def med(key: str) -> str:
        values = [r[key] for r in rows]
        if any(v is None for v in values):
            return f"n/a ({sum(v is None for v in values)} of {len(values)} did not reach 95%)"
        return f"{statistics.median(values):g}"

    print()
    print("seed | API steps to 95% | paper's loop steps to 95% | API s/step | paper's loop s/step")
    for r in rows:
        print(f"{r['seed']:>4} | {str(r['api_steps_to_95']):>16} | {str(r['reference_steps_to_95']):>25} | "
              f"{r['api_s_per_step'] * 1e3:8.1f}ms | {r['reference_s_per_step'] * 1e3:8.1f}ms")
    print(f"median steps to 95%: API {med('api_steps_to_95')}, paper's loop {med('reference_steps_to_95')} "
          f"(paper, seed 0: {PAPER_STEPS_GROKFAST})")
    api_s = statistics.median(r["api_s_per_step"] for r in rows)
    ref_s = statistics.median(r["reference_s_per_step"] for r in rows)
    print(f"s/step API / paper's loop: {api_s / ref_s:.2f}x ({api_s * 1e3:.1f} vs {ref_s * 1e3:.1f} ms)")
    print(f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}")
    result.update(api_s_per_step=api_s, reference_s_per_step=ref_s)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
