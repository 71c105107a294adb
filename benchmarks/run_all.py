"""Run every benchmark in benchmarks/ (``make bench``), one subprocess each.

Known scripts get modest arguments, so the whole run takes about 10 minutes on 2
cores; any other ``benchmarks/*.py`` (except this file and ``_*.py``) runs with its
own defaults. Each script's output (its table) is streamed as it runs; a summary
follows. Exits non-zero if any script fails or runs past its time limit.

Usage::

    .venv/bin/python benchmarks/run_all.py [--only edge_unary --only bus_latency]
                                           [--quick] [--json-dir DIR] [--timeout 900]

Figures go into docs/benchmarks*.md by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KNOWN", "Bench", "discover", "main"]

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "benchmarks"


@dataclass(frozen=True)
class Bench:
    """How to run one script: normal and ``--quick`` arguments, and its JSON flag if any."""

    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()
    json_flag: str | None = None


#: Arguments for the scripts whose flags we know (read from each script's argparse).
#: Measured on 2 cores (AMD EPYC): edge_unary 26 s, bus_latency 4 s, grokfast_paper a few
#: minutes (seed 0 through the API to 95 % at step 910, the paper's loop the same, then the
#: baseline as many steps; ``--seeds 0,1,2,3,4`` for the median, by hand),
#: training_service ~1.5-2 min.
KNOWN: dict[str, Bench] = {
    "dashboard": Bench(args=("--steps", "100000", "--repeat", "3"), quick_args=("--steps", "20000", "--repeat", "1")),
    "edge_unary": Bench(
        args=("--seconds", "5", "--concurrency", "16"),
        quick_args=("--seconds", "1", "--concurrency", "8", "--warmup", "0.5"),
        json_flag="--json",
    ),
    "bus_latency": Bench(
        args=("--n", "1000"),
        quick_args=("--n", "200", "--warmup", "20"),
    ),
    "grokfast_paper": Bench(
        args=("--seeds", "0", "--max-steps", "1600"),
        quick_args=("--seeds", "0", "--max-steps", "20", "--no-baseline"),
        json_flag="--json",
    ),
    # 5,000 streams x 60 s does not fit the make-bench budget on 2 shared cores; these are
    # the sizes recorded in docs/benchmarks.md. The full run is a flag away (see its doc).
    "stream_fanout": Bench(
        args=("--streams", "2000", "--web-streams", "200", "--scenario", "1:2", "--scenario", "100:50",
              "--seconds", "30", "--watch-streams", "500", "--jobs", "10", "--job-steps", "40"),
        quick_args=("--streams", "100", "--web-streams", "10", "--scenario", "2:5", "--seconds", "2",
                    "--floor-samples", "20"),
        json_flag="--json",
    ),
    "edge_stream_memory": Bench(
        args=("--streams", "200", "--seconds", "15"),
        quick_args=("--streams", "20", "--seconds", "3", "--idle", "3"),
        json_flag="--json",
    ),
    "forge_pipeline": Bench(
        args=("--max-steps", "200"),
        quick_args=("--max-steps", "10", "--population", "2", "--generations", "1", "--qat-steps", "5"),
        json_flag="--json",
    ),
    "artifact_transfer": Bench(
        args=("--size-mib", "256", "--repeat", "2"),
        quick_args=("--size-mib", "8", "--repeat", "1"),
        json_flag="--json",
    ),
    "read_open_loop": Bench(
        args=("--seconds", "10", "--warmup", "2"),
        quick_args=("--seconds", "1", "--warmup", "0.5", "--rate", "100", "--clients", "10",
                    "--models", "3", "--versions", "5", "--jobs", "3"),
        json_flag="--json",
    ),
    "training_service": Bench(
        args=("--steps", "150", "--jobs", "6", "--job-steps", "50", "--workers", "2"),
        quick_args=("--steps", "20", "--jobs", "2", "--job-steps", "10", "--workers", "2"),
    ),
}


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """Script names to run: the known ones first (in KNOWN's order), then the rest sorted."""
    present = {p.stem for p in bench_dir.glob("*.py")
               if p.name != Path(__file__).name and not p.name.startswith("_")}
    return [n for n in KNOWN if n in present] + sorted(present - set(KNOWN))


def command(name: str, *, quick: bool, json_dir: Path | None) -> list[str]:
    bench = KNOWN.get(name, Bench())
    argv = [sys.executable, "-W", "ignore", str(BENCH_DIR / f"{name}.py"),
            *(bench.quick_args if quick else bench.args)]
    if json_dir is not None and bench.json_flag:
        argv += [bench.json_flag, str(json_dir / f"{name}.json")]
    return argv


@dataclass
class Outcome:
    name: str
    returncode: int
    seconds: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_one(name: str, argv: list[str], timeout: float) -> Outcome:
    """Run one script in its own process group, output streamed; kill the group on timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), str(ROOT / "gen" / "python"), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    print(f"\n=== {name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # timed out, or we were interrupted
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    outcome = Outcome(name, proc.returncode, time.monotonic() - t0, timed_out)
    status = "ok" if outcome.ok else ("TIMED OUT" if timed_out else f"FAILED (exit {proc.returncode})")
    print(f"=== {name}: {status} in {outcome.seconds:.0f}s", flush=True)
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", metavar="NAME", help="run only this script (repeatable)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that every script runs")
    ap.add_argument("--json-dir", type=Path, help="scripts that can write JSON write NAME.json here")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per script before it is killed")
    args = ap.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            ap.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(names)})")
        names = [n for n in names if n in args.only]
    if args.json_dir is not None:
        args.json_dir.mkdir(parents=True, exist_ok=True)
    print(f"benchmarks: {', '.join(names)}; {os.cpu_count()} CPUs shared by every process of a benchmark")

    def on_sigterm(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # the finally in run_one ends the child's group

    signal.signal(signal.SIGTERM, on_sigterm)
    outcomes = [run_one(n, command(n, quick=args.quick, json_dir=args.json_dir), args.timeout) for n in names]

    print("\n=== summary")
    width = max((len(o.name) for o in outcomes), default=4)
    for o in outcomes:
        status = "ok" if o.ok else ("timed out" if o.timed_out else f"failed (exit {o.returncode})")
        print(f"{o.name:<{width}}  {o.seconds:6.0f}s  {status}")
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
