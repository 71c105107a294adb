"""Tracing in the shared runtime: gRPC server and client spans, the bus (publisher's
context → consumer's link), Redis spans, sampling, and the OTLP/JSON files ``forge
trace`` reads. Spans are collected in memory from a provider installed per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import wrappers_pb2
from opentelemetry.exporter.otlp.json.file.trace_exporter import FileSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from agentforge.cli import traces
from agentforge.training.v1 import training_job_pb2
from agentforge.events.v1 import event_pb2
from services.shared import tracing
from services.shared.bus import BusConfig, Envelope, EventBus
from services.shared.events import publish_event
from services.shared.interceptors import TracingInterceptor
from services.shared.valkey import EmbeddedValkey

from .conftest import EchoServer, rpc

S, D = wrappers_pb2.StringValue, wrappers_pb2.DoubleValue
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
INCOMING = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on in this process (the mesh's sampler), spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.default_sampler())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.uninstall()
        provider.shutdown()


@pytest.fixture
async def traced_echo(spans: InMemorySpanExporter, echo_server: EchoServer) -> EchoServer:
    """conftest's echo service, built after ``spans`` turned tracing on (so its chain traces)."""
    return echo_server


@pytest.fixture
async def bus(valkey: EmbeddedValkey) -> AsyncIterator[EventBus]:
    async with EventBus(BusConfig(url=valkey.url, block_ms=50, claim_idle_ms=60_000)) as b:
        yield b


def named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def wait_for_span(exporter: InMemorySpanExporter, name: str, timeout: float = 5.0) -> ReadableSpan:
    async with asyncio.timeout(timeout):
        while not named(exporter, name):
            await asyncio.sleep(0.01)
    return named(exporter, name)[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    return f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"


# ------------------------------------------------------------------------ gRPC
async def test_server_continues_the_callers_trace_and_client_spans_link_the_hop(
        traced_echo: EchoServer, spans: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(traced_echo.target) as ch:
        seen = await rpc(ch, "uu", "CallDownstream", D, D)(D(value=5.0), metadata=((tracing.TRACEPARENT, INCOMING),))
    assert seen.value > 0
    outer = await wait_for_span(spans, "test.v1.Echo/CallDownstream")
    inner = await wait_for_span(spans, "test.v1.Echo/Remaining")
    client = [s for s in named(spans, "test.v1.Echo/Remaining") if s.kind == SpanKind.CLIENT]
    server = [s for s in named(spans, "test.v1.Echo/Remaining") if s.kind == SpanKind.SERVER]
    assert outer.kind == SpanKind.SERVER and len(client) == 1 and len(server) == 1 and inner
    # One trace: the caller's → CallDownstream (server) → Remaining (client) → Remaining (server).
    assert {hex_ids(s)[0] for s in (outer, client[0], server[0])} == {TRACE_ID}
    assert f"{outer.parent.span_id:016x}" == "b7ad6b7169203331" and outer.parent.is_remote
    assert client[0].parent.span_id == outer.context.span_id
    assert server[0].parent.span_id == client[0].context.span_id
    for span in (outer, client[0], server[0]):
        assert span.attributes["rpc.system"] == "grpc"
        assert span.attributes["rpc.service"] == "test.v1.Echo"
        assert span.attributes["rpc.grpc.status_code"] == 0
    assert outer.attributes["rpc.method"] == "CallDownstream"


async def test_failed_call_sets_the_status_code_and_error_only_for_server_faults(
        traced_echo: EchoServer, spans: InMemorySpanExporter) -> None:
    async with grpc.aio.insecure_channel(traced_echo.target) as ch:
        for value in ("not_found", "boom"):
            with pytest.raises(grpc.aio.AioRpcError):
                await rpc(ch, "uu", "Unary", S, S)(S(value=value), metadata=((tracing.TRACEPARENT, INCOMING),))
    async with asyncio.timeout(5):
        while len(named(spans, "test.v1.Echo/Unary")) < 2:
            await asyncio.sleep(0.01)
    by_code = {s.attributes["rpc.grpc.status_code"]: s for s in named(spans, "test.v1.Echo/Unary")}
    assert set(by_code) == {grpc.StatusCode.NOT_FOUND.value[0], grpc.StatusCode.INTERNAL.value[0]}
    assert by_code[grpc.StatusCode.NOT_FOUND.value[0]].status.status_code == StatusCode.UNSET  # the client's mistake
    assert by_code[grpc.StatusCode.INTERNAL.value[0]].status.status_code == StatusCode.ERROR


async def test_streams_written_with_context_write_still_work_and_get_a_span(
        traced_echo: EchoServer, spans: InMemorySpanExporter) -> None:
    # The contrib aio server interceptor fails these with UNKNOWN; ours must not.
    async with grpc.aio.insecure_channel(traced_echo.target) as ch:
        call = rpc(ch, "ss", "BidiReadWrite", S, S)(metadata=((tracing.TRACEPARENT, INCOMING),))
        for word in ("a", "b"):
            await call.write(S(value=word))
        await call.done_writing()
        got = [m.value async for m in call]
    assert got == ["a", "b"]
    span = await wait_for_span(spans, "test.v1.Echo/BidiReadWrite")
    assert hex_ids(span)[0] == TRACE_ID and span.attributes["rpc.grpc.status_code"] == 0


async def test_untraced_health_checks_are_not_recorded(traced_echo: EchoServer, spans: InMemorySpanExporter) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    async with grpc.aio.insecure_channel(traced_echo.target) as ch:
        await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        await rpc(ch, "uu", "Unary", S, S)(S(value="x"))  # no traceparent: a new trace
    span = await wait_for_span(spans, "test.v1.Echo/Unary")
    assert span.parent is None
    assert not named(spans, "grpc.health.v1.Health/Check")


def test_tracing_interceptor_is_in_the_chain_only_when_tracing_is_on_and_unary_calls_stay_fused(
        spans: InMemorySpanExporter) -> None:
    from services.shared.interceptors import _standard_parts, default_interceptors
    [runtime] = default_interceptors(None)
    assert isinstance(runtime.chain[0], TracingInterceptor)
    parts = _standard_parts(runtime.chain)  # the fused unary path, tracing included
    assert parts is not None and parts.tracing is runtime.chain[0]
    tracing.uninstall()
    [runtime] = default_interceptors(None)
    assert not any(isinstance(i, TracingInterceptor) for i in runtime.chain)
    assert _standard_parts(runtime.chain) is not None


# ------------------------------------------------------------------------ the bus
async def test_event_carries_the_publishers_span_and_the_consumer_links_to_it(
        bus: EventBus, spans: InMemorySpanExporter, stream_prefix: str) -> None:
    stream = stream_prefix + "events.training"
    payload = event_pb2.TrainingJobCompleted(training_job=training_job_pb2.TrainingJob(name="trainingJobs/t1"))
    with tracing.internal_span("request") as request:
        await publish_event(bus, stream, payload, source="training", subject="trainingJobs/t1")
    send = await wait_for_span(spans, f"send {stream}")
    assert send.kind == SpanKind.PRODUCER and send.parent.span_id == request.get_span_context().span_id
    assert send.attributes["messaging.destination.name"] == stream
    # The entry (and the envelope inside it) carry the producer span's context.
    [entry] = await bus.read(stream)
    assert isinstance(entry, Envelope)
    trace_id, span_id = hex_ids(send)
    assert entry.traceparent == f"00-{trace_id}-{span_id}-{int(send.context.trace_flags):02x}"
    assert send.context.trace_flags.sampled
    assert entry.unpack(event_pb2.Event).trace_context.traceparent == entry.traceparent
    assert send.attributes["messaging.message.id"] == entry.id
    # Redis's own spans (the publish script; SCRIPT LOAD first time) are children of the producer span.
    redis_spans = [s for s in spans.get_finished_spans() if s.attributes.get("db.system") == "redis"]
    assert "EVALSHA" in {s.name for s in redis_spans}
    assert all(s.parent.span_id == send.context.span_id and s.kind == SpanKind.CLIENT for s in redis_spans)
    assert all(s.attributes["db.statement"].startswith(s.name) for s in redis_spans)  # sanitized: "EVALSHA ? ?"

    handled: list[str | None] = []
    stop = asyncio.Event()

    async def handle(envelope: Envelope) -> None:
        handled.append(tracing.current_traceparent())
        stop.set()

    await asyncio.wait_for(bus.consume(stream, "g", "c1", handle, stop=stop), 10)
    process = await wait_for_span(spans, f"process {stream}")
    assert process.kind == SpanKind.CONSUMER
    assert [(link.context.trace_id, link.context.span_id) for link in process.links] == [
        (send.context.trace_id, send.context.span_id)]
    assert process.parent.span_id == send.context.span_id  # same trace: the request's
    assert hex_ids(process)[0] == trace_id
    assert process.attributes["messaging.consumer.group.name"] == "g"
    assert process.attributes["messaging.message.id"] == entry.id
    assert handled == [tracing.traceparent_of(process)]  # the handler runs in it


async def test_a_failing_handler_marks_the_consumer_span_as_error(
        bus: EventBus, spans: InMemorySpanExporter, stream_prefix: str) -> None:
    stream = stream_prefix + "events.x"
    with tracing.internal_span("request"):
        await bus.publish(stream, S(value="v"))
    stop = asyncio.Event()

    async def handle(envelope: Envelope) -> None:
        stop.set()
        raise RuntimeError("handler broke")

    await asyncio.wait_for(bus.consume(stream, "g", "c1", handle, stop=stop), 10)
    process = await wait_for_span(spans, f"process {stream}")
    assert process.status.status_code == StatusCode.ERROR
    assert any(e.name == "exception" for e in process.events)


async def test_background_publish_is_not_traced_and_neither_is_its_consumer(
        bus: EventBus, spans: InMemorySpanExporter, stream_prefix: str) -> None:
    stream = stream_prefix + "events.bg"
    await bus.publish(stream, S(value="v"))  # no current span: a loop, not a request
    [entry] = await bus.read(stream)
    assert isinstance(entry, Envelope) and not int(entry.traceparent[-2:], 16) & 1  # not sampled
    stop = asyncio.Event()

    async def handle(envelope: Envelope) -> None:
        stop.set()

    await asyncio.wait_for(bus.consume(stream, "g", "c1", handle, stop=stop), 10)
    await asyncio.sleep(0.05)
    recorded = {s.name for s in spans.get_finished_spans()}
    assert f"send {stream}" not in recorded and f"process {stream}" not in recorded
    assert not [s for s in spans.get_finished_spans() if s.attributes.get("db.system") == "redis"]


async def test_fresh_context_keeps_the_trace_and_nothing_else(spans: InMemorySpanExporter) -> None:
    from services.shared.context import request_id_var
    request_id_var.set("r1")
    with tracing.internal_span("rpc") as rpc_span:
        ctx = tracing.fresh_context()
    seen: dict[str, Any] = {}

    async def later() -> None:
        with tracing.internal_span("saga"):
            seen["request_id"] = request_id_var.get()

    await asyncio.create_task(later(), context=ctx)
    saga = await wait_for_span(spans, "saga")
    assert saga.parent.span_id == rpc_span.get_span_context().span_id
    assert seen["request_id"] is None


# ------------------------------------------------------------------------ files and the tree
def test_otlp_json_file_is_read_back_as_a_tree(tmp_path: Path) -> None:
    from opentelemetry.sdk.resources import Resource
    provider = TracerProvider(resource=Resource.create({"service.name": "forge"}))
    provider.add_span_processor(SimpleSpanProcessor(FileSpanExporter(tmp_path / "forge.jsonl")))
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("agentforge.forge.v1.ForgeService/StartPhaseRun", kind=SpanKind.SERVER,
                                      attributes={"rpc.grpc.status_code": 0}) as root:
        with tracer.start_as_current_span("saga cognate"):
            with tracer.start_as_current_span("send events.forge", kind=SpanKind.PRODUCER,
                                              attributes={"db.statement": "ZADD ? ? ? ?\nHGET ? ?"}):
                pass
        with tracer.start_as_current_span("other"):
            pass
    provider.shutdown()
    trace_id = f"{root.get_span_context().trace_id:032x}"
    full, found = traces.find_trace(tmp_path, trace_id[:10])
    assert full == trace_id and len(found) == 4
    lines = traces.render_tree(full, found)
    assert lines[0].startswith(f"trace {trace_id}  4 spans")
    assert lines[1].startswith("[forge] agentforge.forge.v1.ForgeService/StartPhaseRun  server")
    assert "rpc.grpc.status_code=0" in lines[1]
    assert lines[2].startswith("├─ [forge] saga cognate  internal")
    assert lines[3].startswith("│  └─ [forge] send events.forge  producer")
    assert "db.statement=ZADD ? ? ? ? ; HGET ? ?" in lines[3]  # a pipeline stays on its span's line
    assert lines[4].startswith("└─ [forge] other  internal")
    assert len(lines) == 5
    [summary] = traces.summaries(traces.load_spans(tmp_path))
    assert (summary.trace_id, summary.spans, summary.service) == (trace_id, 4, "forge")
    with pytest.raises(LookupError):
        traces.find_trace(tmp_path, "ffffffff")


def test_log_lines_inside_a_span_carry_its_trace_and_span_id(spans: InMemorySpanExporter) -> None:
    import json as _json
    import logging

    from services.shared.logging import JsonFormatter
    formatter = JsonFormatter("test")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "inside", None, None)
    with tracing.internal_span("op") as span:
        inside = _json.loads(formatter.format(record))
    outside = _json.loads(formatter.format(record))
    ctx = span.get_span_context()
    assert (inside["trace_id"], inside["span_id"]) == (f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert "trace_id" not in outside


def test_sample_ratio_follows_the_sdk_variables() -> None:
    assert tracing.sample_ratio({}) == 1.0
    assert tracing.sample_ratio({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                                 "OTEL_TRACES_SAMPLER_ARG": "0.25"}) == 0.25
    assert tracing.sample_ratio({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "7"}) == 1.0
    assert tracing.sample_ratio({"OTEL_TRACES_SAMPLER": "always_off"}) is None  # the SDK's own sampler


def test_a_zero_ratio_records_no_new_trace_but_every_sampled_one_that_arrives() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=tracing.default_sampler(0.0))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider)
    try:
        from opentelemetry import context as otel_context
        for parent in (None, INCOMING):
            token = otel_context.attach(otel_context.Context())
            span = tracing.open_server_span("/test.v1.Echo/Unary", parent)
            tracing.end_rpc_span(span, grpc.StatusCode.OK, server=True)
            otel_context.detach(token)
    finally:
        tracing.uninstall()
    [recorded] = exporter.get_finished_spans()
    assert hex_ids(recorded)[0] == TRACE_ID
