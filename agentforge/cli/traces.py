"""Read the mesh's trace files and print a trace as a tree (``forge trace``).

Without a collector every process of the mesh writes its spans to
``<run dir>/traces/<process>.jsonl`` (``AF_TRACES_DIR``): one OTLP/JSON
``ExportTraceServiceRequest`` per line, the encoding of the OpenTelemetry protocol
(https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding: hex ids, lowerCamelCase
fields, 64-bit integers as strings, enums as numbers). Plain JSON is all this module
needs, so the client install reads traces without the OpenTelemetry SDK.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Span", "TraceSummary", "default_traces_dir", "find_trace", "load_spans", "render_tree", "summaries"]

#: OTLP ``Span.SpanKind`` numbers.
KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
#: OTLP ``Status.StatusCode`` numbers.
STATUSES = {0: "", 1: "OK", 2: "ERROR"}


def default_traces_dir() -> Path:
    """``AF_TRACES_DIR``, else ``.run/traces`` (where ``make up`` / ``make run`` put them)."""
    return Path(os.environ.get("AF_TRACES_DIR") or ".run/traces")


def _value(v: dict[str, Any]) -> Any:
    """An OTLP ``AnyValue`` as a Python value."""
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in v:
            return v[key]
    if "intValue" in v:
        return int(v["intValue"])
    if "arrayValue" in v:
        return [_value(x) for x in v["arrayValue"].get("values", [])]
    if "kvlistValue" in v:
        return _attributes(v["kvlistValue"].get("values", []))
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items}


@dataclass
class Span:
    """One span as read from a file (times in unix nanoseconds)."""

    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    service: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str = ""
    status_message: str = ""
    #: ``(trace id, span id)`` of each link.
    links: list[tuple[str, str]] = field(default_factory=list)
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _spans_of_line(doc: dict[str, Any]) -> Iterator[Span]:
    for rs in doc.get("resourceSpans", []):
        resource = _attributes(rs.get("resource", {}).get("attributes", []))
        service = str(resource.get("service.name", "?"))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                status = s.get("status", {}) or {}
                yield Span(
                    trace_id=s.get("traceId", ""),
                    span_id=s.get("spanId", ""),
                    parent_id=s.get("parentSpanId", "") or "",
                    name=s.get("name", ""),
                    kind=KINDS.get(int(s.get("kind", 0)), "?"),
                    service=service,
                    start_ns=int(s.get("startTimeUnixNano", 0)),
                    end_ns=int(s.get("endTimeUnixNano", 0)),
                    attributes=_attributes(s.get("attributes", [])),
                    status=STATUSES.get(int(status.get("code", 0)), "?"),
                    status_message=status.get("message", ""),
                    links=[(link.get("traceId", ""), link.get("spanId", "")) for link in s.get("links", [])],
                )


def load_spans(directory: Path, trace_id: str | None = None) -> list[Span]:
    """Every span in ``directory``'s ``*.jsonl`` files (only ``trace_id``'s, if given: a
    full id or a prefix). Unreadable lines (a file being written) are skipped."""
    wanted = trace_id.lower() if trace_id else None
    spans: list[Span] = []
    for path in sorted(directory.glob("*.jsonl")):
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError:
            continue
        for line in lines:
            if wanted and len(wanted) == 32 and wanted not in line:
                continue  # cheap filter before parsing
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            spans.extend(s for s in _spans_of_line(doc) if not wanted or s.trace_id.startswith(wanted))
    return spans


def find_trace(directory: Path, trace_id: str) -> tuple[str, list[Span]]:
    """The full trace id and its spans; ``trace_id`` may be a unique prefix.
    :class:`LookupError` when no trace or several match."""
    spans = load_spans(directory, trace_id)
    ids = {s.trace_id for s in spans}
    if not ids:
        raise LookupError(f"no trace {trace_id} in {directory}")
    if len(ids) > 1:
        raise LookupError(f"{trace_id} matches {len(ids)} traces; give more of the id")
    return ids.pop(), spans


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    root: str
    service: str
    spans: int
    start_ns: int
    duration_ms: float


def summaries(spans: Iterable[Span]) -> list[TraceSummary]:
    """One line per trace, newest first: its earliest span is named as the root."""
    by_trace: dict[str, list[Span]] = {}
    for s in spans:
        by_trace.setdefault(s.trace_id, []).append(s)
    out = []
    for trace_id, members in by_trace.items():
        first = min(members, key=lambda s: s.start_ns)
        end = max(s.end_ns for s in members)
        out.append(TraceSummary(trace_id, first.name, first.service, len(members), first.start_ns,
                                (end - first.start_ns) / 1e6))
    return sorted(out, key=lambda t: t.start_ns, reverse=True)


def _tree(spans: list[Span]) -> list[Span]:
    """Link children to parents; returns the roots (spans whose parent is not here),
    each list ordered by start time."""
    by_id = {s.span_id: s for s in spans}
    roots = []
    for s in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(s.parent_id)
        if parent is None or parent is s:
            roots.append(s)
        else:
            parent.children.append(s)
    return roots


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.1f} ms"


_SHOWN = ("rpc.grpc.status_code", "messaging.message.id", "agentforge.training_job", "agentforge.phase_run",
          "db.statement")


def _line(s: Span, t0: int) -> str:
    parts = [f"[{s.service}] {s.name}", s.kind.lower(), _fmt_ms(s.duration_ms), f"+{(s.start_ns - t0) / 1e6:.1f} ms"]
    if s.status == "ERROR":
        parts.append(f"ERROR {s.status_message}".rstrip())
    shown = [f"{k}={s.attributes[k]}" for k in _SHOWN if k in s.attributes]
    if "rpc.grpc.status_code" in s.attributes:
        shown = [x for x in shown if not x.startswith("db.")]
    if shown:
        parts.append(" ".join(shown))
    if s.links:
        parts.append("links " + ", ".join(span_id[:8] for _, span_id in s.links))
    # One span, one line: a Redis pipeline's db.statement ("ZADD ? ?\nHGET ?") or a
    # multi-line status message would otherwise break the tree's indentation.
    return " ; ".join(line.strip() for line in "  ".join(parts).splitlines() if line.strip())


def render_tree(trace_id: str, spans: list[Span]) -> list[str]:
    """The trace as text lines: a header, then every span under its parent (service,
    name, kind, duration, start offset, status, a few attributes, links). A span whose
    parent was not recorded (the edge's, without a collector) hangs under a line
    naming that parent."""
    roots = _tree(spans)
    t0 = min(s.start_ns for s in spans)
    t1 = max(s.end_ns for s in spans)
    services = sorted({s.service for s in spans})
    lines = [f"trace {trace_id}  {len(spans)} spans  {_fmt_ms((t1 - t0) / 1e6)}  services: {', '.join(services)}"]

    def walk(span: Span, prefix: str, last: bool, top: bool) -> None:
        branch = "" if top else ("└─ " if last else "├─ ")
        lines.append(prefix + branch + _line(span, t0))
        child_prefix = prefix + ("" if top else ("   " if last else "│  "))
        for i, child in enumerate(span.children):
            walk(child, child_prefix, i == len(span.children) - 1, False)

    for root in roots:
        if root.parent_id:
            lines.append(f"(parent {root.parent_id} not recorded: the edge's span, or one not yet written)")
            walk(root, "", True, False)
        else:
            walk(root, "", True, True)
    return lines
