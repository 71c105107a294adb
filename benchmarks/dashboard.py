"""Dashboard benchmarks: first-page bundle size, and time to first chart of a long job.

    PYTHONPATH=.:gen/python .venv/bin/python benchmarks/dashboard.py [--steps 100000] [--repeat 3]

1. bundle — the bytes a browser downloads for the first page, as the edge serves them
   (gzip): index.html plus every script and stylesheet it names (the shell), fetched
   through Envoy with ``accept-encoding: gzip``; the uncompressed size beside it. Pages
   are chunks loaded on demand, so also: what chromium actually fetched to draw the
   System page (the shell plus that page's chunks), from the page's resource timing.
2. first chart — a finished job with ``--steps`` progress events (and an evaluation
   every 1000 steps) is written into the training store the way a worker appends them
   (Store.append_events, 5000 per transaction), then the whole mesh starts on that
   data. Through the edge, over grpc-web (binary, HTTP/1.1, as the dashboard calls):
   ``GetTrainingJobMetrics`` (the dashboard's first call, 2000 points) vs
   ``WatchTrainingJob`` from the start (replaying every event to the end), each timed
   from request to the last byte with every message decoded. Median of ``--repeat``;
   the ratio is replay / history.

The chart drawing itself is the same for both (uPlot, at most a few thousand points
after the history; a replay would hand it every point).

3. live chart — the job page is open in Debian's chromium (playwright-core,
   tests/e2e/browser.py) for ``--live-seconds`` while progress events arrive at
   ``--live-rate`` per second (default 20, the issue's figure): the benchmark writes them
   for a paused job as a worker does (training store, then the job's event stream), so
   the rate is the same on any machine; ``--live-rate 0`` runs a real job instead (x·y
   mod 17, one event per step, at whatever pace the machine gives). In the page,
   requestAnimationFrame timestamps and long tasks (PerformanceObserver) are recorded. Printed: the event rate the chart received (points
   per second), frames, frames later than 1.5 frame budgets (dropped), the longest
   frame, and long tasks (> 50 ms). Skipped when chromium is missing.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from agentforge.training.v1 import request_response_pb2 as rr
from agentforge.training.v1 import training_job_event_pb2 as ev_pb
from agentforge.training.v1 import training_job_pb2 as job_pb

from services.launcher.mesh import Mesh, MeshConfig
from benchmarks._auth import bearer_headers
from tests.e2e.browser import Browser, missing_prerequisites
from services.shared.bus import BusConfig, EventBus
from services.training.queue import Keys
from services.training.store import PAUSED, RUNNING, SUCCEEDED, Store
from tests.support import grpc_web_frame, grpc_web_frames

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "/agentforge.training.v1.TrainingService/"


def _auth() -> dict[str, str]:
    return bearer_headers("admin", "bench-dashboard")


def seed_job(data_dir: Path, steps: int) -> str:
    """A SUCCEEDED job with ``steps`` progress events in ``data_dir``'s training store."""
    store = Store(data_dir / "training" / "jobs.db")
    job_id = "bench-long-job"
    spec = job_pb.TrainingJobSpec(max_steps=steps, progress_interval=1, eval_interval=1000, batch_size=64)
    store.create(job_pb.TrainingJob(name=f"trainingJobs/{job_id}", display_name="100k steps", spec=spec),
                 job_id, "")
    store.transition(job_id, RUNNING, "benchmark", worker="bench")
    batch: list[ev_pb.TrainingJobEvent] = []
    for step in range(1, steps + 1):
        loss = 3.0 * (0.99995 ** step) + 0.01 * ((step * 7919) % 13) / 13
        batch.append(ev_pb.TrainingJobEvent(progress=job_pb.TrainingProgress(
            step=step, total_steps=steps, fraction_done=step / steps, train_loss=loss,
            train_accuracy=min(1.0, step / steps * 1.2), learning_rate=1e-3, steps_per_second=400.0,
            grokfast=job_pb.GrokfastStats(slow_gradient_norm=1.0 / (1 + step / 1000), amplification_ratio=2.0,
                                          alpha=0.98, lamb=2.0))))
        if step % 1000 == 0:
            batch.append(ev_pb.TrainingJobEvent(eval_completed=job_pb.EvalMetrics(step=step, loss=loss * 1.1,
                                                                                    accuracy=step / steps)))
        if len(batch) >= 5000:
            store.append_events(job_id, batch)
            batch = []
    if batch:
        store.append_events(job_id, batch)
    store.transition(job_id, SUCCEEDED, "benchmark")
    store.close()
    return f"trainingJobs/{job_id}"


LIVE_JOB = "bench-live-job"


def seed_live_job(data_dir: Path) -> str:
    """A PAUSED job (no worker takes it) for the paced feed of :func:`feed_events`."""
    store = Store(data_dir / "training" / "jobs.db")
    spec = job_pb.TrainingJobSpec(max_steps=1_000_000, progress_interval=1, batch_size=64)
    store.create(job_pb.TrainingJob(name=f"trainingJobs/{LIVE_JOB}", display_name="live chart, paced feed",
                                    spec=spec), LIVE_JOB, "")
    store.transition(LIVE_JOB, RUNNING, "benchmark", worker="bench")
    store.transition(LIVE_JOB, PAUSED, "benchmark: fed by benchmarks/dashboard.py, no worker")
    store.close()
    # (the feed starts at step 1; the page shows an empty chart until it does)
    return f"trainingJobs/{LIVE_JOB}"


def feed_events(data_dir: Path, redis_url: str, rate: float, stop: threading.Event) -> None:
    """Progress events for :data:`LIVE_JOB` at ``rate`` per second, written as a worker
    writes them: appended to the training store (sequence, cursor), then published on
    the job's event stream, which the training service's watches follow live."""
    async def run() -> None:
        store = Store(data_dir / "training" / "jobs.db")
        bus = EventBus(BusConfig(url=redis_url))
        stream = Keys().job_events(LIVE_JOB)
        try:
            start, step = time.monotonic(), 0
            while not stop.is_set():
                step += 1
                loss = 3.0 * (0.999 ** step)
                event = ev_pb.TrainingJobEvent(progress=job_pb.TrainingProgress(
                    step=step, total_steps=1_000_000, train_loss=loss, train_accuracy=min(1.0, step / 2000),
                    learning_rate=1e-3, steps_per_second=rate,
                    grokfast=job_pb.GrokfastStats(slow_gradient_norm=1.0 / (1 + step / 100),
                                                  amplification_ratio=2.0, alpha=0.98, lamb=2.0)))
                stored = (await asyncio.to_thread(store.append_events, LIVE_JOB, [event])).events[0]
                await bus.publish(stream, stored, subject=f"trainingJobs/{LIVE_JOB}")
                await asyncio.sleep(max(0.0, start + step / rate - time.monotonic()))
        finally:
            await bus.aclose()
            store.close()

    asyncio.run(run())


def grpc_web(client: httpx.Client, method: str, request: bytes) -> tuple[float, list[bytes]]:
    """Seconds to the last byte of a grpc-web call, and its messages (trailer checked OK)."""
    headers = {"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **_auth()}
    start = time.perf_counter()
    resp = client.post(SERVICE + method, content=grpc_web_frame(request), headers=headers)
    messages, trailers = grpc_web_frames(resp.content)
    took = time.perf_counter() - start
    status = trailers.get("grpc-status", resp.headers.get("grpc-status", "0"))
    assert resp.status_code == 200 and status == "0", (resp.status_code, trailers, resp.headers)
    return took, messages


def bundle(edge: str) -> dict[str, int]:
    """index.html and the scripts/stylesheets/modulepreloads it names, through the edge."""
    with httpx.Client(base_url=edge, timeout=30) as client:
        index = client.get("/", headers={"accept-encoding": "gzip"})
        assert index.status_code == 200, index.text[:200]
        wire = len(gzip.compress(index.content)) if index.headers.get("content-encoding") != "gzip" else int(
            index.headers["content-length"])
        raw = len(index.content)
        for path in re.findall(r'(?:src|href)="(/assets/[^"]+)"', index.text):
            resp = client.get(path, headers={"accept-encoding": "gzip"})
            assert resp.status_code == 200 and resp.headers.get("content-encoding") == "gzip", path
            wire += int(resp.headers["content-length"])
            raw += len(resp.content)
    return {"gzip_bytes": wire, "raw_bytes": raw}


FIRST_PAGE_BYTES = """() => {
  const own = (e) => new URL(e.name).origin === location.origin
    && !/^\\/(agentforge|grpc)\\./.test(new URL(e.name).pathname);
  const all = [...performance.getEntriesByType("navigation"), ...performance.getEntriesByType("resource")];
  return all.filter(own).map((e) => [new URL(e.name).pathname, e.encodedBodySize, e.decodedBodySize]);
}"""


def first_page_in_browser(edge: str, tmp: Path) -> dict[str, object] | None:
    """The bytes chromium fetched to show the first page (System, until its health table
    is drawn): the document and every script, stylesheet and lazily loaded chunk from the
    edge (not the grpc-web calls), as transferred (gzip) and decoded. A fresh profile
    (nothing cached); the token handed over in the fragment, as a user signs in."""
    why = missing_prerequisites()
    if why:
        print(f"first page in the browser: skipped ({why})")
        return None
    browser = Browser(edge, tmp / "chromium-first-page")
    try:
        token = _auth().get("authorization", "").removeprefix("Bearer ")
        browser.goto(f"/#token={token}" if token else "/")
        browser.wait("tr[data-component]", timeout=60)
        files = browser.eval(FIRST_PAGE_BYTES)
    finally:
        browser.close()
    return {"gzip_bytes": sum(f[1] for f in files), "raw_bytes": sum(f[2] for f in files),
            "files": sorted(f[0] for f in files)}


FRAME_PROBE = """() => {
  window.__frames = []; window.__long = [];
  if (!window.__probing) {  // one rAF loop and one observer, however often the probe is (re)started
    window.__probing = true;
    const tick = (t) => { if (window.__frames.length < 100000) window.__frames.push(t); requestAnimationFrame(tick); };
    requestAnimationFrame(tick);
    new PerformanceObserver((l) => l.getEntries().forEach((e) => window.__long.push(e.duration)))
      .observe({ type: "longtask", buffered: false });
  }
  return true;
}"""


def live_chart_paced(mesh: Mesh, data_dir: Path, tmp: Path, seconds: float, rate: float) -> dict[str, float] | None:
    """The job page open on :data:`LIVE_JOB` while :func:`feed_events` writes ``rate``
    progress events per second; frames and long tasks recorded in the page."""
    why = missing_prerequisites()
    if why:
        print(f"live chart: skipped ({why})")
        return None
    stop = threading.Event()
    feeder = threading.Thread(target=feed_events, args=(data_dir, mesh.redis_url, rate, stop), daemon=True)
    browser = Browser(mesh.edge_url, tmp / "chromium-live")
    count = "() => +document.getElementById('chart-loss').dataset.count"
    try:
        token = _auth().get("authorization", "").removeprefix("Bearer ")
        browser.goto(f"/#token={token}" if token else "/")
        browser.goto(f"/#/jobs/{LIVE_JOB}")
        browser.wait("#chart-loss", timeout=120)
        # baseline: the same page, open, with no events arriving
        browser.eval(FRAME_PROBE)
        time.sleep(seconds)
        idle = (browser.eval("() => window.__frames"), browser.eval("() => window.__long"))
        feeder.start()
        browser.wait_fn("() => +document.getElementById('chart-loss').dataset.count > 20", timeout=120)
        browser.eval(FRAME_PROBE)
        first = int(browser.eval(count))
        time.sleep(seconds)
        last = int(browser.eval(count))
        contiguous = browser.eval("() => document.getElementById('chart-loss').dataset.contiguous")
        fed = (browser.eval("() => window.__frames"), browser.eval("() => window.__long"))
    finally:
        browser.close()
        stop.set()
        if feeder.is_alive():
            feeder.join(10)

    def frame_stats(frames: list[float], longs: list[float]) -> dict[str, float]:
        gaps = [b - a for a, b in zip(frames, frames[1:])]
        budget = statistics.median(gaps) if gaps else 16.7
        return {"frames": len(frames), "dropped": sum(g > 1.5 * budget for g in gaps), "frame_ms": budget,
                "p99_ms": sorted(gaps)[int(0.99 * (len(gaps) - 1))] if gaps else 0.0,
                "longest_ms": max(gaps, default=0.0), "long_tasks": len(longs)}

    base = frame_stats(*idle)
    print(f"live chart baseline, page open, no events, {seconds:.0f}s: {base['frames']} frames (median "
          f"{base['frame_ms']:.1f} ms, p99 {base['p99_ms']:.1f} ms), {base['dropped']} dropped, longest "
          f"{base['longest_ms']:.0f} ms, {base['long_tasks']} long tasks")
    return {"events_per_s": (last - first) / seconds, **frame_stats(*fed), "contiguous": contiguous == "true",
            "baseline_dropped": base["dropped"]}


def live_chart(edge: str, tmp: Path, seconds: float) -> dict[str, float] | None:
    why = missing_prerequisites()
    if why:
        print(f"live chart: skipped ({why})")
        return None
    body = {"displayName": "live chart", "spec": {
        "task": {"kind": "TASK_KIND_MODULAR_ARITHMETIC", "modulus": 17},
        "model": {"layers": 1, "width": 32, "heads": 2, "contextLength": 4},
        "optimizer": {"kind": "OPTIMIZER_KIND_ADAM", "learningRate": 1e-3},
        "grokfast": {"kind": "GROKFAST_KIND_EMA", "alpha": 0.98, "lamb": 2.0},
        "batchSize": 64, "maxSteps": "1000000", "evalInterval": "0", "checkpointInterval": "0",
        "progressInterval": "1", "device": "DEVICE_CPU"}}
    with httpx.Client(base_url=edge, timeout=30, headers=_auth()) as client:
        job = client.post("/v1/trainingJobs", json=body).json()
        browser = Browser(edge, tmp / "chromium")
        try:
            token = _auth().get("authorization", "").removeprefix("Bearer ")
            browser.goto(f"/#token={token}" if token else "/")
            browser.goto(f"/#/{job['name'].replace('trainingJobs', 'jobs')}")
            browser.wait_fn("() => +document.getElementById('chart-loss').dataset.count > 5", timeout=120)
            browser.eval(FRAME_PROBE)
            first = int(browser.eval("() => +document.getElementById('chart-loss').dataset.count"))
            time.sleep(seconds)
            last = int(browser.eval("() => +document.getElementById('chart-loss').dataset.count"))
            frames = browser.eval("() => window.__frames")
            longs = browser.eval("() => window.__long")
        finally:
            browser.close()
            client.post(f"/v1/{job['name']}:cancel", json={})
    gaps = [b - a for a, b in zip(frames, frames[1:])]
    budget = statistics.median(gaps) if gaps else 16.7
    return {"events_per_s": (last - first) / seconds, "frames": len(frames),
            "dropped": sum(g > 1.5 * budget for g in gaps), "frame_ms": budget,
            "longest_ms": max(gaps, default=0.0), "long_tasks": len(longs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--live-seconds", type=float, default=10.0)
    parser.add_argument("--live-rate", type=float, default=20.0,
                        help="progress events/s fed to the open job page (0: a real job at its own pace)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        t0 = time.perf_counter()
        name = seed_job(data, args.steps)
        seed_live_job(data)
        print(f"seeded {name}: {args.steps} progress events in {time.perf_counter() - t0:.1f}s")
        with Mesh(MeshConfig(data_dir=data, training_workers=1, log_dir=Path(tmp) / "logs",
                             startup_timeout=300)) as mesh:
            sizes = bundle(mesh.edge_url)
            print(f"shell (index.html and what it names): {sizes['gzip_bytes'] / 1024:.1f} KiB gzipped "
                  f"({sizes['raw_bytes'] / 1024:.1f} KiB raw)")
            page = first_page_in_browser(mesh.edge_url, Path(tmp))
            if page:
                print(f"first page as chromium loads it (System): {page['gzip_bytes'] / 1024:.1f} KiB gzipped "
                      f"({page['raw_bytes'] / 1024:.1f} KiB raw) in {len(page['files'])} files")
            history_req = rr.GetTrainingJobMetricsRequest(name=f"{name}/metrics", max_points=args.points)
            watch_req = rr.WatchTrainingJobRequest(name=name)
            histories, replays = [], []
            with httpx.Client(base_url=mesh.edge_url, timeout=600) as client:
                for _ in range(args.repeat):
                    took, msgs = grpc_web(client, "GetTrainingJobMetrics", history_req.SerializeToString())
                    metrics = job_pb.TrainingJobMetrics.FromString(msgs[0])
                    assert metrics.progress_count == args.steps and len(metrics.progress) == args.points
                    histories.append(took)
                    took, msgs = grpc_web(client, "WatchTrainingJob", watch_req.SerializeToString())
                    events = [ev_pb.TrainingJobEvent.FromString(m) for m in msgs]
                    assert sum(e.HasField("progress") for e in events) == args.steps
                    replays.append(took)
            h, r = statistics.median(histories), statistics.median(replays)
            print(f"{'first chart of a ' + str(args.steps) + '-step job':44} {'seconds':>9}")
            print(f"{'  GetTrainingJobMetrics (' + str(args.points) + ' points)':44} {h:9.3f}")
            print(f"{'  WatchTrainingJob replay (every event)':44} {r:9.3f}")
            print(f"{'  replay / history':44} {r / h:9.1f}x")
            if args.live_rate > 0:
                live = live_chart_paced(mesh, data, Path(tmp), args.live_seconds, args.live_rate)
            else:
                live = live_chart(mesh.edge_url, Path(tmp), args.live_seconds)
            if live:
                print(f"live chart over {args.live_seconds:.0f}s: {live['events_per_s']:.1f} events/s received, "
                      f"{live['frames']} frames (median {live['frame_ms']:.1f} ms"
                      + (f", p99 {live['p99_ms']:.1f} ms" if "p99_ms" in live else "")
                      + f"), {live['dropped']} dropped (> 1.5 frames), longest {live['longest_ms']:.0f} ms, "
                      f"{live['long_tasks']} long tasks"
                      + (f", chart contiguous: {live['contiguous']}" if "contiguous" in live else "")
                      + (f"; dropped vs the idle baseline: {live['dropped']} / {live['baseline_dropped']}"
                         if "baseline_dropped" in live else ""))


if __name__ == "__main__":
    main()
