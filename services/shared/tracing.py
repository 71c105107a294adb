"""Distributed tracing: the one OpenTelemetry setup and propagation of every service.

A trace starts at the edge (Envoy's OpenTelemetry tracer starts or continues the W3C
``traceparent`` of every request, see envoy/README.md) and every process continues it:

* **gRPC server spans** (:func:`start_server_span`, called by
  :class:`services.shared.interceptors.TracingInterceptor`, outermost in the server chain):
  the incoming ``traceparent``/``tracestate`` metadata is the parent; span name
  ``{rpc.service}/{rpc.method}``, kind SERVER, attributes ``rpc.system=grpc``,
  ``rpc.service``, ``rpc.method``, ``rpc.grpc.status_code`` (OpenTelemetry semantic
  conventions for RPC).
* **gRPC client spans** (:func:`start_client_span`, called by the client interceptor of
  :func:`services.shared.client.make_channel`): kind CLIENT, the same attributes, and
  its context goes out as ``traceparent``.
* **Redis**: every command and pipeline is a CLIENT span with ``db.system=redis`` and
  the sanitized ``db.statement`` (``XADD ? ? ?``), from the contrib
  ``opentelemetry-instrumentation-redis`` (redis.asyncio).
* **The bus**: :func:`producer_span` (``send <stream>``, kind PRODUCER) wraps every
  publish, and its context is the entry's ``traceparent``; a consumer processes one entry
  in :func:`consumer_span` (``process <stream>``, kind CONSUMER), which is a child of the
  publisher's span *and* links to it (OpenTelemetry messaging conventions: a process
  span links to the message's creation context), so one trace follows a request
  across the bus: REST → forge → training → the worker that runs the job → the model
  registry's hand-off.
* Work that outlives the call that started it (a saga) starts from
  :func:`fresh_context`: a new contextvars context that keeps only the trace.

Sampling: a trace that arrives sampled (Envoy samples every request) is recorded
everywhere (``ParentBased``). Without a parent, spans of background work are not
recorded: Redis commands and client calls of loops (heartbeats, health probes, stream
readers) and health checks/reflection; a server call or a consumed event without a
trace context starts a new, recorded trace. ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``
with ``OTEL_TRACES_SAMPLER_ARG=0.1`` records a tenth of new traces (the edge samples
the same share of requests); any other ``OTEL_TRACES_SAMPLER`` replaces this policy.

Export (``BatchSpanProcessor``: spans are queued, never exported on the calling path):

* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set → an
  OTLP collector, over gRPC unless ``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf``;
* otherwise ``AF_TRACES_DIR`` set (the launcher sets ``<run dir>/traces``) → one file
  per process, ``<dir>/<process>.jsonl``: one OTLP/JSON ``ExportTraceServiceRequest``
  per line (the OTLP file format, as the collector's file exporter writes it), written
  by the contrib ``opentelemetry-exporter-otlp-json-file``;
* otherwise spans are made (context still propagates) and not exported.

``OTEL_SDK_DISABLED=true`` turns tracing off (no spans, no propagation);
``OTEL_BSP_SCHEDULE_DELAY`` (ms, default 5000) is how often batches are written.
``forge trace <trace-id>`` prints a trace from the files as a tree (docs/observability.md).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.trace import (Link, NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode,
                                 TraceFlags, TraceState)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "configure_tracing",
    "consumer_span",
    "current_traceparent",
    "enabled",
    "end_rpc_span",
    "default_sampler",
    "fresh_context",
    "install",
    "internal_span",
    "open_server_span",
    "producer_span",
    "sample_ratio",
    "shutdown_tracing",
    "start_client_span",
    "start_server_span",
    "traceparent_of",
    "uninstall",
    "untraced",
]

_log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: The instrumentation scope of every span the mesh makes itself.
SCOPE = "agentforge.mesh"
#: Root spans under these name prefixes are not recorded (probes, not requests).
_UNTRACED_ROOTS = ("grpc.health.v1.Health/", "grpc.reflection.")
#: Server spans end in ERROR for these codes (semantic conventions for gRPC servers);
#: client spans for every code but OK.
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})

_W3C = TraceContextTextMapPropagator()
_TRACEPARENT_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_provider: TracerProvider | None = None
_tracer: trace.Tracer = trace.NoOpTracer()
_enabled = False


def enabled() -> bool:
    """True once :func:`configure_tracing` set up a provider in this process."""
    return _enabled


class BackgroundRootsDropped(Sampler):
    """Root sampler: record a new trace for incoming work (a server call, a consumed
    event, an explicit internal span) — all of it, or the ``ratio`` of trace ids that
    ``TraceIdRatioBased`` keeps — and never for the CLIENT/PRODUCER calls of background
    loops nor for health checks and reflection."""

    def __init__(self, ratio: float = 1.0) -> None:
        self._ratio = TraceIdRatioBased(ratio) if ratio < 1.0 else None

    def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: SpanKind | None = None,
                      attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
        if kind in (SpanKind.CLIENT, SpanKind.PRODUCER) or name.startswith(_UNTRACED_ROOTS):
            return SamplingResult(Decision.DROP)
        if self._ratio is not None:
            return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)
        return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)

    def get_description(self) -> str:
        return "BackgroundRootsDropped" + (f"{{{self._ratio.get_description()}}}" if self._ratio else "")


def sample_ratio(environ: Mapping[str, str] | None = None) -> float | None:
    """The share of new traces to record, from the SDK's variables: 1.0 when
    ``OTEL_TRACES_SAMPLER`` is unset; ``OTEL_TRACES_SAMPLER_ARG`` (default 1.0, clamped
    to 0..1) for ``parentbased_traceidratio``/``traceidratio``; None for any other
    sampler (the SDK's own then decides). The edge samples the same share of requests
    (``services.launcher.envoy_config``)."""
    env = os.environ if environ is None else environ
    name = (env.get("OTEL_TRACES_SAMPLER") or "").strip().lower()
    if not name:
        return 1.0
    if name not in ("parentbased_traceidratio", "traceidratio"):
        return None
    try:
        ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG") or 1.0)
    except ValueError:
        _log.warning("OTEL_TRACES_SAMPLER_ARG=%r is not a number; sampling every trace",
                     env.get("OTEL_TRACES_SAMPLER_ARG"))
        return 1.0
    return min(1.0, max(0.0, ratio))


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _exporter(file_name: str, env: Mapping[str, str]) -> SpanExporter | None:
    if env.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                    or "grpc").strip()
        if protocol == "http/protobuf":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
            return HttpExporter()  # endpoint, headers, timeout: the OTEL_EXPORTER_OTLP_* variables
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
        return GrpcExporter()
    directory = env.get("AF_TRACES_DIR")
    if directory:
        from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        return FileSpanExporter(path / f"{file_name}.jsonl")
    return None


def configure_tracing(service: str, *, process: str | None = None,
                      environ: Mapping[str, str] | None = None) -> TracerProvider | None:
    """Set up the process's tracer provider (once; later calls return the first one).

    ``service`` is the resource's ``service.name`` (``training``); ``process`` names the
    process's file in ``AF_TRACES_DIR`` (default ``service``; a worker passes
    ``training-worker-0``). Returns None when ``OTEL_SDK_DISABLED`` is true.
    Redis commands of every ``redis.asyncio`` client of the process get spans from here on.
    """
    env = os.environ if environ is None else environ
    if _provider is not None:
        return _provider
    if _truthy(env.get("OTEL_SDK_DISABLED")):
        return None
    resource = Resource.create({
        "service.name": service,
        "service.namespace": "agentforge",
        "service.instance.id": f"{process or service}-{os.getpid()}",
        "process.pid": os.getpid(),
    })
    # Our policy, at the ratio the SDK's variables give; another sampler named there: the
    # SDK's (sampler=None reads OTEL_TRACES_SAMPLER).
    ratio = sample_ratio(env)
    sampler = None if ratio is None else default_sampler(ratio)
    provider = TracerProvider(resource=resource, sampler=sampler)
    exporter = _exporter(process or service, env)
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    install(provider)
    return provider


def default_sampler(ratio: float = 1.0) -> Sampler:
    """``ParentBased(root=BackgroundRootsDropped(ratio))``: the mesh's sampling policy."""
    return ParentBased(root=BackgroundRootsDropped(ratio))


def install(provider: TracerProvider) -> None:
    """Make ``provider`` the one this module's spans and Redis's come from (what
    :func:`configure_tracing` does after building it; tests pass their own)."""
    global _provider, _tracer, _enabled
    _provider = provider
    _tracer = provider.get_tracer(SCOPE)
    _enabled = True
    try:
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        RedisInstrumentor().instrument(tracer_provider=provider)
    except Exception:  # noqa: BLE001 - traces without Redis spans beat no service
        _log.exception("could not instrument Redis; its commands get no spans")


def uninstall() -> None:
    """Undo :func:`install` (tests): no spans from here on, Redis uninstrumented."""
    global _provider, _tracer, _enabled
    _provider, _tracer, _enabled = None, trace.NoOpTracer(), False
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    RedisInstrumentor().uninstrument()


def shutdown_tracing(timeout_s: float = 5.0) -> None:
    """Export what is queued (also done at interpreter exit)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


# ---------------------------------------------------------------- context helpers
def traceparent_of(span: Span) -> str | None:
    """The W3C ``traceparent`` of ``span`` (None for an invalid span)."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def current_traceparent() -> str:
    """The current span's ``traceparent``, or a fresh one that is not sampled (nothing
    was recorded under it, so consumers do not record spans for it either)."""
    return traceparent_of(trace.get_current_span()) or f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"


def _parent(traceparent: str | None, tracestate: str | None = None) -> otel_context.Context | None:
    """The remote parent a ``traceparent`` (and ``tracestate``) names, or None.

    The common form (version 00, lower-case hex) is parsed here: on every call of every
    service, the propagator's getter/setter plumbing cost more than the parse. Anything
    else goes to the W3C propagator, whose rules then apply (other versions, invalid)."""
    if not traceparent:
        return None
    m = _TRACEPARENT_00.fullmatch(traceparent)
    if m is None:
        carrier = {TRACEPARENT: traceparent}
        if tracestate:
            carrier[TRACESTATE] = tracestate
        return _W3C.extract(carrier)
    trace_id, span_id = int(m[1], 16), int(m[2], 16)
    if not trace_id or not span_id:
        return None
    state = TraceState.from_header([tracestate]) if tracestate else None
    remote = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(int(m[3], 16)),
                         trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(remote))


def fresh_context() -> contextvars.Context:
    """A new, empty ``contextvars.Context`` that carries only the current trace: for a
    task that outlives the call that started it (no deadline, no request id) but is
    still part of its trace."""
    ctx = contextvars.Context()
    span = trace.get_current_span()
    if span.get_span_context().is_valid:
        ctx.run(otel_context.attach, trace.set_span_in_context(span))
    return ctx


@contextlib.contextmanager
def untraced() -> Iterator[None]:
    """Run the block (and the tasks it creates) outside any trace: for loops started
    from inside a traced operation (heartbeats), whose commands must not join it."""
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)


# ---------------------------------------------------------------- RPC spans
_RPC_ATTRIBUTES: dict[str, dict[str, Any]] = {}


def _rpc_attributes(method: str) -> dict[str, Any]:
    """``rpc.*`` attributes of a full method name (cached: a server has few methods)."""
    attrs = _RPC_ATTRIBUTES.get(method)
    if attrs is None:
        service, _, name = method.lstrip("/").rpartition("/")
        attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        if len(_RPC_ATTRIBUTES) < 4096:
            _RPC_ATTRIBUTES[method] = attrs
    return attrs


def start_server_span(method: str, metadata: Iterable[Any] | None) -> Span | None:
    """Start and make current the SERVER span of an incoming call (None when tracing is
    off). ``metadata``: the invocation metadata (``(key, value)`` pairs), whose
    ``traceparent``/``tracestate`` are the parent. End it with :func:`end_rpc_span`.

    The span is attached to the handler's task context and never detached: grpc.aio
    runs every call in its own task, whose context ends with it.
    """
    if not _enabled:
        return None
    traceparent = tracestate = None
    for key, value in metadata or ():
        if key == TRACEPARENT:
            traceparent = value
        elif key == TRACESTATE:
            tracestate = value
    return open_server_span(method, traceparent, tracestate)


def open_server_span(method: str, traceparent: str | None, tracestate: str | None = None) -> Span:
    """:func:`start_server_span` from the two header values, read by the caller (the
    fused unary path reads every header in one pass)."""
    span = _tracer.start_span(method[1:] if method[:1] == "/" else method, context=_parent(traceparent, tracestate),
                              kind=SpanKind.SERVER, attributes=_rpc_attributes(method))
    otel_context.attach(trace.set_span_in_context(span))
    return span


def end_rpc_span(span: Span, code: grpc.StatusCode, *, server: bool, error: BaseException | None = None) -> None:
    """Set ``rpc.grpc.status_code`` and the span status from the call's outcome; end it."""
    if span.is_recording():
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code in _SERVER_ERRORS if server else code is not grpc.StatusCode.OK:
            span.set_status(Status(StatusCode.ERROR, code.name))
            if error is not None and not isinstance(error, grpc.aio.AbortError):
                span.record_exception(error)
    span.end()


def start_client_span(method: str | bytes) -> Span | None:
    """Start the CLIENT span of an outgoing call (not made current); its
    :func:`traceparent_of` goes out in the call's metadata. None when tracing is off."""
    if not _enabled:
        return None
    if isinstance(method, bytes):
        method = method.decode()
    return _tracer.start_span(method.lstrip("/"), kind=SpanKind.CLIENT, attributes=_rpc_attributes(method))


async def end_client_span_when_done(span: Span, call: Any) -> None:
    """End a client span with the call's final status (awaited from a done callback)."""
    try:
        code = await call.code()
    except BaseException:  # noqa: BLE001 - cancelled before a status: still end the span
        code = grpc.StatusCode.CANCELLED
    end_rpc_span(span, code, server=False)


# ---------------------------------------------------------------- bus spans
def _messaging_attributes(stream: str, operation: str, message_id: str | None,
                          group: str | None = None, subject: str | None = None) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "messaging.system": "redis",
        "messaging.destination.name": stream,
        "messaging.operation.type": operation,
        "messaging.operation.name": "send" if operation == "send" else "process",
    }
    if message_id:
        attrs["messaging.message.id"] = message_id
    if group:
        attrs["messaging.consumer.group.name"] = group
    if subject:
        attrs["agentforge.event.subject"] = subject
    return attrs


@contextlib.contextmanager
def producer_span(stream: str, *, message_id: str | None = None, subject: str | None = None,
                  count: int = 1) -> Iterator[str | None]:
    """``send <stream>`` (PRODUCER) around a publish; yields the ``traceparent`` the
    entries carry (the span's), or None when tracing is off (the bus then mints one)."""
    if not _enabled:
        yield None
        return
    attrs = _messaging_attributes(stream, "send", message_id if count == 1 else None, subject=subject)
    if count != 1:
        attrs["messaging.batch.message_count"] = count
    with _tracer.start_as_current_span(f"send {stream}", kind=SpanKind.PRODUCER, attributes=attrs) as span:
        yield traceparent_of(span)


@contextlib.contextmanager
def consumer_span(stream: str, traceparent: str | None, *, message_id: str | None = None,
                  group: str | None = None, subject: str | None = None) -> Iterator[Span | None]:
    """``process <stream>`` (CONSUMER) around the handling of one entry, current while
    the block runs. Child of the entry's ``traceparent`` (the publisher's span) and
    linked to it; an exception escaping the block marks it ERROR."""
    if not _enabled:
        yield None
        return
    parent = _parent(traceparent)
    links = []
    if parent is not None:
        creation = trace.get_current_span(parent).get_span_context()
        if creation.is_valid:
            links.append(Link(creation, {"messaging.operation.type": "send"}))
    with _tracer.start_as_current_span(
        f"process {stream}", context=parent, kind=SpanKind.CONSUMER, links=links,
        attributes=_messaging_attributes(stream, "process", message_id, group, subject),
    ) as span:
        yield span


def internal_span(name: str, attributes: Mapping[str, Any] | None = None) -> contextlib.AbstractContextManager[Any]:
    """An INTERNAL span, current for the block (a no-op when tracing is off)."""
    if not _enabled:
        return contextlib.nullcontext()
    return _tracer.start_as_current_span(name, kind=SpanKind.INTERNAL, attributes=dict(attributes or {}))
