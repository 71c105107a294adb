"""Render the Envoy edge config from the one template, ``envoy/envoy.yaml.tmpl``.

The launcher calls :func:`render_envoy_config`; docker-compose runs the CLI, which
reads the same values from the environment::

    python -m services.launcher.envoy_config --out /etc/envoy/envoy.yaml

    EDGE_PORT                  listener port (required)
    EDGE_ADDRESS               listener address (default 127.0.0.1; 0.0.0.0 in a container)
    ADMIN_PORT                 admin port (required)
    ADMIN_ADDRESS              admin address (default 127.0.0.1; 0.0.0.0 in compose, where
                               the monitoring container probes it over the private network;
                               never publish the admin port to the host)
    AF_<SVC>_ADDR              host:port of each service's gRPC, SVC in TRAINING, MODEL,
                               REALTIME, MONITORING, FORGE (required; the mesh contract's
                               peer address variables)
    ENVOY_DESCRIPTOR_PATH      descriptor set (default gen/descriptor/agentforge.binpb,
                               made absolute)
    CORS_ALLOW_ORIGIN_REGEX    allowed browser origins (default: localhost / 127.0.0.1,
                               http or https, any port)
    ENVOY_TEMPLATE             template path (default envoy/envoy.yaml.tmpl)
    ENVOY_REST_STRICT_BODY_LUA the Lua script rejecting unknown REST body fields (default
                               envoy/rest_strict_body.lua, made absolute)
    ENVOY_REST_SCHEMA_LUA      its schema (default gen/envoy/rest_schema.lua, made absolute)
    EDGE_MAX_CONNECTIONS, EDGE_MAX_CONCURRENT_STREAMS, EDGE_CONNECTION_IDLE_TIMEOUT_S,
    EDGE_REQUEST_HEADERS_TIMEOUT_S, EDGE_STREAM_IDLE_TIMEOUT_S, EDGE_STREAMING_IDLE_TIMEOUT_S
                               the edge's resource limits (:class:`EdgeLimits`; its
                               defaults when unset)
    DASHBOARD_DIR              the built dashboard (default dashboard/dist, made absolute);
                               when it has no index.html, GET / answers 503 "not built"
    AF_SECRETS_DIR             the secrets directory (services/shared/auth.py): the JWKS,
                               the mesh secret (or AF_MESH_SECRET) and the edge's
                               certificate (default <repo>/.secrets, created if missing)
    AF_JWT_ISSUER, AF_JWT_AUDIENCE   iss / aud tokens must carry (agentforge-dev, agentforge)
    EDGE_TLS_CERT, EDGE_TLS_KEY      the edge's certificate and key (default: the secrets dir's)
    EDGE_PLAINTEXT             1 (default): plaintext accepted from loopback besides TLS;
                               0: TLS only (the compose/production profile)
    EDGE_RATE_LIMIT_<CLASS>    "<per second>/<burst>" per token subject, CLASS in READ,
                               WRITE, STREAM (defaults: :data:`RATE_LIMITS`)
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL
                               the collector Envoy sends its spans to (as the services do;
                               :func:`otlp_endpoint_from_env`); unset: none
    OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG
                               the share of requests Envoy samples, as the services read
                               them (services.shared.tracing.sample_ratio; default all)

Substitution is plain text: each ``${NAME}`` in the template is replaced by its value.
A placeholder without a value, or a value without a placeholder, raises
:class:`TemplateError`, so template and renderer cannot drift apart silently. One
optional block, between the ``# [plaintext-begin]`` and ``# [plaintext-end]`` lines, is
kept or dropped whole (``plaintext``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.shared import auth

__all__ = [
    "DEFAULT_CORS_ALLOW_ORIGIN_REGEX",
    "RATE_LIMITS",
    "RateLimit",
    "rate_limits_from_env",
    "SERVICES",
    "EdgeLimits",
    "TemplateError",
    "default_dashboard_dir",
    "default_descriptor_path",
    "default_rest_schema_path",
    "default_rest_strict_body_path",
    "default_template_path",
    "OtlpEndpoint",
    "main",
    "otlp_endpoint_from_env",
    "trace_sample_ratio_from_env",
    "render_dashboard_routes",
    "render_envoy_config",
    "render_template",
    "values_from_env",
]

#: The five services, as cluster names and upstream keys.
SERVICES: tuple[str, ...] = ("training", "model", "realtime", "monitoring", "forge")

#: Browser origins allowed by CORS when none is configured: a dev server on
#: localhost or 127.0.0.1, any port, http or https.
DEFAULT_CORS_ALLOW_ORIGIN_REGEX = r"^https?://(localhost|127\.0\.0\.1)(:[0-9]{1,5})?$"



@dataclass(frozen=True, slots=True)
class RateLimit:
    """A token bucket per token subject: ``per_second`` sustained, ``burst`` at once."""

    per_second: float
    burst: int

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """``"50/100"`` → 50 per second, bursts of 100."""
        rate, sep, burst = text.partition("/")
        try:
            limit = cls(float(rate), int(burst) if sep else max(1, int(float(rate))))
        except ValueError:
            raise TemplateError(f"rate limit {text!r}: expected <per second>/<burst>") from None
        if limit.per_second <= 0 or limit.burst < 1:
            raise TemplateError(f"rate limit {text!r}: both numbers must be positive")
        return limit

    def bucket(self) -> str:
        """Envoy's token_bucket, refilled every 100 ms when the rate allows it."""
        interval, per_fill = (0.1, self.per_second / 10) if self.per_second >= 10 else (1.0, self.per_second)
        return (f"{{max_tokens: {self.burst}, tokens_per_fill: {max(1, round(per_fill))}, "
                f"fill_interval: {interval}s}}")


#: The edge's rate limits, the one place they are set: per token subject and route
#: class — ``read`` (Get*/List*, reflection), ``write`` (every other unary method and
#: uploads: creates, updates, controls, deletes) and ``stream`` (opening a Watch*/Subscribe
#: stream or a download). Override with ``EDGE_RATE_LIMIT_<CLASS>=<per second>/<burst>``.
RATE_LIMITS: Mapping[str, RateLimit] = {
    "read": RateLimit(50, 100),
    "write": RateLimit(10, 20),
    "stream": RateLimit(5, 20),
}


def rate_limits_from_env(environ: Mapping[str, str] | None = None) -> dict[str, RateLimit]:
    """:data:`RATE_LIMITS` with the ``EDGE_RATE_LIMIT_<CLASS>`` overrides applied."""
    env = os.environ if environ is None else environ
    limits = dict(RATE_LIMITS)
    for name in limits:
        raw = env.get(f"EDGE_RATE_LIMIT_{name.upper()}", "").strip()
        if raw:
            limits[name] = RateLimit.parse(raw)
    return limits


def _descriptors(limits: Mapping[str, RateLimit]) -> str:
    unknown = set(limits) - set(RATE_LIMITS)
    if unknown:
        raise TemplateError(f"unknown rate limit classes {sorted(unknown)}; known: {sorted(RATE_LIMITS)}")
    items = [f"{{entries: [{{key: class, value: {name}}}, {{key: subject}}], token_bucket: {limit.bucket()}}}"
             for name, limit in sorted(limits.items())]
    return "[" + ", ".join(items) + "]"


def rate_limited_status_details() -> str:
    """``grpc-status-details-bin`` of a rate-limited gRPC call (base64, no padding): the
    google.rpc.Status Envoy's local reply carries (code RESOURCE_EXHAUSTED, message
    ``local_rate_limited``), with ErrorInfo (reason RESOURCE_EXHAUSTED) and RetryInfo (1 s)."""
    return grpc_status_details("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "local_rate_limited", retry_after_s=1,
                               metadata={"limit": "per token subject and route class"})


#: Envoy's own replies to gRPC and grpc-web clients, by the HTTP status Envoy chose:
#: ``(gRPC code, reason, message)`` of the google.rpc.Status in ``grpc-status-details-bin``
#: (docs/api.md, error catalogue). Envoy's default gRPC mapping of these statuses
#: (grpc/doc/http-grpc-status-mapping.md) makes a client's mistake INTERNAL (400) or
#: UNKNOWN (405, 413, 431) and a timeout UNAVAILABLE (504, which clients retry).
GRPC_LOCAL_REPLIES: dict[int, tuple[str, str, str]] = {
    400: ("INVALID_ARGUMENT", "MALFORMED_REQUEST", "the edge could not read the request (e.g. grpc-web-text "
                                                   "that is not base64, or an invalid header)"),
    401: ("UNAUTHENTICATED", "UNAUTHENTICATED", "the request is not authenticated"),
    403: ("PERMISSION_DENIED", "PERMISSION_DENIED", "the edge refused the request"),
    # gRPC's convention for an unknown service or method (grpcurl and reflection clients
    # rely on it); the reason says the edge has no route.
    404: ("UNIMPLEMENTED", "ROUTE_NOT_FOUND", "no such method behind the edge"),
    405: ("UNIMPLEMENTED", "ROUTE_NOT_FOUND", "gRPC methods are called with POST"),
    408: ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "the request did not arrive in time"),
    413: ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE", "the request is larger than the edge accepts"),
    429: ("RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED", "local_rate_limited"),
    431: ("RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE", "the request headers are larger than the edge accepts"),
    500: ("INTERNAL", "INTERNAL", "the edge failed"),
    501: ("UNIMPLEMENTED", "UNIMPLEMENTED", "not implemented by the edge"),
    502: ("UNAVAILABLE", "UNAVAILABLE", "the service behind the edge is unavailable; retry"),
    503: ("UNAVAILABLE", "UNAVAILABLE", "the service behind the edge is unavailable; retry"),
    504: ("DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED", "the call took longer than the edge allows (see envoy/README.md, "
                                                   "timeouts)"),
}
#: jwt_authn's failures (its ``jwt_failure.message``) → reason; any other is TOKEN_INVALID.
JWT_FAILURE_REASONS = {"Jwt is missing": "TOKEN_REQUIRED", "Jwt is expired": "TOKEN_EXPIRED"}


def grpc_status_details(code: str, reason: str, message: str, *, retry_after_s: int = 0,
                        metadata: Mapping[str, str] | None = None) -> str:
    """``grpc-status-details-bin`` (base64 without padding, as gRPC sends binary headers)
    of a ``google.rpc.Status`` with one ``ErrorInfo`` (domain agentforge.dev, ``reason``
    from the catalogue) and, with ``retry_after_s``, a ``RetryInfo``."""
    import base64

    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import code_pb2, error_details_pb2, status_pb2

    from services.shared.errors import DOMAIN, REASONS

    if reason not in REASONS:
        raise TemplateError(f"reason {reason!r} is not in the error catalogue")
    details = [error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=dict(metadata or {}))]
    if retry_after_s:
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=retry_after_s)))
    packed = []
    for detail in details:
        item = any_pb2.Any()
        item.Pack(detail)
        packed.append(item)
    status = status_pb2.Status(code=code_pb2.Code.Value(code), message=message, details=packed)
    return base64.b64encode(status.SerializeToString()).decode().rstrip("=")


_MAPPER_INDENT = " " * 12
#: Matches a gRPC or grpc-web client (application/grpc[+codec], or grpc-web's binary or
#: text proto types, which grpc_web turns into application/grpc; not
#: application/grpc-web+json, which grpc_web leaves alone and the transcoder serves as
#: REST), and not a REST request the transcoder rewrote to gRPC.
_GRPC_CLIENT_FILTERS = """\
- header_filter:
    header:
      name: content-type
      string_match: {safe_regex: {regex: "application/grpc(\\\\+[a-z]+|-web(\\\\+proto)?|-web-text(\\\\+proto)?)?(;.*)?"}}
- header_filter:
    header: {name: x-envoy-original-path, present_match: true, invert_match: true}
"""


def _grpc_mapper(comment: str, extra_filters: str, code: str, reason: str, message: str, *,
                 retry_after_s: int = 0) -> str:
    from google.rpc import code_pb2

    details = (rate_limited_status_details() if retry_after_s else
               grpc_status_details(code, reason, message))
    filters = _GRPC_CLIENT_FILTERS + extra_filters
    text = f"- filter:  # {comment}\n    and_filter:\n      filters:\n"
    text += "".join(f"      {line}\n" for line in filters.strip("\n").splitlines())
    # HTTP 200, as gRPC requires of a (trailers-only) response: Envoy does so for a gRPC
    # local reply anyway, but grpc_web's own rejections (bad base64) kept the 4xx and it
    # then derived grpc-status from it (400 -> INTERNAL), overwriting ours.
    text += "  status_code: 200\n"
    # No body: grpc_web's rejections are not gRPC local replies (Envoy does not count
    # grpc-web as gRPC), and grpc_web rewrites any such reply with a body into its own
    # grpc-status (from the HTTP status: 400 -> INTERNAL); a headers-only reply that
    # carries grpc-status passes. grpc-message is the Status's message, exactly (rich
    # status clients, e.g. grpcio-status, reject a call whose two messages differ);
    # Envoy's own reason is in the access log (details: %RESPONSE_CODE_DETAILS%).
    text += ("  body_format_override:\n"
             "    text_format_source: {inline_string: \"\"}\n"
             "    content_type: application/grpc\n")
    text += ("  headers_to_add:\n"
             f"  - header: {{key: grpc-message, value: \"{message}\"}}\n"
             "    append_action: OVERWRITE_IF_EXISTS_OR_ADD\n"
             f"  - header: {{key: grpc-status, value: \"{code_pb2.Code.Value(code)}\"}}\n"
             "    append_action: OVERWRITE_IF_EXISTS_OR_ADD\n"
             f"  - header: {{key: grpc-status-details-bin, value: \"{details}\"}}\n"
             "    append_action: OVERWRITE_IF_EXISTS_OR_ADD\n")
    return text


def render_grpc_local_replies() -> str:
    """``local_reply_config`` mappers for Envoy's own replies to gRPC / grpc-web clients
    (whole YAML lines): ``grpc-status`` per :data:`GRPC_LOCAL_REPLIES` (jwt_authn's
    rejections: UNAUTHENTICATED with TOKEN_REQUIRED / TOKEN_EXPIRED / TOKEN_INVALID) and
    ``grpc-status-details-bin`` with the google.rpc.Status. Envoy sends a gRPC local reply
    as trailers-only, so these headers are the call's trailers; ``grpc-message`` stays
    Envoy's own text (why it answered)."""
    out: list[str] = []

    def jwt_filter(match: str) -> str:
        return ("- metadata_filter:\n"
                "    matcher:\n"
                "      filter: envoy.filters.http.jwt_authn\n"
                "      path: [{key: jwt_failure}, {key: message}]\n"
                f"      value: {match}\n"
                "    match_if_key_not_found: false\n")

    for message, reason in JWT_FAILURE_REASONS.items():
        out.append(_grpc_mapper(f"jwt_authn: {message} -> {reason}", jwt_filter(f'{{string_match: {{exact: "{message}"}}}}'),
                                "UNAUTHENTICATED", reason, f"{message}: send authorization: Bearer <token>"))
    # jwt_authn answers a token for another audience with 403; every token it rejects
    # is UNAUTHENTICATED (PERMISSION_DENIED is for a valid caller's role).
    out.append(_grpc_mapper("jwt_authn: any other rejected token -> TOKEN_INVALID",
                            jwt_filter("{present_match: true}"), "UNAUTHENTICATED", "TOKEN_INVALID",
                            "the token was rejected (signature, issuer, audience or claims)"))
    for http, (code, reason, message) in sorted(GRPC_LOCAL_REPLIES.items()):
        status = ("- status_code_filter: {comparison: {op: EQ, value: "
                  f"{{default_value: {http}, runtime_key: edge.local_reply.grpc_{http}}}}}}}\n")
        out.append(_grpc_mapper(f"HTTP {http} -> {code} ({reason})", status, code, reason, message,
                                retry_after_s=1 if http == 429 else 0))
    out.append(_grpc_mapper("any other status -> UNKNOWN (reason INTERNAL)", "", "UNKNOWN", "INTERNAL",
                            "the edge answered with an unexpected status"))
    return "\n".join(_MAPPER_INDENT + line if line else line
                     for block in out for line in block.rstrip("\n").splitlines())


_PLAINTEXT_BLOCK = re.compile(r"^[ \t]*# \[plaintext-begin\].*?^[ \t]*# \[plaintext-end\][^\n]*\n", re.M | re.S)


def _plaintext(template: str, keep: bool) -> str:
    return template if keep else _PLAINTEXT_BLOCK.sub("", template)


_ROOT = Path(__file__).resolve().parents[2]
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


class TemplateError(ValueError):
    """The template and the values given do not match."""


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The edge's resource limits (Envoy; see envoy/README.md, "Limits").

    Every field has an ``EDGE_<FIELD>`` environment variable (``EDGE_MAX_CONNECTIONS``,
    ``EDGE_STREAMING_IDLE_TIMEOUT_S``, ...) read by :meth:`from_env`.
    """

    #: Open downstream connections, all edge listeners together (overload manager
    #: ``global_downstream_max_connections``); over it new connections are closed at once.
    #: Sized for 5,000 gRPC streams plus 500 grpc-web (one HTTP/1.1 connection each).
    max_connections: int = 20000
    #: HTTP/2 streams one client connection may have open (``SETTINGS_MAX_CONCURRENT_STREAMS``;
    #: a gRPC client queues calls beyond it).
    max_concurrent_streams: int = 1000
    #: Seconds a connection with no open request is kept (HTTP ``idle_timeout``).
    connection_idle_timeout_s: float = 300.0
    #: Seconds for all request headers to arrive once a request started (408 after).
    request_headers_timeout_s: float = 10.0
    #: Seconds a unary request may see nothing move either way (``stream_idle_timeout``).
    stream_idle_timeout_s: float = 300.0
    #: Seconds a streaming call (``Watch*``, ``Subscribe``, artifact up/downloads, health
    #: Watch) may see nothing move either way before Envoy resets it: a client that stops
    #: reading stalls the stream (flow control), so it is cut after this long. Above
    #: every keepalive the services send (watch heartbeats and health ``Watch``
    #: re-sends: every 15 s by default; ``Subscribe`` heartbeats and ``WatchSystemHealth``
    #: snapshots: at most every 300 s).
    streaming_idle_timeout_s: float = 900.0
    #: Seconds a unary call without a ``grpc-timeout`` (REST calls, gRPC calls with no
    #: deadline) may take: Envoy answers DEADLINE_EXCEEDED (504) after it.
    unary_timeout_s: float = 30.0
    #: Seconds a unary call *with* a ``grpc-timeout`` may take at most. Below this its
    #: own deadline applies (the client and the service enforce it; Envoy forwards the
    #: header); a longer ``grpc-timeout`` is cut here. Such calls' idle timeout is this
    #: too (a long call has nothing moving while the service works).
    grpc_timeout_max_s: float = 300.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise TemplateError(f"EDGE_{f.name.upper()} must be > 0, not {getattr(self, f.name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EdgeLimits:
        """The limits with ``EDGE_<FIELD>`` overrides; TemplateError names a bad variable."""
        env = os.environ if environ is None else environ
        values: dict[str, float | int] = {}
        for f in dataclasses.fields(cls):
            name = f"EDGE_{f.name.upper()}"
            raw = env.get(name, "").strip()
            if raw:
                try:
                    values[f.name] = int(raw) if f.type in (int, "int") else float(raw)
                except ValueError:
                    raise TemplateError(f"{name}={raw!r}: not a number") from None
        return cls(**values)  # type: ignore[arg-type]

    def values(self) -> dict[str, str]:
        """Template values: ``MAX_CONNECTIONS``, ..., durations as Envoy ``"<n>s"``."""
        return {
            "MAX_CONNECTIONS": str(self.max_connections),
            "MAX_CONCURRENT_STREAMS": str(self.max_concurrent_streams),
            "CONNECTION_IDLE_TIMEOUT": _duration(self.connection_idle_timeout_s),
            "REQUEST_HEADERS_TIMEOUT": _duration(self.request_headers_timeout_s),
            "STREAM_IDLE_TIMEOUT": _duration(self.stream_idle_timeout_s),
            "STREAMING_IDLE_TIMEOUT": _duration(self.streaming_idle_timeout_s),
            "UNARY_TIMEOUT": _duration(self.unary_timeout_s),
            "GRPC_TIMEOUT_MAX": _duration(self.grpc_timeout_max_s),
        }


def _duration(seconds: float) -> str:
    return f"{round(seconds, 3):g}s"


def default_template_path() -> Path:
    return _ROOT / "envoy" / "envoy.yaml.tmpl"


def default_descriptor_path() -> Path:
    return _ROOT / "gen" / "descriptor" / "agentforge.binpb"


def default_rest_strict_body_path() -> Path:
    return _ROOT / "envoy" / "rest_strict_body.lua"


def default_rest_schema_path() -> Path:
    return _ROOT / "gen" / "envoy" / "rest_schema.lua"


def default_dashboard_dir() -> Path:
    return _ROOT / "dashboard" / "dist"


#: Content types of the files Vite writes.
_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}
#: The page may load only its own scripts and styles and talk only to its own origin
#: (the edge); uPlot sizes its canvas through inline style attributes.
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
_ROUTE_INDENT = " " * 14
#: The transcoder rejects any non-gRPC request it cannot map to a method
#: (reject_unknown_method): the dashboard's routes switch it off.
# Static files: no transcoding, and no token (the page itself asks for one; the API
# calls it makes carry it). jwt_authn's per-route config overrides its path rules.
_NO_TRANSCODER = ('{envoy.filters.http.grpc_json_transcoder: {"@type": '
                  'type.googleapis.com/envoy.config.route.v3.FilterConfig, disabled: true}, '
                  'envoy.filters.http.jwt_authn: {"@type": '
                  'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig, disabled: true}}')


def _route_path(rel: str) -> str:
    if not all(c.isalnum() or c in "-_./" for c in rel):
        raise TemplateError(f"dashboard file with an unexpected name: {rel!r}")
    return "/" + rel


def render_dashboard_routes(dist: str | os.PathLike[str]) -> str:
    """Route entries serving the built dashboard in ``dist`` (whole YAML lines).

    ``GET /`` and ``/index.html`` answer ``index.html`` (no-cache: it names the current
    hashed assets); every other file answers at its path, hashed assets cached for a year
    (``immutable``). A file with a ``.gz`` beside it (the build writes them) is answered
    from that copy, with ``content-encoding: gzip``, to a request that accepts gzip. Envoy
    reads the files when it loads the config. Only GET and HEAD match; other methods
    fall through to the 404 route. Without ``dist/index.html``: one route answering
    ``/`` with 503 and how to build it.
    """
    root = Path(dist)
    index = root / "index.html"
    lines: list[str] = []

    def add(text: str) -> None:
        lines.extend(_ROUTE_INDENT + line for line in text.strip("\n").splitlines())

    method = '{name: ":method", string_match: {safe_regex: {regex: "GET|HEAD"}}}'
    if not index.is_file():
        add(f'''
- name: dashboard-not-built
  match: {{path: "/", headers: [{method}]}}
  direct_response:
    status: 503
    body: {{inline_string: "the dashboard is not built: run `make setup` (it builds dashboard/dist)"}}
  typed_per_filter_config: {_NO_TRANSCODER}
''')
        return "\n".join(lines)
    files = sorted(f for f in root.rglob("*") if f.is_file() and f.suffix != ".gz")
    for n, file in enumerate(files):
        rel = file.relative_to(root).as_posix()
        content_type = _CONTENT_TYPES.get(file.suffix, "application/octet-stream")
        is_index = rel == "index.html"
        cache = "no-cache" if is_index else (
            "public, max-age=31536000, immutable" if rel.startswith("assets/") else "public, max-age=300")
        headers = [("content-type", content_type), ("cache-control", cache), ("x-content-type-options", "nosniff")]
        if is_index:
            headers += [("content-security-policy", _CSP), ("referrer-policy", "no-referrer"),
                        ("x-frame-options", "DENY")]
        paths = ["/", "/index.html"] if is_index else [_route_path(rel)]
        gz = file.with_name(file.name + ".gz")
        for path in paths:
            variants = [(gz, True)] if gz.is_file() else []
            variants.append((file, False))
            for body, gzipped in variants:
                match = [method]
                extra = list(headers)
                if gzipped:
                    match.append('{name: accept-encoding, string_match: {contains: gzip}}')
                    extra += [("content-encoding", "gzip"), ("vary", "accept-encoding")]
                elif gz.is_file():
                    extra.append(("vary", "accept-encoding"))
                header_lines = "\n".join(
                    f"  - header: {{key: {k}, value: \"{_yaml_quoted('header', v)}\"}}\n"
                    f"    append_action: OVERWRITE_IF_EXISTS_OR_ADD" for k, v in extra)
                add(f'''
- name: dashboard-{n}{"-gz" if gzipped else ""}{"-root" if path == "/" else ""}
  match: {{path: "{path}", headers: [{", ".join(match)}]}}
  direct_response:
    status: 200
    body: {{filename: "{_check_text("DASHBOARD_DIR", str(body.resolve()))}"}}
  typed_per_filter_config: {_NO_TRANSCODER}
  response_headers_to_add:
{header_lines}
''')
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class OtlpEndpoint:
    """Where the edge's spans go: an OTLP collector (``grpc`` or ``http/protobuf``)."""

    host: str
    port: int
    protocol: str = "grpc"
    tls: bool = False
    #: The URL path of OTLP/HTTP (``/v1/traces``).
    path: str = "/v1/traces"


def otlp_endpoint_from_env(environ: Mapping[str, str] | None = None) -> OtlpEndpoint | None:
    """The collector of the OpenTelemetry SDK variables, read as the services read them:
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` (the full URL of the traces endpoint) or
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a base URL; OTLP/HTTP appends ``/v1/traces``), and
    ``OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL`` (``grpc`` by default, or ``http/protobuf``).
    None when no endpoint is set. :class:`TemplateError` for a URL without a host."""
    env = os.environ if environ is None else environ
    traces_url = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or "").strip()
    base_url = (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "").strip()
    url = traces_url or base_url
    if not url:
        return None
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "grpc").strip()
    if protocol not in ("grpc", "http/protobuf"):
        raise TemplateError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the edge speaks grpc or http/protobuf")
    parsed = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    if not parsed.hostname:
        raise TemplateError(f"OTLP endpoint {url!r}: no host")
    tls = parsed.scheme == "https"
    port = parsed.port or (4317 if protocol == "grpc" else 4318 if not tls else 443)
    if protocol == "grpc":
        return OtlpEndpoint(_check_text("OTLP host", parsed.hostname), port, protocol, tls)
    path = parsed.path if traces_url else parsed.path.rstrip("/") + "/v1/traces"
    return OtlpEndpoint(_check_text("OTLP host", parsed.hostname), port, protocol, tls, path or "/v1/traces")


def _trace_exporter(endpoint: OtlpEndpoint | None) -> str:
    """The tracer's exporter (one YAML line): always ``otel_collector``; Envoy's
    OpenTelemetry tracer must have one, and without a collector that cluster has no
    endpoint, so spans are dropped at once while the trace context still propagates."""
    if endpoint is not None and endpoint.protocol == "http/protobuf":
        scheme = "https" if endpoint.tls else "http"
        uri = f"{scheme}://{endpoint.host}:{endpoint.port}{endpoint.path}"
        return "http_service: " + json.dumps({"http_uri": {"uri": uri, "cluster": "otel_collector", "timeout": "2s"}})
    return "grpc_service: " + json.dumps({"envoy_grpc": {"cluster_name": "otel_collector"}, "timeout": "2s"})


def _sample_percent(ratio: float) -> str:
    if not 0.0 <= ratio <= 1.0:
        raise TemplateError(f"trace sample ratio {ratio!r}: not in 0..1")
    return f"{ratio * 100:.4f}".rstrip("0").rstrip(".")


def trace_sample_ratio_from_env(environ: Mapping[str, str] | None = None) -> float:
    """The share of requests the edge samples: the services' ratio (1.0 when the
    services use a sampler of their own, ``OTEL_TRACES_SAMPLER`` other than a ratio)."""
    from services.shared.tracing import sample_ratio
    ratio = sample_ratio(os.environ if environ is None else environ)
    return 1.0 if ratio is None else ratio


def _collector_cluster(endpoint: OtlpEndpoint | None) -> str:
    """The ``otel_collector`` cluster (one YAML flow mapping; no endpoint without a collector)."""
    cluster: dict[str, object] = {
        "name": "otel_collector",
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "otel_collector", "endpoints": []},
    }
    if endpoint is None or endpoint.protocol == "grpc":
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }}
    if endpoint is not None:
        address = {"socket_address": {"address": endpoint.host, "port_value": endpoint.port}}
        cluster["load_assignment"] = {"cluster_name": "otel_collector",
                                      "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}]}
        if endpoint.tls:
            cluster["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": endpoint.host}}
    return json.dumps(cluster)


def render_template(template: str, values: Mapping[str, str]) -> str:
    """Replace every ``${NAME}``; raise on a missing or an unused value."""
    used: set[str] = set()
    missing: list[str] = []

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            missing.append(name)
            return match.group(0)
        used.add(name)
        return values[name]

    out = _PLACEHOLDER.sub(substitute, template)
    if missing:
        raise TemplateError(f"no value for placeholder(s): {', '.join(sorted(set(missing)))}")
    unused = set(values) - used
    if unused:
        raise TemplateError(f"value(s) with no placeholder in the template: {', '.join(sorted(unused))}")
    return out


def _check_port(name: str, port: int) -> str:
    if not isinstance(port, int) or not 0 < port <= 65535:
        raise TemplateError(f"{name} must be a port in 1..65535, not {port!r}")
    return str(port)


def _check_text(name: str, value: str) -> str:
    """Values land in double-quoted YAML scalars: no quotes, newlines or backslashes."""
    if not value or any(c in value for c in '"\n\r\\'):
        raise TemplateError(f"{name}: unusable value {value!r}")
    return value


def _yaml_quoted(name: str, value: str) -> str:
    """A regex for a double-quoted YAML scalar, where a backslash starts an escape."""
    if not value or any(c in value for c in '"\n\r'):
        raise TemplateError(f"{name}: unusable value {value!r}")
    return value.replace("\\", "\\\\")


Upstream = tuple[str, int]


def _lb_endpoints(service: str, addrs: Upstream | Sequence[Upstream]) -> str:
    """A cluster's ``lb_endpoints`` as a YAML flow list: one ``(host, port)`` or several."""
    hosts = [addrs] if isinstance(addrs, tuple) and len(addrs) == 2 and isinstance(addrs[1], int) else list(addrs)
    if not hosts:
        raise TemplateError(f"{service}: no upstream address")
    key = service.upper()
    return json.dumps([
        {"endpoint": {"address": {"socket_address": {
            "address": _check_text(f"{key}_HOST", str(host).strip("[]")),
            "port_value": int(_check_port(f"{key}_PORT", port))}}}}
        for host, port in hosts
    ])


def render_envoy_config(
    *,
    listen_port: int,
    admin_port: int,
    upstreams: Mapping[str, Upstream | Sequence[Upstream]],
    descriptor_path: str | os.PathLike[str],
    template: str | None = None,
    listen_address: str = "127.0.0.1",
    admin_address: str = "127.0.0.1",
    cors_allow_origin_regex: str = DEFAULT_CORS_ALLOW_ORIGIN_REGEX,
    rest_strict_body_path: str | os.PathLike[str] | None = None,
    rest_schema_path: str | os.PathLike[str] | None = None,
    limits: EdgeLimits | None = None,
    dashboard_dir: str | os.PathLike[str] | None = None,
    jwks_path: str | os.PathLike[str] | None = None,
    mesh_secret: str | None = None,
    tls_cert_path: str | os.PathLike[str] | None = None,
    tls_key_path: str | os.PathLike[str] | None = None,
    jwt_issuer: str | None = None,
    jwt_audience: str | None = None,
    plaintext: bool = True,
    rate_limits: Mapping[str, RateLimit] | None = None,
    otlp_endpoint: OtlpEndpoint | None = None,
    trace_sample_ratio: float = 1.0,
) -> str:
    """The Envoy config text for these ports and upstreams.

    ``upstreams`` maps each of :data:`SERVICES` to its gRPC ``(host, port)``, or to a
    list of them when the service runs as several processes (realtime: Envoy spreads
    its streams over them, ``LEAST_REQUEST``, and health-checks each);
    ``template`` is template *text* (default: the contents of envoy/envoy.yaml.tmpl).
    Envoy needs real ports, so 0 ("pick a free one") is rejected here: the caller
    chooses free ports first. ``admin_address`` stays loopback unless the admin must
    be reachable from other containers of a private network (docker-compose): the
    admin API can stop Envoy and change its state, so it is never published.
    ``rest_strict_body_path`` and ``rest_schema_path`` are the Lua script and its
    generated schema that reject unknown REST body fields (default: this checkout's
    envoy/rest_strict_body.lua and gen/envoy/rest_schema.lua); Envoy loads them at start.
    ``limits``: the edge's resource limits (default :class:`EdgeLimits()`).
    ``dashboard_dir`` is the built dashboard served at ``/`` (default dashboard/dist;
    see :func:`render_dashboard_routes`).

    Auth: ``jwks_path``, ``mesh_secret``, ``tls_cert_path`` / ``tls_key_path`` default to
    the secrets directory's (:func:`services.shared.auth.ensure_dev_secrets`, created if
    missing); ``jwt_issuer`` / ``jwt_audience`` to :func:`services.shared.auth.issuer` /
    ``audience``. ``plaintext=False`` drops the loopback plaintext filter chain (TLS only).
    ``rate_limits``: per class (default :data:`RATE_LIMITS`).

    Tracing: Envoy starts a W3C trace for every request that has none and continues the
    caller's ``traceparent`` otherwise (OpenTelemetry tracer); its spans go to
    ``otlp_endpoint`` (:func:`otlp_endpoint_from_env`), or nowhere when None. It samples
    ``trace_sample_ratio`` (0..1) of the requests that arrive without a decision.
    """
    missing = [s for s in SERVICES if s not in upstreams]
    extra = [s for s in upstreams if s not in SERVICES]
    if missing or extra:
        raise TemplateError(f"upstreams must name exactly {SERVICES}; missing {missing}, unknown {extra}")
    values: dict[str, str] = {
        "EDGE_ADDRESS": _check_text("EDGE_ADDRESS", listen_address),
        "EDGE_PORT": _check_port("EDGE_PORT", listen_port),
        "ADMIN_ADDRESS": _check_text("ADMIN_ADDRESS", admin_address),
        "ADMIN_PORT": _check_port("ADMIN_PORT", admin_port),
        "DESCRIPTOR_PATH": _check_text("DESCRIPTOR_PATH", os.fspath(descriptor_path)),
        "CORS_ALLOW_ORIGIN_REGEX": _yaml_quoted("CORS_ALLOW_ORIGIN_REGEX", cors_allow_origin_regex),
        "REST_STRICT_BODY_LUA": _check_text("REST_STRICT_BODY_LUA", os.fspath(
            default_rest_strict_body_path() if rest_strict_body_path is None else rest_strict_body_path)),
        "REST_SCHEMA_LUA": _check_text("REST_SCHEMA_LUA", os.fspath(
            default_rest_schema_path() if rest_schema_path is None else rest_schema_path)),
        "DASHBOARD_ROUTES": render_dashboard_routes(
            default_dashboard_dir() if dashboard_dir is None else dashboard_dir),
    }
    values.update((limits or EdgeLimits()).values())
    for service, addrs in upstreams.items():
        values[f"{service.upper()}_LB_ENDPOINTS"] = _lb_endpoints(service, addrs)
    needs_secrets = None in (jwks_path, tls_cert_path, tls_key_path) or mesh_secret is None
    found = auth.ensure_dev_secrets() if needs_secrets else None
    values.update({
        "JWKS_PATH": _check_text("JWKS_PATH", os.fspath(jwks_path or found.jwks_path)),  # type: ignore[union-attr]
        "MESH_SECRET": _check_text("MESH_SECRET", mesh_secret or auth.mesh_secret()),
        "TLS_CERT_PATH": _check_text("TLS_CERT_PATH", os.fspath(tls_cert_path or found.tls_cert_path)),  # type: ignore[union-attr]
        "TLS_KEY_PATH": _check_text("TLS_KEY_PATH", os.fspath(tls_key_path or found.tls_key_path)),  # type: ignore[union-attr]
        "JWT_ISSUER": _check_text("JWT_ISSUER", jwt_issuer or auth.issuer()),
        "JWT_AUDIENCE": _check_text("JWT_AUDIENCE", jwt_audience or auth.audience()),
        "RATE_LIMIT_DESCRIPTORS": _descriptors(RATE_LIMITS if rate_limits is None else rate_limits),
        "RATE_LIMITED_STATUS_DETAILS": rate_limited_status_details(),
        "GRPC_LOCAL_REPLIES": render_grpc_local_replies(),
        "EDGE_TRACE_EXPORTER": _trace_exporter(otlp_endpoint),
        "OTEL_COLLECTOR_CLUSTER": _collector_cluster(otlp_endpoint),
        "TRACE_SAMPLE_PERCENT": _sample_percent(trace_sample_ratio),
    })
    text = default_template_path().read_text() if template is None else template
    return render_template(_plaintext(text, plaintext), values)


def _split_addr(name: str, addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise TemplateError(f"{name}={addr!r}: expected host:port")
    return host, int(port)


def values_from_env(environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Keyword arguments for :func:`render_envoy_config` from the variables above."""
    env = os.environ if environ is None else environ

    def required(name: str) -> str:
        value = env.get(name, "").strip()
        if not value:
            raise TemplateError(f"environment variable {name} is required")
        return value

    def port(name: str) -> int:
        raw = required(name)
        if not raw.isdigit():
            raise TemplateError(f"{name}={raw!r}: not a port")
        return int(raw)

    upstreams = {s: _split_addr(f"AF_{s.upper()}_ADDR", required(f"AF_{s.upper()}_ADDR")) for s in SERVICES}
    descriptor = env.get("ENVOY_DESCRIPTOR_PATH") or str(default_descriptor_path())
    strict_body = env.get("ENVOY_REST_STRICT_BODY_LUA") or str(default_rest_strict_body_path())
    schema = env.get("ENVOY_REST_SCHEMA_LUA") or str(default_rest_schema_path())
    dashboard = env.get("DASHBOARD_DIR") or str(default_dashboard_dir())
    return {
        "listen_port": port("EDGE_PORT"),
        "admin_port": port("ADMIN_PORT"),
        "listen_address": env.get("EDGE_ADDRESS") or "127.0.0.1",
        "admin_address": env.get("ADMIN_ADDRESS") or "127.0.0.1",
        "upstreams": upstreams,
        "descriptor_path": str(Path(descriptor).resolve()),
        "cors_allow_origin_regex": env.get("CORS_ALLOW_ORIGIN_REGEX") or DEFAULT_CORS_ALLOW_ORIGIN_REGEX,
        "rest_strict_body_path": str(Path(strict_body).resolve()),
        "rest_schema_path": str(Path(schema).resolve()),
        "limits": EdgeLimits.from_env(env),
        "dashboard_dir": str(Path(dashboard).resolve()),
        "tls_cert_path": env.get("EDGE_TLS_CERT") or None,
        "tls_key_path": env.get("EDGE_TLS_KEY") or None,
        "plaintext": (env.get("EDGE_PLAINTEXT") or "1").strip().lower() not in ("0", "false", "no", "off"),
        "rate_limits": rate_limits_from_env(env),
        "otlp_endpoint": otlp_endpoint_from_env(env),
        "trace_sample_ratio": trace_sample_ratio_from_env(env),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.launcher.envoy_config",
        description="Render envoy/envoy.yaml.tmpl from environment variables (see module docstring).",
    )
    parser.add_argument("--out", required=True, help="file to write ('-' for stdout)")
    args = parser.parse_args(argv)
    try:
        kwargs = values_from_env()
        template_path = os.environ.get("ENVOY_TEMPLATE")
        template = Path(template_path).read_text() if template_path else None
        text = render_envoy_config(template=template, **kwargs)  # type: ignore[arg-type]
    except (TemplateError, OSError) as exc:
        print(f"envoy_config: {exc}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:  # it holds the mesh secret: owner only
        out = Path(args.out)
        out.touch(mode=0o600)
        out.chmod(0o600)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
