"""``forge``: the Agent Forge command line (Typer + Rich) over :mod:`agentforge.client`.

Every command talks to the edge (``--edge`` / ``AGENTFORGE_EDGE``, default
127.0.0.1:8080) with the token from ``--token`` / ``AGENTFORGE_TOKEN``. Human output by
default; ``--json`` prints the API's JSON (the REST shapes: camelCase fields, enum names),
one object per line (NDJSON) for streams. Exit codes::

    0  ok
    1  the job / run / export failed or ended cancelled; the system is not healthy; any
       other server error
    2  usage: bad arguments, a bad spec file, INVALID_ARGUMENT from the server
    3  unavailable: the edge or a service cannot be reached, a deadline passed, rate limited
    4  not found, or not allowed (UNAUTHENTICATED / PERMISSION_DENIED)

Errors go to stderr as one clear message (with the field violations), never a traceback.
See docs/cli.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
import yaml
from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from agentforge.cli.follow import PhaseFollower, follow_job
from agentforge.cli.progress import ProgressDisplay, clean, job_state, make_console, run_state
from agentforge.client import (
    ApiError,
    AuthError,
    Client,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from agentforge.client._base import DEFAULT_EDGE
from agentforge.client.retry import backoff_delay
from agentforge.model.v1 import model_export_pb2, model_version_pb2
from agentforge.monitoring.v1 import alert_pb2, health_pb2
from agentforge.training.v1 import request_response_pb2 as training_rr
from agentforge.training.v1 import training_job_pb2

__all__ = ["app", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

app = typer.Typer(
    name="forge",
    help="Agent Forge from the terminal: training jobs, phases, models, alerts, health.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
jobs_app = typer.Typer(help="Training jobs: list, get, create, watch, cancel, pause, resume, adjust, checkpoints.",
                       no_args_is_help=True)
phases_app = typer.Typer(help="The Agent Forge phases (catalog).", no_args_is_help=True)
phase_app = typer.Typer(help="Start a phase run and follow it.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry: models, versions, artifacts, exports, aliases.",
                         no_args_is_help=True)
alerts_app = typer.Typer(help="Alerts: list, watch, acknowledge.", no_args_is_help=True)
topics_app = typer.Typer(help="Realtime topics.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(phases_app, name="phases")
app.add_typer(phase_app, name="phase")
app.add_typer(models_app, name="models")
app.add_typer(alerts_app, name="alerts")
app.add_typer(topics_app, name="topics")


class UsageFailure(Exception):
    """A mistake in what the user typed or passed (exit 2)."""


class CommandFailed(Exception):
    """The thing the command waited for failed (exit 1); the message says what."""


class NothingFound(Exception):
    """What the user named is not there (exit 4), outside the API (e.g. a trace)."""


@dataclass
class State:
    edge: str | None = None
    token: str | None = None
    json: bool = False
    timeout_s: float = 30.0
    _client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            try:
                self._client = Client(self.edge, self.token, timeout_s=self.timeout_s)
            except ValueError as exc:
                raise UsageFailure(str(exc)) from None
        return self._client


_state = State()
out = make_console()
err = make_console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (NDJSON for streams) instead of tables.")]


def _json_mode(flag: bool) -> bool:
    if flag:
        _state.json = True  # a command's own --json also makes its errors JSON
    return _state.json


@app.callback()
def _root(
    edge: Annotated[str | None, typer.Option("--edge", envvar="AGENTFORGE_EDGE", show_envvar=True,
                                             help=f"Edge address host:port (grpcs:// for TLS) [default: {DEFAULT_EDGE}]")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="AGENTFORGE_TOKEN", show_envvar=True,
                                              help="Bearer token (JWT); AF_TOKEN also works.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="JSON / NDJSON output for every command.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Deadline of each call, seconds.")] = 30.0,
) -> None:
    """Agent Forge from the terminal."""
    _state.edge, _state.token, _state.json, _state.timeout_s = edge, token, json_, timeout
    _state._client = None


# --- output helpers ----------------------------------------------------------------------


def _to_dict(msg: Message) -> dict[str, Any]:
    return json_format.MessageToDict(msg)


def _emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":"), sort_keys=False) + "\n")
    sys.stdout.flush()


def _emit(msg: Message | dict[str, Any]) -> None:
    _emit_json(_to_dict(msg) if isinstance(msg, Message) else msg)


def _cell(value: Any) -> Text:
    return Text(clean(str(value)))


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    table = Table(*columns, title=title, show_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*(_cell(v) for v in row))
    out.print(table)


def _kv(pairs: list[tuple[str, Any]]) -> None:
    table = Table(show_header=False, show_edge=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for key, value in pairs:
        if value not in ("", None):
            table.add_row(_cell(key), _cell(value))
    out.print(table)


def _name(collection: str, value: str) -> str:
    """``abc`` → ``trainingJobs/abc``; a full name is kept."""
    value = value.strip()
    if not value:
        raise UsageFailure(f"a {collection} name is required")
    return value if value.startswith(f"{collection}/") else f"{collection}/{value}"


def _ts(msg: Any) -> str:
    if msg is None or not msg.seconds and not msg.nanos:
        return ""
    return str(msg.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"))


def _loss(job: training_job_pb2.TrainingJob) -> str:
    return f"{job.progress.train_loss:.4f}" if job.progress.step else ""


T = TypeVar("T")


def _pages(fetch: Callable[[str], tuple[list[T], str]], limit: int | None) -> list[T]:
    items: list[T] = []
    token = ""
    while True:
        page, token = fetch(token)
        items.extend(page)
        if not token or (limit is not None and len(items) >= limit):
            return items[:limit] if limit is not None else items


@contextmanager
def _until(seconds: float | None) -> Iterator[Callable[[], bool]]:
    """``expired()`` for watches with ``--for``: true once ``seconds`` passed."""
    start = time.monotonic()
    yield lambda: seconds is not None and time.monotonic() - start >= seconds


# --- forge up / token --------------------------------------------------------------------


def _source_checkout() -> Path | None:
    for base in (os.environ.get("AGENTFORGE_HOME"), os.getcwd()):
        if base and (Path(base) / "services" / "launcher" / "__main__.py").exists():
            return Path(base).resolve()
    return None


def _import_server(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        root = _source_checkout()
        if root is None:
            raise UsageFailure(
                "this command runs the mesh from a source checkout: run it in the repository "
                "(or set AGENTFORGE_HOME to it) with the server extra installed "
                "(`pip install .[server]`, or `make setup`)"
            ) from None
        for path in (root / "gen" / "python", root):
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            raise UsageFailure(f"cannot load the server side ({exc}); install it with `pip install .[server]`") from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def up(ctx: typer.Context) -> None:
    """Run the whole mesh in the foreground (the launcher; same options as `make up`,
    e.g. `forge up --edge-port 0`). Ctrl-C stops it."""
    launcher = _import_server("services.launcher.__main__")
    raise typer.Exit(launcher.main(["up", *ctx.args]))


@app.command()
def token(
    role: Annotated[str, typer.Option("--role", help="viewer | trainer | operator | admin")] = "viewer",
    subject: Annotated[str, typer.Option("--sub", help="The token's subject (user name).")] = "cli",
    ttl: Annotated[float, typer.Option("--ttl", help="Lifetime in seconds.")] = 3600.0,
) -> None:
    """Mint a development token with the mesh's dev signing key (prints it on stdout)."""
    auth = _import_server("services.shared.auth")
    mint = getattr(auth, "mint_token", None)
    if mint is None:
        raise UsageFailure("this mesh has no token support yet (services.shared.auth.mint_token)")
    try:
        value = mint(role, subject=subject, ttl_s=ttl)
    except ValueError as exc:
        raise UsageFailure(str(exc)) from None
    sys.stdout.write(f"{value}\n")


# --- health ------------------------------------------------------------------------------

_HEALTH = {v: k.removeprefix("HEALTH_STATUS_") for k, v in health_pb2.HealthStatus.items()}
_KIND = {v: k.removeprefix("COMPONENT_KIND_").lower() for k, v in health_pb2.ComponentKind.items()}


def _health_rows(h: health_pb2.SystemHealth) -> list[list[Any]]:
    return [
        [c.name.removeprefix("components/"), _KIND[c.kind], _HEALTH[c.status], c.endpoint,
         f"{c.latency.ToMilliseconds()} ms" if c.HasField("latency") else "", c.message]
        for c in h.components
    ]


@app.command()
def health(
    watch: Annotated[bool, typer.Option("--watch", help="Follow health changes (a snapshot per change).")] = False,
    for_: Annotated[float | None, typer.Option("--for", help="Stop watching after this many seconds.")] = None,
    json_: JsonOpt = False,
) -> None:
    """The mesh's health: every service, Valkey and the edge. Exit 1 when not SERVING."""
    client = _state.client()
    if not watch:
        h = client.monitoring.get_system_health()
        if _json_mode(json_):
            _emit(h)
        else:
            out.print(Text(f"system: {_HEALTH[h.status]}"))
            _table(["component", "kind", "status", "endpoint", "latency", "message"], _health_rows(h))
        if h.status != health_pb2.HEALTH_STATUS_SERVING:
            raise typer.Exit(EXIT_FAILED)
        return
    with _until(for_) as expired:
        stream = client.monitoring.watch_system_health(timeout=for_)
        try:
            for h in stream:
                if _json_mode(json_):
                    _emit(h)
                else:
                    changed = ", ".join(c.removeprefix("components/") for c in h.changed_components) or "-"
                    bad = [f"{c.name.removeprefix('components/')}={_HEALTH[c.status]}" for c in h.components
                           if c.status != health_pb2.HEALTH_STATUS_SERVING]
                    out.print(Text(clean(f"{_ts(h.check_time)} system {_HEALTH[h.status]}; changed: {changed}"
                                         + (f"; not serving: {' '.join(bad)}" if bad else ""))))
                if expired():
                    return
        except UnavailableError as exc:
            if isinstance(exc, ApiError) and exc.code.name == "DEADLINE_EXCEEDED" and for_ is not None:
                return
            raise


# --- jobs --------------------------------------------------------------------------------

_JOB_STATES = {k.removeprefix("TRAINING_JOB_STATE_").lower(): v for k, v in training_job_pb2.TrainingJobState.items()
               if v}
_TERMINAL_JOB = {training_job_pb2.TRAINING_JOB_STATE_SUCCEEDED, training_job_pb2.TRAINING_JOB_STATE_FAILED,
                 training_job_pb2.TRAINING_JOB_STATE_CANCELLED}


def _job_row(j: training_job_pb2.TrainingJob) -> list[Any]:
    total = j.spec.max_steps or j.progress.total_steps
    return [j.name.removeprefix("trainingJobs/"), j.display_name, job_state(j.state),
            f"{j.progress.step}/{total}" if total else j.progress.step, _loss(j), _ts(j.create_time)]


def _show_job(j: training_job_pb2.TrainingJob, json_: bool) -> None:
    if _json_mode(json_):
        _emit(j)
        return
    total = j.spec.max_steps or j.progress.total_steps
    _kv([
        ("name", j.name), ("display name", j.display_name), ("state", job_state(j.state)),
        ("step", f"{j.progress.step}/{total}"), ("train loss", _loss(j)),
        ("eval accuracy", f"{j.progress.eval.accuracy:.3f}" if j.progress.HasField("eval") else ""),
        ("phase run", j.phase_run), ("worker", j.worker), ("latest checkpoint", j.latest_checkpoint),
        ("error", j.error.message), ("created", _ts(j.create_time)), ("ended", _ts(j.end_time)),
    ])


@jobs_app.command("list")
def jobs_list(
    state: Annotated[list[str] | None, typer.Option("--state", help=f"Filter: {', '.join(_JOB_STATES)}.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many jobs.")] = 50,
    json_: JsonOpt = False,
) -> None:
    """Training jobs, newest first."""
    states = []
    for s in state or []:
        if s.lower() not in _JOB_STATES:
            raise UsageFailure(f"--state {s!r}: expected one of {', '.join(_JOB_STATES)}")
        states.append(_JOB_STATES[s.lower()])
    client = _state.client()

    def fetch(tok: str) -> tuple[list[training_job_pb2.TrainingJob], str]:
        r = client.training.list_training_jobs(page_size=min(limit, 1000), page_token=tok, states=states)
        return list(r.training_jobs), r.next_page_token

    jobs = _pages(fetch, limit)
    if _json_mode(json_):
        _emit({"trainingJobs": [_to_dict(j) for j in jobs]})
        return
    _table(["job", "display name", "state", "step", "loss", "created"], [_job_row(j) for j in jobs])


@jobs_app.command("get")
def jobs_get(job: Annotated[str, typer.Argument(help="Job id or trainingJobs/{id}.")], json_: JsonOpt = False) -> None:
    """One training job."""
    _show_job(_state.client().training.get_training_job(name=_name("trainingJobs", job)), json_)


def _load_spec(path: Path) -> training_job_pb2.TrainingJob:
    try:
        text = sys.stdin.read() if str(path) == "-" else path.read_text()
    except OSError as exc:
        raise UsageFailure(f"cannot read the spec file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageFailure(f"{path}: not valid YAML/JSON: {clean(str(exc))}") from None
    if not isinstance(data, dict):
        raise UsageFailure(f"{path}: expected a TrainingJob object (displayName, spec, labels), got {type(data).__name__}")
    try:
        return json_format.ParseDict(data, training_job_pb2.TrainingJob())
    except json_format.ParseError as exc:
        raise UsageFailure(f"{path}: {exc}") from None


def _watch_job_json(client: Client, name: str) -> training_job_pb2.TrainingJob:
    for event in client.training.watch_training_job(name=name):
        _emit(event)
    return client.training.get_training_job(name=name)


def _job_exit(job: training_job_pb2.TrainingJob) -> None:
    if job.state != training_job_pb2.TRAINING_JOB_STATE_SUCCEEDED:
        detail = f": {job.error.message}" if job.error.message else ""
        raise CommandFailed(f"{job.name} ended {job_state(job.state)}{detail}")


@jobs_app.command("create")
def jobs_create(
    file: Annotated[Path, typer.Option("-f", "--file", help="TrainingJob as YAML or JSON (the REST body); - for stdin.")],
    job_id: Annotated[str, typer.Option("--id", help="Job id (generated when empty).")] = "",
    follow: Annotated[bool, typer.Option("--follow", help="Follow its progress until it ends.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Create a training job from a spec file."""
    job_msg = _load_spec(file)
    client = _state.client()
    job = client.training.create_training_job(training_job=job_msg, training_job_id=job_id)
    if not follow:
        if _json_mode(json_):
            _emit(job)
        else:
            out.print(Text(f"created {job.name} ({job_state(job.state)})"))
        return
    if _json_mode(json_):
        _emit(job)
        _job_exit(_watch_job_json(client, job.name))
        return
    with ProgressDisplay() as display:
        display.line(f"created {job.name}")
        final = follow_job(client, job.name, display)
    _job_exit(final)


@jobs_app.command("watch")
def jobs_watch(job: Annotated[str, typer.Argument(help="Job id or trainingJobs/{id}.")], json_: JsonOpt = False) -> None:
    """Follow a job (progress bar with step, loss and ETA; NDJSON events with --json) until it
    ends; exit 1 unless it SUCCEEDED. Reconnects by itself if the stream drops."""
    client = _state.client()
    name = _name("trainingJobs", job)
    if _json_mode(json_):
        _job_exit(_watch_job_json(client, name))
        return
    with ProgressDisplay() as display:
        final = follow_job(client, name, display)
    out.print(Text(f"{final.name} ended {job_state(final.state)}"))
    _job_exit(final)


def _job_action(verb: str, job: str, json_: bool) -> None:
    client = _state.client()
    name = _name("trainingJobs", job)
    if verb == "cancel":
        result = client.training.cancel_training_job(name=name)
    elif verb == "pause":
        result = client.training.pause_training_job(name=name)
    else:
        result = client.training.resume_training_job(name=name)
    if _json_mode(json_):
        _emit(result)
    else:
        out.print(Text(f"{result.name}: {job_state(result.state)}"))


@jobs_app.command("cancel")
def jobs_cancel(job: Annotated[str, typer.Argument(help="Job id.")], json_: JsonOpt = False) -> None:
    """Cancel a queued, running or paused job."""
    _job_action("cancel", job, json_)


@jobs_app.command("pause")
def jobs_pause(job: Annotated[str, typer.Argument(help="Job id.")], json_: JsonOpt = False) -> None:
    """Pause a running job (it checkpoints and releases its worker)."""
    _job_action("pause", job, json_)


@jobs_app.command("resume")
def jobs_resume(job: Annotated[str, typer.Argument(help="Job id.")], json_: JsonOpt = False) -> None:
    """Queue a paused job again (it resumes from its checkpoint)."""
    _job_action("resume", job, json_)


@jobs_app.command("adjust")
def jobs_adjust(
    job: Annotated[str, typer.Argument(help="Job id.")],
    learning_rate: Annotated[float | None, typer.Option("--learning-rate", "--lr")] = None,
    grokfast_alpha: Annotated[float | None, typer.Option("--grokfast-alpha")] = None,
    grokfast_lamb: Annotated[float | None, typer.Option("--grokfast-lamb")] = None,
    json_: JsonOpt = False,
) -> None:
    """Change a running job's learning rate or GrokFast alpha/lambda at its next step."""
    fields = {k: v for k, v in (("learning_rate", learning_rate), ("grokfast_alpha", grokfast_alpha),
                                ("grokfast_lamb", grokfast_lamb)) if v is not None}
    if not fields:
        raise UsageFailure("give at least one of --learning-rate, --grokfast-alpha, --grokfast-lamb")
    request = training_rr.AdjustTrainingJobRequest(name=_name("trainingJobs", job), **fields)
    result = _state.client().training.adjust_training_job(request)
    if _json_mode(json_):
        _emit(result)
    else:
        out.print(Text(f"{result.name}: adjusted ({', '.join(f'{k}={v:g}' for k, v in fields.items())})"))


@jobs_app.command("checkpoints")
def jobs_checkpoints(job: Annotated[str, typer.Argument(help="Job id.")], json_: JsonOpt = False) -> None:
    """A job's retained checkpoints, newest first."""
    client = _state.client()
    name = _name("trainingJobs", job)

    def fetch(tok: str) -> tuple[list[Any], str]:
        r = client.training.list_checkpoints(parent=name, page_size=1000, page_token=tok)
        return list(r.checkpoints), r.next_page_token

    cks = _pages(fetch, None)
    if _json_mode(json_):
        _emit({"checkpoints": [_to_dict(c) for c in cks]})
        return
    _table(["checkpoint", "step", "bytes", "final", "sha256", "created"],
           [[c.name.rpartition("/")[2], c.step, c.size_bytes, "yes" if c.final else "", c.sha256[:12],
             _ts(c.create_time)] for c in cks])


# --- phases ------------------------------------------------------------------------------


@phases_app.command("list")
def phases_list(json_: JsonOpt = False) -> None:
    """The phases, in pipeline order, with whether they can run."""
    client = _state.client()

    def fetch(tok: str) -> tuple[list[Any], str]:
        r = client.forge.list_phases(page_size=1000, page_token=tok)
        return list(r.phases), r.next_page_token

    phases = _pages(fetch, None)
    if _json_mode(json_):
        _emit({"phases": [_to_dict(p) for p in phases]})
        return
    _table(["phase", "display name", "available", "parameters", "latest run"],
           [[p.name.removeprefix("phases/"), p.display_name, "yes" if p.available else "no",
             ", ".join(s.name for s in p.parameters), p.latest_run] for p in phases])


def _param(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageFailure(f"--param {text!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def follow_phase_run(client: Client, name: str, display: ProgressDisplay) -> Any:
    """Follow a phase run to its end, with a bar per training job its steps start;
    returns the final ``PhaseRun``."""
    follower = PhaseFollower(client, display)
    for event in client.forge.watch_phase_run(name=name):
        follower(event)
    follower.join()
    return client.forge.get_phase_run(name=name)


def _run_exit(run: Any) -> None:
    if run.state != 4:  # PHASE_RUN_STATE_SUCCEEDED
        detail = f": {run.error.message}" if run.error.message else ""
        raise CommandFailed(f"{run.name} ended {run_state(run.state)}{detail}")


@phase_app.command("start")
def phase_start(
    phase: Annotated[str, typer.Argument(help="Phase id (cognate, evomerge, ...) or phases/{id}.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Parameter key=value (repeatable); "
                                                    "the value is parsed as JSON when it can be.")] = None,
    input_model: Annotated[str, typer.Option("--input-model", help="Input model version (models/m/versions/v).")] = "",
    follow: Annotated[bool, typer.Option("--follow", help="Follow the run until it ends; exit 1 unless it SUCCEEDED.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Start a phase run."""
    params = struct_pb2.Struct()
    params.update(dict(_param(p) for p in param or []))
    client = _state.client()
    run = client.forge.start_phase_run(phase=_name("phases", phase), parameters=params,
                                       input_model_version=input_model)
    if _json_mode(json_):
        _emit(run)
        if follow:
            for event in client.forge.watch_phase_run(name=run.name):
                _emit(event)
            _run_exit(client.forge.get_phase_run(name=run.name))
        return
    if not follow:
        out.print(Text(f"started {run.name} ({run_state(run.state)})"))
        return
    with ProgressDisplay() as display:
        display.line(f"started {run.name} ({phase})")
        final = follow_phase_run(client, run.name, display)
        display.line(f"{final.name} ended {run_state(final.state)}")
        for key, value in sorted(final.outputs.metrics.items()):
            display.line(f"  {key}: {value:.6g}")
        if final.outputs.model_version:
            display.line(f"  model version: {final.outputs.model_version}")
    _run_exit(final)


# --- models ------------------------------------------------------------------------------

_FORMATS = {k.removeprefix("ARTIFACT_FORMAT_").lower().replace("_", "-"): v
            for k, v in model_version_pb2.ArtifactFormat.items() if v}


def _version_name(value: str) -> str:
    """``m/3`` or ``m@prod`` → ``models/m/versions/3`` / ``.../versions/prod``."""
    value = value.strip().removeprefix("models/")
    if "@" in value:
        model, _, version = value.partition("@")
        return f"models/{model}/versions/{version}"
    model, sep, rest = value.partition("/")
    if not sep:
        raise UsageFailure(f"{value!r}: expected MODEL/VERSION, MODEL@ALIAS or models/MODEL/versions/VERSION")
    version = rest.removeprefix("versions/")
    return f"models/{model}/versions/{version}"


@models_app.command("list")
def models_list(limit: Annotated[int, typer.Option("--limit", min=1)] = 100, json_: JsonOpt = False) -> None:
    """Registered models."""
    client = _state.client()

    def fetch(tok: str) -> tuple[list[Any], str]:
        r = client.models.list_models(page_size=min(limit, 1000), page_token=tok)
        return list(r.models), r.next_page_token

    models = _pages(fetch, limit)
    if _json_mode(json_):
        _emit({"models": [_to_dict(m) for m in models]})
        return
    _table(["model", "display name", "versions", "latest", "aliases"],
           [[m.name.removeprefix("models/"), m.display_name, m.version_count, m.latest_version.rpartition("/")[2],
             ", ".join(f"{k}={v.rpartition('/')[2]}" for k, v in sorted(m.aliases.items()))] for m in models])


@models_app.command("get")
def models_get(model: Annotated[str, typer.Argument(help="Model id, MODEL/VERSION or MODEL@ALIAS.")],
               json_: JsonOpt = False) -> None:
    """A model, or one version of it."""
    client = _state.client()
    bare = model.removeprefix("models/")
    if "/" in bare or "@" in bare:
        v = client.models.get_model_version(name=_version_name(model))
        if _json_mode(json_):
            _emit(v)
            return
        _kv([("name", v.name), ("state", model_version_pb2.ModelVersionState.Name(v.state).removeprefix("MODEL_VERSION_STATE_")),
             ("aliases", ", ".join(v.aliases)), ("training job", v.lineage.training_job),
             ("phase run", v.lineage.phase_run), ("artifact", f"{v.artifact.size_bytes} bytes sha256 {v.artifact.sha256}"),
             ("metrics", ", ".join(f"{k}={x:.4g}" for k, x in sorted(v.metrics.items()))),
             ("created", _ts(v.create_time))])
        return
    m = client.models.get_model(name=_name("models", model))
    if _json_mode(json_):
        _emit(m)
        return
    _kv([("name", m.name), ("display name", m.display_name), ("description", m.description),
         ("versions", m.version_count), ("latest", m.latest_version),
         ("aliases", ", ".join(f"{k}={v}" for k, v in sorted(m.aliases.items()))), ("created", _ts(m.create_time))])


@models_app.command("versions")
def models_versions(model: Annotated[str, typer.Argument(help="Model id.")], json_: JsonOpt = False) -> None:
    """A model's versions."""
    client = _state.client()
    parent = _name("models", model)

    def fetch(tok: str) -> tuple[list[Any], str]:
        r = client.models.list_model_versions(parent=parent, page_size=1000, page_token=tok)
        return list(r.model_versions), r.next_page_token

    versions = _pages(fetch, None)
    if _json_mode(json_):
        _emit({"modelVersions": [_to_dict(v) for v in versions]})
        return
    _table(["version", "state", "aliases", "bytes", "training job", "created"],
           [[v.name.rpartition("/")[2], model_version_pb2.ModelVersionState.Name(v.state).removeprefix("MODEL_VERSION_STATE_"),
             ", ".join(v.aliases), v.artifact.size_bytes, v.lineage.training_job, _ts(v.create_time)] for v in versions])


def _download(client: Client, name: str, dest: Path, quiet: bool) -> dict[str, Any]:
    """Download into ``dest`` via ``dest.part`` (resumed when present), verify sha256."""
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    resolved = name
    if part.exists() and meta_path.exists():
        try:
            resolved = json.loads(meta_path.read_text()).get("model_version") or name
        except (OSError, ValueError):
            part.unlink(missing_ok=True)
    elif part.exists():
        part.unlink()
    offset = part.stat().st_size if part.exists() else 0
    total = sha = ""
    size = 0
    display = ProgressDisplay(sys.stderr, plain_interval_s=2.0)
    bar = None
    progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                        TimeRemainingColumn(), console=display.console) if display.tty and not quiet else None
    if offset and not quiet:
        display.line(f"resuming {resolved} at byte {offset}")
    attempts = 0
    last_report = 0.0
    try:
        if progress is not None:
            progress.start()
        while True:
            started_at = offset
            fh = None  # the .part file is created with the first bytes, not before
            try:
                for chunk in client.models.download_model_artifact(name=resolved, offset=offset):
                    if chunk.data and chunk.offset != offset:
                        raise CommandFailed(f"server sent bytes at {chunk.offset}, expected {offset}")
                    if resolved != chunk.model_version and chunk.model_version:
                        resolved = chunk.model_version
                    if not meta_path.exists():
                        meta_path.write_text(json.dumps({"model_version": resolved}))
                    if fh is None:
                        fh = part.open("ab")
                    fh.write(chunk.data)
                    offset += len(chunk.data)
                    size, sha = chunk.total_size_bytes or size, chunk.sha256 or sha
                    if progress is not None:
                        if bar is None:
                            bar = progress.add_task(clean(resolved), total=size, completed=offset)
                        progress.update(bar, completed=offset)
                    elif not quiet and (time.monotonic() - last_report > 2 or offset >= size):
                        last_report = time.monotonic()
                        display.line(f"{resolved}: {offset}/{size} bytes")
                break
            except InvalidArgumentError as exc:
                if exc.code.name != "OUT_OF_RANGE" or not offset:
                    raise
                # The partial file is already whole: verify it against the version's sha256.
                artifact = client.models.get_model_version(name=resolved).artifact
                size, sha = artifact.size_bytes, artifact.sha256
                break
            except UnavailableError:
                # The stream broke mid-file: resume from what arrived (never loop on nothing).
                attempts = 0 if offset > started_at else attempts + 1
                if attempts > 3 or not offset:
                    raise
                time.sleep(backoff_delay(attempts + 1, initial_s=0.2, max_s=2.0, jitter=0.0))
            finally:
                if fh is not None:
                    fh.close()
    finally:
        if progress is not None:
            progress.stop()
    total = str(size)
    part.touch()  # an empty artifact sent no bytes
    digest = hashlib.sha256()
    with part.open("rb") as src:
        for block in iter(lambda: src.read(1 << 20), b""):
            digest.update(block)
    if sha and digest.hexdigest() != sha:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise CommandFailed(f"sha256 mismatch for {resolved}: got {digest.hexdigest()}, expected {sha}; "
                            "the partial file was removed, run the command again")
    part.replace(dest)
    meta_path.unlink(missing_ok=True)
    return {"modelVersion": resolved, "path": str(dest), "sizeBytes": total, "sha256": digest.hexdigest()}


@models_app.command("download")
def models_download(
    version: Annotated[str, typer.Argument(help="MODEL/VERSION, MODEL@ALIAS or models/M/versions/V.")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="File to write [default: MODEL-VERSION.bin].")] = None,
    json_: JsonOpt = False,
) -> None:
    """Download a version's artifact with a progress bar; resumes a partial download
    (OUTPUT.part) and verifies the sha256 before it renames the file into place."""
    name = _version_name(version)
    dest = output or Path(f"{name.split('/')[1]}-{name.rpartition('/')[2]}.bin")
    result = _download(_state.client(), name, dest, quiet=_json_mode(json_))
    if _json_mode(json_):
        _emit(result)
    else:
        out.print(Text(f"{result['modelVersion']} -> {result['path']} ({result['sizeBytes']} bytes, sha256 {result['sha256']})"))


@models_app.command("export")
def models_export(
    version: Annotated[str, typer.Argument(help="MODEL/VERSION (a version id).")],
    fmt: Annotated[str, typer.Option("--format", help=f"{', '.join(_FORMATS)}.")] = "onnx",
    force: Annotated[bool, typer.Option("--force", help="Export again even if an export exists.")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the export ends.")] = True,
    json_: JsonOpt = False,
) -> None:
    """Export a version to ONNX / TorchScript / safetensors; exit 1 if the export fails."""
    if fmt.lower() not in _FORMATS:
        raise UsageFailure(f"--format {fmt!r}: expected one of {', '.join(_FORMATS)}")
    client = _state.client()
    export = client.models.export_model_version(name=_version_name(version), format=_FORMATS[fmt.lower()], force=force)
    done = {model_export_pb2.MODEL_EXPORT_STATE_SUCCEEDED, model_export_pb2.MODEL_EXPORT_STATE_FAILED}
    deadline = time.monotonic() + 600
    while wait and export.state not in done and time.monotonic() < deadline:
        time.sleep(0.5)
        export = client.models.get_model_export(name=export.name)
    state = model_export_pb2.ModelExportState.Name(export.state).removeprefix("MODEL_EXPORT_STATE_")
    if _json_mode(json_):
        _emit(export)
    else:
        out.print(Text(clean(f"{export.name}: {state}" + (f" ({export.size_bytes} bytes, sha256 {export.sha256})"
                                                           if export.sha256 else ""))))
    if export.state == model_export_pb2.MODEL_EXPORT_STATE_FAILED:
        raise CommandFailed(f"{export.name} failed: {export.error.message}")


@models_app.command("alias")
def models_alias(
    model: Annotated[str, typer.Argument(help="Model id.")],
    alias: Annotated[str, typer.Argument(help="Alias, e.g. prod.")],
    version: Annotated[str | None, typer.Argument(help="Version id to point it at (omit with --delete).")] = None,
    delete: Annotated[bool, typer.Option("--delete", help="Remove the alias.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Point an alias at a version (or remove it with --delete)."""
    client = _state.client()
    name = _name("models", model)
    if delete:
        m = client.models.delete_model_alias(name=name, alias=alias)
    else:
        if not version:
            raise UsageFailure("give the VERSION to point the alias at, or --delete")
        m = client.models.set_model_alias(name=name, alias=alias, version=version.rpartition("/")[2])
    if _json_mode(json_):
        _emit(m)
    else:
        out.print(Text(clean(f"{m.name}: aliases " + (", ".join(f"{k}={v}" for k, v in sorted(m.aliases.items())) or "-"))))


# --- alerts ------------------------------------------------------------------------------

_SEVERITY = {k.removeprefix("ALERT_SEVERITY_").lower(): v for k, v in alert_pb2.AlertSeverity.items() if v}
_ALERT_STATE = {k.removeprefix("ALERT_STATE_").lower(): v for k, v in alert_pb2.AlertState.items() if v}


def _alert_row(a: alert_pb2.Alert) -> list[Any]:
    return [a.name.removeprefix("alerts/"), alert_pb2.AlertSeverity.Name(a.severity).removeprefix("ALERT_SEVERITY_"),
            alert_pb2.AlertState.Name(a.state).removeprefix("ALERT_STATE_"), a.summary, _ts(a.fire_time)]


@alerts_app.command("list")
def alerts_list(
    state: Annotated[list[str] | None, typer.Option("--state", help=f"{', '.join(_ALERT_STATE)}.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1)] = 100,
    json_: JsonOpt = False,
) -> None:
    """Alerts, newest first."""
    states = []
    for s in state or []:
        if s.lower() not in _ALERT_STATE:
            raise UsageFailure(f"--state {s!r}: expected one of {', '.join(_ALERT_STATE)}")
        states.append(_ALERT_STATE[s.lower()])
    client = _state.client()

    def fetch(tok: str) -> tuple[list[Any], str]:
        r = client.monitoring.list_alerts(page_size=min(limit, 1000), page_token=tok, states=states)
        return list(r.alerts), r.next_page_token

    alerts = _pages(fetch, limit)
    if _json_mode(json_):
        _emit({"alerts": [_to_dict(a) for a in alerts]})
        return
    _table(["alert", "severity", "state", "summary", "fired"], [_alert_row(a) for a in alerts])


@alerts_app.command("watch")
def alerts_watch(
    for_: Annotated[float | None, typer.Option("--for", help="Stop after this many seconds.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Follow alert events (retained history first); reconnects by itself."""
    client = _state.client()
    try:
        for ev in client.monitoring.watch_alerts(timeout=for_):
            if _json_mode(json_):
                _emit(ev)
            else:
                kind = alert_pb2.AlertChangeKind.Name(ev.kind).removeprefix("ALERT_CHANGE_KIND_")
                out.print(Text(clean(f"{_ts(ev.time)} {kind} {' '.join(str(x) for x in _alert_row(ev.alert)[:4])}")))
    except UnavailableError as exc:
        if exc.code.name == "DEADLINE_EXCEEDED" and for_ is not None:
            return
        raise


@alerts_app.command("ack")
def alerts_ack(
    alert: Annotated[str, typer.Argument(help="Alert id or alerts/{id}.")],
    by: Annotated[str, typer.Option("--by", help="Who acknowledges it.")] = "",
    comment: Annotated[str, typer.Option("--comment")] = "",
    json_: JsonOpt = False,
) -> None:
    """Acknowledge a firing alert."""
    who = by or os.environ.get("USER") or "forge-cli"
    a = _state.client().monitoring.acknowledge_alert(name=_name("alerts", alert), acknowledged_by=who, comment=comment)
    if _json_mode(json_):
        _emit(a)
    else:
        out.print(Text(clean(f"{a.name}: {alert_pb2.AlertState.Name(a.state).removeprefix('ALERT_STATE_')}")))


# --- topics ------------------------------------------------------------------------------


@topics_app.command("subscribe")
def topics_subscribe(
    topics: Annotated[list[str] | None, typer.Argument(help="Topic ids, e.g. trainingJobs/abc, alerts.")] = None,
    pattern: Annotated[list[str] | None, typer.Option("--pattern", help="Topic pattern, e.g. 'trainingJobs/*'.")] = None,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Start with the retained history.")] = False,
    count: Annotated[int | None, typer.Option("--count", min=1, help="Stop after this many messages.")] = None,
    for_: Annotated[float | None, typer.Option("--for", help="Stop after this many seconds.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Print messages of topics as they arrive (heartbeats are not shown); reconnects and
    resumes by cursor by itself."""
    if not topics and not pattern:
        raise UsageFailure("name at least one topic or --pattern")
    client = _state.client()
    seen = 0
    try:
        for item in client.realtime.subscribe(topics=topics or [], topic_patterns=pattern or [],
                                              from_beginning=from_beginning, timeout=for_):
            kind = item.WhichOneof("kind")
            if kind == "heartbeat":
                continue
            if _json_mode(json_):
                _emit(item)
            elif kind == "message":
                m = item.message
                body = json_format.MessageToDict(m)
                body = body.get("data", body.get("payload", {}))
                out.print(Text(clean(f"{_ts(m.publish_time)} {m.topic} #{m.sequence} {json.dumps(body)}")))
            else:
                out.print(Text(clean(f"{kind}: {json.dumps(json_format.MessageToDict(getattr(item, kind)))}")))
            if kind == "message":
                seen += 1
                if count is not None and seen >= count:
                    return
    except UnavailableError as exc:
        if exc.code.name == "DEADLINE_EXCEEDED" and for_ is not None:
            return
        raise


# --- traces ------------------------------------------------------------------------------


@app.command()
def trace(
    trace_id: Annotated[str | None, typer.Argument(help="A trace id (32 hex digits, or a unique prefix); "
                                                        "none: list the newest traces.")] = None,
    directory: Annotated[Path | None, typer.Option("--dir", help="The trace files "
                                                   "[default: AF_TRACES_DIR, else .run/traces]")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="How many traces to list.")] = 20,
    json_: JsonOpt = False,
) -> None:
    """Print a trace as a tree, from the mesh's OTLP/JSON trace files (written when no
    collector is configured; docs/observability.md). Reads files only: no edge, no token."""
    from agentforge.cli import traces

    where = directory or traces.default_traces_dir()
    if not where.is_dir():
        raise NothingFound(f"no trace directory {where} (is the mesh running with AF_TRACES_DIR there?)")
    if trace_id is None:
        found = traces.summaries(traces.load_spans(where))[:limit]
        if _json_mode(json_):
            for t in found:
                _emit_json({"traceId": t.trace_id, "root": t.root, "service": t.service, "spans": t.spans,
                            "startTimeUnixNano": str(t.start_ns), "durationMs": round(t.duration_ms, 3)})
            return
        _table(["trace", "root span", "service", "spans", "duration"],
               [[t.trace_id, t.root, t.service, t.spans, f"{t.duration_ms:.1f} ms"] for t in found])
        return
    if len(trace_id) < 8 or any(c not in "0123456789abcdef" for c in trace_id.lower()):
        raise UsageFailure(f"{trace_id!r}: a trace id is hex, at least 8 digits of it")
    try:
        full, spans = traces.find_trace(where, trace_id)
    except LookupError as exc:
        raise NothingFound(str(exc)) from None
    if _json_mode(json_):
        for s in sorted(spans, key=lambda s: s.start_ns):
            _emit_json({"traceId": s.trace_id, "spanId": s.span_id, "parentSpanId": s.parent_id, "name": s.name,
                        "kind": s.kind, "service": s.service, "startTimeUnixNano": str(s.start_ns),
                        "endTimeUnixNano": str(s.end_ns), "status": s.status, "attributes": s.attributes,
                        "links": [{"traceId": t, "spanId": i} for t, i in s.links]})
        return
    for line in traces.render_tree(full, spans):
        out.print(Text(clean(line)), soft_wrap=True)


# --- entry point -------------------------------------------------------------------------


def exit_code(exc: BaseException) -> int:
    """The documented exit code for a failure."""
    if isinstance(exc, (UsageFailure, InvalidArgumentError)):
        return EXIT_USAGE
    if isinstance(exc, (UnavailableError, ResourceExhaustedError)):
        return EXIT_UNAVAILABLE
    if isinstance(exc, (NotFoundError, AuthError, NothingFound)):
        return EXIT_NOT_FOUND
    return EXIT_FAILED


def _fail(exc: BaseException) -> NoReturn:
    code = exit_code(exc)
    if isinstance(exc, ApiError):
        where = ""
        if isinstance(exc, UnavailableError) and _state._client is not None:
            where = f" (edge {_state._client.target})"
        text = exc.message
        if exc.field_violations and all(v.description in text for v in exc.field_violations):
            text = f"{len(exc.field_violations)} invalid field(s)"  # listed below, once
        message = f"error: {exc.code.name}{where}: {text}"
        if exc.reason and exc.reason != exc.code.name:
            message += f" [{exc.reason}]"
        lines = [message] + [f"  {v.field}: {v.description}" for v in exc.field_violations]
        if isinstance(exc, UnavailableError):
            lines.append("  is the mesh up? (`forge up` / `make up`; --edge or AGENTFORGE_EDGE)")
        elif isinstance(exc, ResourceExhaustedError) and exc.retry_delay_s is not None:
            lines.append(f"  rate limited: retry in {exc.retry_delay_s:g} s")
        elif isinstance(exc, AuthError) and exc.code.name == "UNAUTHENTICATED":
            lines.append("  pass a token: --token or AGENTFORGE_TOKEN (`make token ROLE=viewer`, `forge token`)")
    else:
        lines = [f"error: {exc}"]
    if _state.json:
        payload = exc.to_dict() if isinstance(exc, ApiError) else {"message": str(exc)}
        sys.stderr.write(json.dumps({"error": payload, "exitCode": code}) + "\n")
    else:
        for line in lines:
            err.print(Text(clean(line)))
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """The ``forge`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    json_errors = "--json" in args  # a command's own --json too, even when it fails before output
    try:
        app(args=args, prog_name="forge", standalone_mode=True)
    except (ApiError, UsageFailure, CommandFailed, NothingFound) as exc:
        _state.json = _state.json or json_errors
        _fail(exc)
    except KeyboardInterrupt:
        err.print(Text("interrupted"))
        raise SystemExit(130) from None
    finally:
        if _state._client is not None:
            _state._client.close()
            _state._client = None


if __name__ == "__main__":
    main()
