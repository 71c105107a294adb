"""``python -m services.launcher up|run|restart|status`` — the doors behind ``make up`` and ``make run``.

``up``       start the mesh in the foreground, print the endpoints, stream every process's
             output prefixed with its name; Ctrl-C or SIGTERM stops everything (exit 0).
             A crashed service, Envoy or embedded Valkey is restarted after a growing
             delay; after too many crashes in a short window the launcher gives up, stops
             everything and exits 1 (``AF_RESTART_BURST``, ``AF_RESTART_INTERVAL_S``,
             ``AF_RESTART_DELAY_S``, ``AF_RESTART_MAX_DELAY_S``: see
             :mod:`services.shared.supervision`).
``run``      start the mesh, run the phase pipeline (Cognate's three models → EvoMerge →
             BitNet) through the edge with progress, print the winners, their metrics and
             where their weights are, then stop the mesh (exit 0 if the run SUCCEEDED).
``restart``  ``restart NAME``: ask the running ``up`` (same ``--run-dir``) to restart one
             process (a service, ``envoy`` or ``valkey``) on the same ports; prints the
             new pid once it is healthy (exit 0), or the error (exit 1).
``status``   print the running mesh's processes: pid, running, restarts.

All keep their pid file, control socket and rendered Envoy config in ``--run-dir``
(``.run/``), logs in ``.run/logs/`` (the launcher's own in ``launcher.log``), durable
state in ``--data-dir`` (``var/``); ``REDIS_URL`` in the environment replaces the
embedded Valkey.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from services.launcher.envoy_config import EdgeLimits
from services.launcher.mesh import ALL_SERVICES, REPO_ROOT, Mesh, MeshConfig, MeshStartError
from services.launcher.pidfile import MeshAlreadyRunning
from services.shared.supervision import RestartPolicy

__all__ = ["main"]

_PREFIX_WIDTH = max(len(n) for n in (*ALL_SERVICES, "envoy", "launcher"))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m services.launcher", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (("up", "run the mesh in the foreground"), ("run", "run the phase pipeline on a fresh mesh")):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--edge-port", type=int, default=int(os.environ.get("EDGE_PORT", "8080")),
                       help="Envoy edge port (default $EDGE_PORT or 8080; 0 = free)")
        p.add_argument("--admin-port", type=int, default=0, help="Envoy admin port (default: free)")
        p.add_argument("--services", default=",".join(ALL_SERVICES), help="comma-separated subset to start")
        p.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run", help="pid file, Envoy config, logs")
        p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "var", help="durable state (AF_DATA_DIR)")
        p.add_argument("--log-format", choices=("json", "text"), default="text", help="services' log format")
        p.add_argument("--training-workers", type=int, default=2)
        p.add_argument("--realtime-processes", type=int, default=None,
                       help="realtime processes behind Envoy (default: AF_REALTIME_PROCESSES, else CPUs/2, 1-4)")
        p.add_argument("--startup-timeout", type=float, default=120.0)
        if name == "run":
            p.add_argument("--phase", default="phases/pipeline",
                           help="phase to run (default: the pipeline cognate -> evomerge -> bitnet)")
            p.add_argument("--max-steps", type=int, default=150, help="Cognate optimizer steps per model")
    p = sub.add_parser("restart", help="restart one process of the running mesh")
    p.add_argument("name", help="a service, envoy or valkey")
    p.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run", help="the running mesh's run dir")
    p = sub.add_parser("status", help="the running mesh's processes")
    p.add_argument("--run-dir", type=Path, default=REPO_ROOT / ".run", help="the running mesh's run dir")
    return parser


def _config(args: argparse.Namespace) -> MeshConfig:
    services = tuple(s.strip() for s in args.services.split(",") if s.strip())
    return MeshConfig(
        edge_port=args.edge_port,
        admin_port=args.admin_port,
        redis_url=os.environ.get("REDIS_URL") or None,
        data_dir=args.data_dir,
        services=services,
        training_workers=args.training_workers,
        **({"realtime_processes": args.realtime_processes} if args.realtime_processes else {}),
        run_dir=args.run_dir,
        log_format=args.log_format,
        startup_timeout=args.startup_timeout,
        restart=RestartPolicy.from_env(),
        edge_limits=EdgeLimits.from_env(),
    )


class _Console:
    """Prefixed, line-atomic console output shared by the log threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            print(text, flush=True)

    def child(self, name: str, text: str) -> None:
        self.line(f"{name:<{_PREFIX_WIDTH}} | {text}")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _ignore(signum: int, frame: FrameType | None) -> None:
    pass


def _print_endpoints(mesh: Mesh, console: _Console) -> None:
    rows = mesh.endpoints()
    width = max(len(k) for k in rows)
    console.line("mesh is up:")
    for key, value in rows.items():
        console.line(f"  {key:<{width}}  {value}")
    url = dashboard_url(mesh.edge_url)
    if url:
        console.line(f"  {'dashboard':<{width}}  {url}")


#: How long the development sign-in link printed by ``up`` stays valid.
DASHBOARD_TOKEN_TTL_S = 12 * 3600


def dashboard_url(edge_url: str) -> str:
    """The dashboard's address with a development sign-in, as Jupyter prints its token URL.

    The token (an admin JWT signed with this checkout's development key, valid
    :data:`DASHBOARD_TOKEN_TTL_S`) sits in the fragment, which browsers never send to a
    server: the dashboard reads it once and removes it from the address bar. Only for a
    loopback edge; without the auth module, the bare address.
    """
    if not edge_url.startswith(("http://127.0.0.1:", "http://localhost:")):
        return ""
    try:
        from services.shared.auth import mint_token
    except ImportError:
        return f"{edge_url}/"
    token = mint_token("admin", subject="dashboard-dev", ttl_s=DASHBOARD_TOKEN_TTL_S)
    return f"{edge_url}/#token={token}"


def _start(mesh: Mesh, console: _Console) -> bool:
    try:
        mesh.start()
    except (MeshStartError, MeshAlreadyRunning) as exc:
        console.line(f"mesh failed to start: {exc}")
        return False
    for group in mesh.stale_cleaned:
        console.line(f"stopped {group.name} (pid {group.pid}) left over from a crashed run")
    return True


def _stop(mesh: Mesh, console: _Console, *, report_failure: bool = False) -> None:
    # A second Ctrl-C must not abort the cleanup.
    signal.signal(signal.SIGINT, _ignore)
    signal.signal(signal.SIGTERM, _ignore)
    if report_failure and mesh.failure:
        console.line(f"!! {mesh.failure}")
    console.line("stopping the mesh ...")
    mesh.stop()
    console.line("stopped")


def cmd_up(args: argparse.Namespace) -> int:
    console = _Console()
    mesh = Mesh(_config(args), echo=console.child)
    try:
        if not _start(mesh, console):
            return 1
        _print_endpoints(mesh, console)
        console.line(f"Ctrl-C stops everything; `python -m services.launcher restart NAME --run-dir {args.run_dir}`"
                     " restarts one process")
        while (failure := mesh.wait_failure(0.5)) is None:
            pass
        console.line(f"!! {failure}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(mesh, console)


def _run_token() -> str | None:
    """The token ``make run``'s own watches use: AGENTFORGE_TOKEN, else a dev viewer token."""
    if os.environ.get("AGENTFORGE_TOKEN"):
        return os.environ["AGENTFORGE_TOKEN"]
    try:
        from services.shared.auth import mint_token

        return mint_token("viewer", subject="make-run")
    except Exception:  # no dev secrets: the mesh then runs without auth too
        return None


def _run_parameters(phase: str, max_steps: int) -> dict[str, object]:
    """``make run``'s small settings: a few minutes on 2 cores for the whole pipeline."""
    if phase.removeprefix("phases/") == "pipeline":
        return {"max_steps": max_steps, "evomerge": {"population": 6, "generations": 3},
                "bitnet": {"qat_steps": 60}}
    return {"max_steps": max_steps}


def cmd_run(args: argparse.Namespace) -> int:
    from agentforge.cli.follow import PhaseFollower
    from agentforge.cli.progress import ProgressDisplay
    from agentforge.client import Client
    from services.launcher.phase_runner import PhaseRunFailed, cancel_run, run_phase

    console = _Console()
    mesh = Mesh(_config(args))  # service logs go to files only; the console shows the run
    started: list[str] = []
    try:
        console.line(f"starting the mesh (logs in {args.run_dir / 'logs'}) ...")
        if not _start(mesh, console):
            return 1
        _print_endpoints(mesh, console)
        # The CLI's progress display: a bar per training job on a terminal, plain lines in a log.
        with ProgressDisplay() as display, Client(mesh.edge_addr, _run_token()) as client:
            follower = PhaseFollower(client, display)
            try:
                result = run_phase(
                    mesh.edge_addr,
                    phase=args.phase,
                    parameters=_run_parameters(args.phase, args.max_steps),
                    out=display.line,
                    on_started=started.append,
                    on_event=follower,
                )
            except PhaseRunFailed as exc:
                display.line(f"run failed: {exc}")
                return 2
            follower.join()
        console.line(f"{result.name} ended {result.state_name}")
        outputs = result.run.outputs
        if outputs.model_version:
            console.line(f"  model version: {outputs.model_version}")
        if outputs.training_job:
            console.line(f"  training job:  {outputs.training_job}")
        for key, value in sorted(outputs.metrics.items()):
            console.line(f"  {key}: {value:.6g}")
        if result.run.error.message:
            console.line(f"  error: {result.run.error.message}")
        if result.trace_id:
            console.line(f"  trace:         forge trace {result.trace_id}  (spans in {mesh.traces_dir})")
        if result.succeeded:
            from services.launcher.summary import summary_lines

            with Client(mesh.edge_addr, _run_token()) as client:
                for line in summary_lines(result.run, lambda n: client.models.get_model_version(name=n),
                                          edge_url=mesh.edge_url, data_dir=mesh.data_dir):
                    console.line(line)
        return 0 if result.succeeded else 1
    except KeyboardInterrupt:
        if started and mesh.config.services:
            console.line(f"cancelling {started[0]} ...")
            cancel_run(mesh.edge_addr, started[0], "interrupted from the launcher")
        return 130
    finally:
        _stop(mesh, console, report_failure=True)


def cmd_control(args: argparse.Namespace) -> int:
    from services.launcher.control import ControlError, request

    try:
        if args.command == "restart":
            reply = request(args.run_dir, {"command": "restart", "name": args.name})
            print(f"{args.name} restarted (pid {reply['pid']})")
        else:
            reply = request(args.run_dir, {"command": "status"}, timeout=10)
            for name, row in reply["status"].items():
                state = "running" if row["running"] else ("held" if row["held"] else "down")
                print(f"{name:<{_PREFIX_WIDTH}}  pid {row['pid']}  {state}  restarts {row['restarts']}")
            if reply.get("failure"):
                print(f"!! {reply['failure']}")
    except ControlError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command in ("restart", "status"):
        return cmd_control(args)
    try:
        RestartPolicy.from_env()
        EdgeLimits.from_env()
    except ValueError as exc:
        print(f"launcher: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    return cmd_up(args) if args.command == "up" else cmd_run(args)


if __name__ == "__main__":
    sys.exit(main())
