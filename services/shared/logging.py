"""Structured logging: one JSON object per line.

Every record carries ``ts``, ``level``, ``service``, ``logger``, ``msg`` and, inside an
RPC, ``request_id`` and ``method`` (from :mod:`services.shared.context`), and inside a
traced operation ``trace_id`` and ``span_id`` (W3C hex, as ``forge trace`` takes them).
Anything passed
as ``extra={...}`` is added as top-level keys. Logs go to stderr; stdout is kept for
machine-readable lines such as the server's ready line.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import sys
import time
from typing import Any, TextIO

from opentelemetry import trace

from services.shared.context import method_var, request_id_var

__all__ = ["JsonFormatter", "LoopBatchingHandler", "configure_logging"]

# Attributes every LogRecord has; anything else came from ``extra=``.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


class JsonFormatter(logging.Formatter):
    """Format a record as a single-line JSON object."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service
        self._second = -1  # the whole second whose text _second_text holds
        self._second_text = ""

    def _timestamp(self, created: float) -> str:
        """RFC 3339 UTC with milliseconds (``2026-11-30T04:31:13.123Z``), as
        ``datetime.isoformat(timespec="milliseconds")`` writes it; the date and time
        part is formatted once per second (every RPC logs a line)."""
        second = int(created)
        micros = round((created - second) * 1e6)
        if micros >= 1_000_000:  # rounds up into the next second: the slow, exact way
            return _dt.datetime.fromtimestamp(created, _dt.UTC).isoformat(
                timespec="milliseconds").replace("+00:00", "Z")
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{micros // 1000:03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        attrs = record.__dict__
        doc: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "msg": record.getMessage(),
            # Set by ``extra=`` (captured when logged) or read from the running RPC.
            "request_id": attrs.get("request_id") or request_id_var.get(),
            "method": attrs.get("method") or method_var.get(),
        }
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            doc["trace_id"] = f"{span.trace_id:032x}"
            doc["span_id"] = f"{span.span_id:016x}"
        for key, value in attrs.items():
            if key not in _RESERVED and key[:1] != "_":
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return _encode(doc)


class _TextFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        rid = request_id_var.get()
        return f"{line} [request_id={rid}]" if rid else line


#: Lines :class:`LoopBatchingHandler` keeps before it writes without waiting for the loop.
MAX_BUFFERED_LINES = 256


class LoopBatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A ``StreamHandler`` that writes the lines an event loop logs in one iteration
    with one ``write`` and one ``flush``.

    Every RPC logs a line; a write and a flush (a system call) per line cost the event
    loop more than formatting it. Inside a running loop a line is buffered and a flush
    is scheduled with ``call_soon``, so it is written before the loop waits for I/O
    again (milliseconds later at most); outside one (threads, start-up) lines are
    written at once, after anything still buffered, so their order is kept.
    ``flush()``/``close()`` (and ``logging.shutdown`` at exit) write what is buffered.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._flush_loop: asyncio.AbstractEventLoop | None = None  # where a flush is scheduled

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            loop = _running_loop()
            if loop is not None and (self._flush_loop is loop or self._flush_loop is None):
                self._lines.append(line)
                if len(self._lines) >= MAX_BUFFERED_LINES:
                    self._write_buffered()  # a loop that does not yield: no unbounded buffer
                elif self._flush_loop is None:
                    self._flush_loop = loop
                    loop.call_soon(self.flush)
                return
            self._lines.append(line)
            self._write_buffered()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging.Handler's contract
            self.handleError(record)

    def _write_buffered(self) -> None:
        """Write and flush the buffer (the caller holds the handler's lock)."""
        self._flush_loop = None
        if self._lines:
            text = self.terminator.join(self._lines) + self.terminator
            self._lines.clear()
            self.stream.write(text)
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_buffered()
        finally:
            self.release()


#: The running loop or None (asyncio's low-level getter: no exception to raise and catch
#: outside a loop, on every log record).
_running_loop = asyncio._get_running_loop


def configure_logging(
    service: str,
    level: str | int = "INFO",
    *,
    fmt: str = "json",
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route the root logger to ``stream`` (stderr) in ``fmt``; returns the handler.

    Replaces handlers installed by an earlier call, so calling it twice is harmless.
    Records do not gather the thread, process and multiprocessing names (the formats
    here print none of them, and every RPC logs a line): ``logging.logThreads``,
    ``logProcesses`` and ``logMultiprocessing`` are turned off for the process.
    """
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = LoopBatchingHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service) if fmt == "json" else _TextFormatter(service))
    handler._af_handler = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_af_handler", False)]:
        old.flush()
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
