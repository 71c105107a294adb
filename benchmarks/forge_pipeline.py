"""Forge pipeline benchmark through the edge (not a test): what EvoMerge and BitNet buy.

Starts a mesh (launcher: embedded Valkey, the five services, Envoy), then per ``--repeat``
runs the pipeline by ``POST /v1/phases/pipeline:start`` and follows it to its end, and reads
the registered versions through REST:

1. EvoMerge: the winner's held-out validation loss vs the best parent's on the same
   held-out text (both measured by the phase; < 1.00x means the merge beat every parent);
2. BitNet: artifact bytes and validation loss of the ternary model vs its source (the
   EvoMerge child): size ratio, loss ratio, bits per ternary weight;
3. wall time of each phase (from the run's step times).

Usage::

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/forge_pipeline.py [--max-steps 300] [--repeat 1]
        [--seed-stride 0]   # 1: the Cognate candidates from different seeds (merging usually loses then)
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.launcher.mesh import Mesh, MeshConfig  # noqa: E402
from benchmarks._auth import bearer_headers  # noqa: E402


def _seconds(ts: str) -> float:
    from google.protobuf import timestamp_pb2

    t = timestamp_pb2.Timestamp()
    t.FromJsonString(ts)
    return t.seconds + t.nanos / 1e9


def run_pipeline(client: httpx.Client, params: dict[str, Any]) -> dict[str, Any]:
    resp = client.post("/v1/phases/pipeline:start", json={"parameters": params})
    resp.raise_for_status()
    name = resp.json()["name"]
    last: dict[str, Any] = {}
    with client.stream("GET", f"/v1/{name}:watch", timeout=httpx.Timeout(None)) as stream:
        for line in stream.iter_lines():
            if line.strip():
                event = json.loads(line)
                last = event.get("phaseRun", last)
                if "log" in event and event["log"].get("step") == "evomerge.evolve":
                    print("  " + event["log"]["message"], flush=True)
    run = client.get(f"/v1/{name}").json() or last
    if run.get("state") != "PHASE_RUN_STATE_SUCCEEDED":
        raise SystemExit(f"{name} ended {run.get('state')}: {run.get('error')}")
    arts = run["outputs"]["artifacts"]
    evo = client.get(f"/v1/{arts['evomerge.winner']}").json()
    bit = client.get(f"/v1/{arts['bitnet.winner']}").json()
    phases: dict[str, float] = {}
    for step in run["steps"]:
        phase = step["name"].split(".")[0]
        if "startTime" in step and "endTime" in step:
            phases[phase] = phases.get(phase, 0.0) + _seconds(step["endTime"]) - _seconds(step["startTime"])
    return {"run": name, "evomerge": evo, "bitnet": bit, "phase_seconds": phases}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-steps", type=int, default=300, help="Cognate steps per candidate")
    ap.add_argument("--seed-stride", type=int, default=0)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=3)
    ap.add_argument("--qat-steps", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=1, help="pipeline runs (EvoMerge seeds 0..n-1)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the mesh (finally) when killed

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        mesh = Mesh(MeshConfig(data_dir=Path(tmp) / "data", run_dir=Path(tmp) / "run"))
        mesh.start()
        try:
            with httpx.Client(base_url=mesh.edge_url, timeout=60, headers=bearer_headers("admin", "bench-forge")) as client:
                for i in range(args.repeat):
                    t0 = time.perf_counter()
                    params = {"cognate": {"max_steps": args.max_steps, "seed_stride": args.seed_stride},
                              "evomerge": {"population": args.population, "generations": args.generations, "seed": i},
                              "bitnet": {"qat_steps": args.qat_steps}}
                    r = run_pipeline(client, params)
                    r["seconds"] = time.perf_counter() - t0
                    rows.append(r)
        finally:
            mesh.stop()

    print("\nrun | EvoMerge val_loss / best parent | method | BitNet bytes / source | BitNet val_loss / source "
          "| bits/weight | seconds (cognate, evomerge, bitnet)")
    for i, r in enumerate(rows):
        em, bm = r["evomerge"]["metrics"], r["bitnet"]["metrics"]
        ps = r["phase_seconds"]
        print(f"{i:>3} | {em['val_loss']:.4f} / {em['best_parent_val_loss']:.4f} = "
              f"{em['val_loss'] / em['best_parent_val_loss']:.4f}x | {r['evomerge']['lineage']['mergeMethod']:>6} | "
              f"{int(bm['size_bytes']):,} / {int(bm['source_size_bytes']):,} = {bm['size_ratio']:.3f}x | "
              f"{bm['val_loss']:.4f} / {bm['source_val_loss']:.4f} = {bm['loss_ratio']:.3f}x | "
              f"{bm['bits_per_weight']:.2f} | {ps.get('cognate', 0):.0f}, {ps.get('evomerge', 0):.0f}, "
              f"{ps.get('bitnet', 0):.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
