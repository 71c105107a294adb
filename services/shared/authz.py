"""Authorization in every service: Envoy's identity, the caller's role, the audit log.

:class:`AuthInterceptor` runs before any handler (see the chain in
:mod:`services.shared.interceptors`) and, for every RPC except the public ones
(:data:`PUBLIC_METHODS`: grpc.health.v1, so probes need nothing):

1. requires :data:`~services.shared.auth.MESH_IDENTITY_HEADER` to equal the mesh
   secret (constant-time compare) — only Envoy and the services know it, so a call that
   went around the edge is refused with UNAUTHENTICATED (reason ``MESH_IDENTITY_REQUIRED``);
2. reads the claims Envoy verified from :data:`~services.shared.auth.CLAIMS_HEADER`
   (base64url JSON); none, unreadable, or expired beyond
   :data:`~services.shared.auth.CLOCK_SKEW_S` → UNAUTHENTICATED; a ``jti`` on the
   mesh's revocation list (:mod:`services.shared.revocation`) → UNAUTHENTICATED
   ``TOKEN_REVOKED``, and a stream opened with a token revoked later ends with it;
3. looks up the method's ``(agentforge.common.v1.access)`` option (the one permission
   table, in the contracts) and refuses a role below it with PERMISSION_DENIED (reason
   ``ROLE_REQUIRED``, metadata ``required_role`` and ``role``). A method without the
   option is open to admins only, but for server reflection (:data:`REFLECTION_METHODS`,
   viewers and above);
4. publishes the caller as :data:`principal_var` for handlers (topic
   rules) and, for a token with an ``exp``, sets :data:`~services.shared.context.
   stream_expiry_var`, so the stream interceptor ends a stream when its token expires;
5. publishes the method's rule as :data:`rule_var`: for an ``owner_scoped`` method the
   handler calls :func:`require_owner` with the resource's recorded creator once it has
   loaded it (trainers act only on what they created; reason ``NOT_RESOURCE_OWNER``);
6. writes one audit record (JSON line) per call of a ``mutating`` method, allowed or
   refused: time, service, method, subject, role, resource, outcome (gRPC code),
   request id (:class:`AuditLog`).

Calls a service makes to a peer carry the same two headers, with the service's own
claims (:func:`outgoing_metadata`, used by :func:`services.shared.client.make_channel`).
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import hmac
import json
import logging
import logging.handlers
import os
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf import message as pb_message

from agentforge.common.v1 import access_pb2
from services.shared import auth
from services.shared import revocation
from services.shared.context import request_id_var, stream_expiry_var, stream_revoked_var
from services.shared.errors import ForgeError, PermissionDenied, Unauthenticated, abort_with
from services.shared.interceptors import CallInfo, CallInterceptor, outcome_code

__all__ = [
    "AuditLog",
    "AuthInterceptor",
    "MethodRule",
    "PRINCIPAL_CACHE_SIZE",
    "PUBLIC_METHODS",
    "REFLECTION_METHODS",
    "ROLE_NAMES",
    "acting_for",
    "acting_for_var",
    "creator_subject",
    "current_principal",
    "method_rule",
    "outgoing_metadata",
    "principal_var",
    "require_owner",
    "rule_var",
    "set_service_identity",
]

_log = logging.getLogger(__name__)
_audit_log = logging.getLogger("agentforge.audit")

#: Methods anyone may call without Envoy's identity or a token (``/pkg.Svc/`` prefixes).
PUBLIC_METHODS: tuple[str, ...] = ("/grpc.health.v1.Health/",)

#: gRPC server reflection (v1 and v1alpha): reading the schema, which every role may do
#: (the README's and security.md's ``grpcurl … list`` with any token; the edge's ``read``
#: route class). It has no access option of ours, being grpc's own contract.
REFLECTION_METHODS: tuple[str, ...] = ("/grpc.reflection.v1.ServerReflection/",
                                       "/grpc.reflection.v1alpha.ServerReflection/")

#: ``access_pb2.Role`` value → role name of the tokens.
ROLE_NAMES: Mapping[int, str] = {
    access_pb2.ROLE_VIEWER: "viewer",
    access_pb2.ROLE_TRAINER: "trainer",
    access_pb2.ROLE_OPERATOR: "operator",
    access_pb2.ROLE_ADMIN: "admin",
}

#: The caller of the RPC being handled (None outside an RPC or for public methods).
principal_var: contextvars.ContextVar[auth.Principal | None] = contextvars.ContextVar(
    "af_principal", default=None
)

#: The access rule of the RPC being handled (owner checks read its ``owner_scoped``).
rule_var: "contextvars.ContextVar[MethodRule | None]" = contextvars.ContextVar("af_rule", default=None)

#: Work a service does for a user outside that user's RPC (a phase run's saga, resumed
#: after a restart too): the subject it acts for, sent as ``act_for`` on outgoing calls.
acting_for_var: contextvars.ContextVar[str] = contextvars.ContextVar("af_acting_for", default="")

_service_name = "unknown"


def set_service_identity(name: str) -> None:
    """Name this process's service (``services/<name>`` in its own outgoing calls)."""
    global _service_name
    _service_name = name


def current_principal() -> auth.Principal | None:
    return principal_var.get()


def creator_subject(principal: auth.Principal | None = None) -> str:
    """Who a resource created in this call belongs to: the caller's ``sub``; for a peer
    service, the user it acts for (its ``act_for`` claim), else the service itself.

    ``act_for`` is honoured only in a service's claims (role ``service``, which only a
    caller holding the mesh secret can present); a user token's ``act_for`` is ignored.
    """
    principal = principal or principal_var.get()
    if principal is None:
        return ""
    if principal.is_service:
        acted = principal.claims.get("act_for")
        if isinstance(acted, str) and acted:
            return acted
    return principal.subject


def require_owner(resource: str, creator: str) -> None:
    """Refuse a trainer acting on a resource another subject created.

    Applies when the RPC being handled is ``owner_scoped`` (its access option, the one
    table): the caller passes if it is an operator or above (the ``service`` role
    included), or if :func:`creator_subject` of the caller equals ``creator``. Otherwise
    PermissionDenied, reason ``NOT_RESOURCE_OWNER``, metadata ``resource``, ``creator``
    and ``subject``. A resource without a creator (made before creators were recorded)
    belongs to nobody: only operators and above may act on it. Outside an RPC (no rule,
    no caller) it does nothing: the service's own work is not scoped.
    """
    rule = rule_var.get()
    principal = principal_var.get()
    if rule is None or not rule.owner_scoped or principal is None:
        return
    if principal.at_least("operator"):
        return
    subject = creator_subject(principal)
    if creator and subject == creator:
        return
    whose = f"was created by {creator!r}" if creator else "has no recorded creator"
    raise PermissionDenied(
        f"{resource} {whose}; a {principal.role} may act only on what they created — ask its "
        "creator or an operator",
        reason="NOT_RESOURCE_OWNER",
        metadata={"resource": resource, "creator": creator, "subject": subject},
    )


@contextlib.contextmanager
def acting_for(subject: str) -> Iterator[None]:
    """Outgoing calls inside the block say they act for ``subject`` (``act_for``)."""
    reset = acting_for_var.set(subject)
    try:
        yield
    finally:
        acting_for_var.reset(reset)


@dataclass(frozen=True, slots=True)
class MethodRule:
    """The access rule of one method, from its proto option."""

    role: str  # weakest role allowed
    mutating: bool
    owner_scoped: bool
    declared: bool  # False: no option on the method (admin only)


#: Distinct claims headers whose decoded Principal an AuthInterceptor keeps (then it starts over).
PRINCIPAL_CACHE_SIZE = 4096

_ADMIN_ONLY = MethodRule("admin", mutating=True, owner_scoped=False, declared=False)
_REFLECTION = MethodRule("viewer", mutating=False, owner_scoped=False, declared=False)
_rules: dict[str, MethodRule] = {}


def method_rule(method: str, pool: descriptor_pool.DescriptorPool | None = None) -> MethodRule:
    """The rule of ``/pkg.Service/Method`` (admins only when it declares none)."""
    cached = _rules.get(method)
    if cached is not None:
        return cached
    rule = _resolve_rule(method, pool or descriptor_pool.Default())
    _rules[method] = rule
    return rule


def _import_service(service: str) -> None:
    package, _, short = service.rpartition(".")
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in short).lstrip("_")
    with contextlib.suppress(ImportError, ValueError):
        __import__(f"{package}.{snake}_pb2")


def _resolve_rule(method: str, pool: descriptor_pool.DescriptorPool) -> MethodRule:
    if method.startswith(REFLECTION_METHODS):
        return _REFLECTION
    service, _, name = method.lstrip("/").rpartition("/")
    try:
        service_desc = pool.FindServiceByName(service)
    except KeyError:
        _import_service(service)
        try:
            service_desc = pool.FindServiceByName(service)
        except KeyError:
            return _ADMIN_ONLY
    method_desc = service_desc.methods_by_name.get(name)
    if method_desc is None:
        return _ADMIN_ONLY
    options = method_desc.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return _ADMIN_ONLY
    access = options.Extensions[access_pb2.access]
    return MethodRule(
        role=ROLE_NAMES.get(access.role, "admin"),
        mutating=access.mutating,
        owner_scoped=access.owner_scoped,
        declared=True,
    )


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in context.invocation_metadata() or ():
        if isinstance(item.value, str):
            found.setdefault(item.key, item.value)
    return found


_RESOURCE_FIELDS = ("name", "parent", "topic", "phase", "model_id", "jti")


def _resource_of(message: Any) -> str:
    """The resource a request names: its ``name``, ``parent``, ``topic`` … field."""
    if not isinstance(message, pb_message.Message):
        return ""
    fields = message.DESCRIPTOR.fields_by_name
    for field_name in _RESOURCE_FIELDS:
        if field_name in fields and fields[field_name].type == fields[field_name].TYPE_STRING:
            value = getattr(message, field_name)
            if value:
                return str(value)
    return ""


class AuditLog:
    """JSON lines, one per mutating call, appended to ``path`` (and logged).

    ``path``: ``$AF_AUDIT_LOG``, else ``$AF_DATA_DIR/audit/<service>.jsonl``, else none
    (records go to the ``agentforge.audit`` logger only).
    """

    def __init__(self, service: str, path: Path | None = None) -> None:
        self.service = service
        self.path = path if path is not None else self.default_path(service)
        self._lock = threading.Lock()
        # The file stays open between records (an open and a close per mutating call,
        # on the event loop, were most of a record's cost); WatchedFileHandler reopens
        # it when it was moved or deleted (logrotate), as its stat per record notices.
        self._file: logging.handlers.WatchedFileHandler | None = None

    @staticmethod
    def default_path(service: str, environ: Mapping[str, str] | None = None) -> Path | None:
        env = os.environ if environ is None else environ
        explicit = env.get("AF_AUDIT_LOG", "").strip()
        if explicit:
            return Path(explicit)
        data = env.get("AF_DATA_DIR", "").strip()
        return Path(data) / "audit" / f"{service}.jsonl" if data else None

    def record(self, **fields: Any) -> dict[str, Any]:
        doc = {
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "service": self.service,
            **fields,
        }
        line = json.dumps(doc, separators=(",", ":"), default=str)
        _audit_log.info("audit", extra={"audit": doc})
        if self.path is not None:
            try:
                with self._lock:
                    self._append(line)
            except OSError:
                _log.exception("cannot write the audit log %s", self.path)
        return doc

    def _append(self, line: str) -> None:
        assert self.path is not None
        record = logging.makeLogRecord({"msg": line})
        try:
            if self._file is None:
                self._file = self._open()
            self._file.emit(record)
        except FileNotFoundError:  # the directory went away: make it again, once
            self.close_file()
            self._file = self._open()
            self._file.emit(record)

    def _open(self) -> logging.handlers.WatchedFileHandler:
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handler = _AuditFile(self.path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(message)s"))
        return handler

    def close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def close(self) -> None:
        with self._lock:
            self.close_file()


class _AuditFile(logging.handlers.WatchedFileHandler):
    """The audit file: a failed write raises (AuditLog logs it) instead of printing."""

    def handleError(self, record: logging.LogRecord) -> None:
        raise  # noqa: PLE0704 - called inside emit's except block: re-raises its error


class AuthInterceptor(CallInterceptor):
    """Mesh identity, role per method and audit (see the module docstring)."""

    def __init__(self, domain: str, service: str, *, secret: str | None = None,
                 audit: AuditLog | None = None) -> None:
        self._domain = domain
        self._secret = (secret or auth.mesh_secret()).encode()
        self._audit = audit or AuditLog(service)
        self._resources: dict[int, str] = {}
        self._pending: dict[int, tuple[MethodRule, auth.Principal | None, ForgeError]] = {}
        # Claims header value -> its Principal: the header is the same on every call of
        # one token (Envoy forwards the verified payload unchanged), so it is decoded once.
        self._principals: dict[str, auth.Principal] = {}

    @property
    def domain(self) -> str:
        return self._domain

    @contextlib.asynccontextmanager
    async def around(self, call: CallInfo) -> AsyncIterator[None]:
        if call.method.startswith(PUBLIC_METHODS):
            yield
            return
        rule = method_rule(call.method)
        principal: auth.Principal | None = None
        refusal: ForgeError | None = None
        try:
            principal = self._authenticate(call)
            self._authorize(rule, principal)
        except ForgeError as exc:
            refusal = exc
        key = id(call)
        error: BaseException | None = None
        watching = contextlib.ExitStack()
        try:
            if refusal is not None:
                if call.grpc_type in ("unary", "server_stream"):
                    # Refused in on_request, which sees the request before the handler
                    # runs, so the audit record can name the resource.
                    self._pending[key] = (rule, principal, refusal)
                else:
                    await self._refuse(call, rule, principal, refusal)
            else:
                principal_var.set(principal)
                rule_var.set(rule)
                if principal is not None and principal.expires_at is not None:
                    stream_expiry_var.set(principal.expires_at)
                revocations = revocation.process_list()
                jti = _jti(principal)
                if revocations is not None and jti and call.grpc_type in ("server_stream", "bidi_stream"):
                    stream_revoked_var.set(watching.enter_context(revocations.watch(jti)))
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            watching.close()
            if refusal is None and rule.mutating:
                self._write_audit(call, rule, principal, outcome_code(error, call.context).name)
            self._resources.pop(key, None)
            self._pending.pop(key, None)

    async def on_request(self, call: CallInfo, message: Any) -> None:
        if call.method.startswith(PUBLIC_METHODS):
            return
        key = id(call)
        if key not in self._resources:
            self._resources[key] = _resource_of(message)
        pending = self._pending.pop(key, None)
        if pending is not None:
            await self._refuse(call, *pending)

    async def _refuse(self, call: CallInfo, rule: MethodRule, principal: auth.Principal | None,
                      refusal: ForgeError) -> None:
        if rule.mutating:
            self._write_audit(call, rule, principal, refusal.code.name)
        await abort_with(call.context, refusal, self._domain)

    def _write_audit(self, call: CallInfo, rule: MethodRule, principal: auth.Principal | None,
                     outcome: str) -> None:
        self.write_audit(call.method, principal, self._resources.get(id(call), ""), outcome)

    def write_audit(self, method: str, principal: auth.Principal | None, resource: str, outcome: str) -> None:
        """One audit record for a call of ``method`` (the request id is the running RPC's)."""
        on_behalf = principal.claims.get("act_for") if principal is not None else None
        self._audit.record(
            method=method,
            subject=principal.subject if principal else None,
            role=principal.role if principal else None,
            on_behalf_of=on_behalf,
            resource=resource,
            outcome=outcome,
            request_id=request_id_var.get(),
        )

    def _authenticate(self, call: CallInfo) -> auth.Principal:
        md = _metadata(call.context)
        return self.authenticate(md.get(auth.MESH_IDENTITY_HEADER), md.get(auth.CLAIMS_HEADER))

    def authenticate(self, mesh_identity: str | None, claims_header: str | None) -> auth.Principal:
        """The caller named by the two headers Envoy adds; :class:`Unauthenticated` if none.

        ``mesh_identity``/``claims_header``: the first string value of
        :data:`~services.shared.auth.MESH_IDENTITY_HEADER` / :data:`~services.shared.auth.CLAIMS_HEADER`.
        Decoded claims are kept per header value (at most :data:`PRINCIPAL_CACHE_SIZE`);
        expiry is checked on every call.
        """
        presented = (mesh_identity or "").encode()
        if not presented or not hmac.compare_digest(presented, self._secret):
            raise Unauthenticated(
                "this service accepts calls only through the edge (Envoy); send them there",
                reason="MESH_IDENTITY_REQUIRED",
            )
        if not claims_header:
            raise Unauthenticated("no verified token: send authorization: Bearer <token>",
                                  reason="TOKEN_REQUIRED")
        principal = self._principals.get(claims_header)
        if principal is None:
            try:
                principal = auth.Principal.from_claims(auth.decode_claims_header(claims_header))
            except ValueError as exc:
                raise Unauthenticated(f"unreadable claims: {exc}", reason="TOKEN_INVALID") from None
            if not principal.subject or not principal.role:
                raise Unauthenticated("the token names no subject or role", reason="TOKEN_INVALID")
            if len(self._principals) >= PRINCIPAL_CACHE_SIZE:
                self._principals.clear()
            self._principals[claims_header] = principal
        if principal.expires_at is not None and principal.expires_at + auth.CLOCK_SKEW_S < time.time():
            raise Unauthenticated("the token has expired", reason="TOKEN_EXPIRED")
        revocations = revocation.process_list()
        if revocations is not None and revocations.is_revoked(_jti(principal)):
            raise Unauthenticated("the token was revoked; get a new one", reason="TOKEN_REVOKED")
        return principal

    def authorize(self, rule: MethodRule, principal: auth.Principal) -> None:
        """:class:`PermissionDenied` unless ``principal``'s role meets ``rule``."""
        self._authorize(rule, principal)

    @staticmethod
    def _authorize(rule: MethodRule, principal: auth.Principal) -> None:
        if not principal.at_least(rule.role):
            raise PermissionDenied(
                f"role {principal.role!r} may not call this method; it needs {rule.role} or above",
                reason="ROLE_REQUIRED",
                metadata={"required_role": rule.role, "role": principal.role},
            )


def _jti(principal: auth.Principal | None) -> str:
    jti = principal.claims.get("jti") if principal is not None else None
    return jti if isinstance(jti, str) else ""


def outgoing_metadata(existing: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """Headers a service adds to its calls to a peer: the mesh secret and its own claims.

    The claims name the service (role ``service``) and the user it acts for
    (``act_for``): inside an RPC, its caller (or the user a calling service acted for);
    in work begun outside one, :func:`acting_for`'s subject. Audit records downstream say
    who started the work, and what it creates is that user's (:func:`creator_subject`).
    Headers already present are kept.
    """
    have = {k.lower() for k in (existing or {})}
    items: list[tuple[str, str]] = []
    if auth.MESH_IDENTITY_HEADER not in have:
        items.append((auth.MESH_IDENTITY_HEADER, auth.mesh_secret()))
    if auth.CLAIMS_HEADER not in have:
        claims = auth.service_claims(_service_name)
        principal = principal_var.get()
        acted = acting_for_var.get()
        if not acted and principal is not None:
            # a user's call: that user; a peer service's call: the user it acts for, if any
            acted = principal.subject if not principal.is_service else str(principal.claims.get("act_for") or "")
        if acted:
            claims["act_for"] = acted
        items.append((auth.CLAIMS_HEADER, auth.encode_claims_header(claims)))
    return items
