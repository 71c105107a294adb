"""Idempotency keys: a ``request_id`` reused with a different request is an error.

Every create-like RPC takes a client-chosen ``request_id`` (AIP-155): a retry with the
same id returns what the first call made. A *different* request under an id already
used is a client bug that silently returning the first object would hide, so — as
Stripe's idempotency keys do — it fails with INVALID_ARGUMENT, reason
``REQUEST_ID_REUSED``, naming ``request_id``.

:class:`IdempotencyInterceptor` does this once for every service: for each unary method
whose request message has a top-level ``string request_id``, it keeps the SHA-256 of the
request (deterministic protobuf serialization, ``request_id`` cleared) per
``(method, request_id)`` in a small SQLite table (:class:`IdempotencyKeys`, schema
versioned with ``PRAGMA user_version``; ``:memory:`` when the service has no data
directory). Before the handler runs, a known key with another fingerprint is rejected;
a fingerprint is recorded only after the handler succeeded (a request that failed, e.g.
validation, leaves no key behind, as with Stripe), and two concurrent first calls with
different bodies are settled by the first record: the loser gets the error.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf import message as pb_message

from services.shared.dbthread import DatabaseThread
from services.shared.errors import InvalidArgument
from services.shared.migrations import Step, migrate

__all__ = ["IdempotencyInterceptor", "IdempotencyKeys", "REQUEST_ID_FIELD", "fingerprint"]

REQUEST_ID_FIELD = "request_id"
#: The store's schema, step by step (services/shared/migrations.py). Append only.
_MIGRATIONS: dict[int, Step] = {
    1: """CREATE TABLE IF NOT EXISTS idempotency_keys (
            method TEXT NOT NULL,
            request_id TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            create_time REAL NOT NULL,
            PRIMARY KEY (method, request_id))""",
}


def fingerprint(request: pb_message.Message) -> str:
    """SHA-256 hex of ``request`` without its ``request_id`` (deterministic bytes)."""
    copy = type(request)()
    copy.CopyFrom(request)
    copy.ClearField(REQUEST_ID_FIELD)
    return hashlib.sha256(copy.SerializeToString(deterministic=True)).hexdigest()


class IdempotencyKeys:
    """``(method, request_id) → fingerprint``, first write wins. Thread-safe."""

    def __init__(self, path: Path | str = ":memory:") -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        #: The store's thread (the interceptor's calls: off the event loop, in order).
        self.db = DatabaseThread("idempotency-db")
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            # the shared runner (schema_version table); step 1 is idempotent, so files made
            # when this store counted in PRAGMA user_version adopt it as they are
            migrate(self._db, _MIGRATIONS, store=f"idempotency keys {path}")

    def get(self, method: str, request_id: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT fingerprint FROM idempotency_keys WHERE method=? AND request_id=?",
                                   (method, request_id)).fetchone()
        return None if row is None else str(row[0])

    def record(self, method: str, request_id: str, digest: str) -> str:
        """Store ``digest`` unless the key exists; the fingerprint now stored."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO idempotency_keys VALUES (?, ?, ?, ?)",
                             (method, request_id, digest, time.time()))
            row = self._db.execute("SELECT fingerprint FROM idempotency_keys WHERE method=? AND request_id=?",
                                   (method, request_id)).fetchone()
        return str(row[0])

    def close(self) -> None:
        self.db.close()
        with self._lock:
            self._db.close()


def _reused(request_id: str) -> InvalidArgument:
    return InvalidArgument(
        "request_id was already used for a different request; use a new request_id for a new request",
        [(REQUEST_ID_FIELD, "already used for a request with a different body")],
        reason="REQUEST_ID_REUSED",
    )


class IdempotencyInterceptor(grpc.aio.ServerInterceptor):
    """Reject a ``request_id`` reused with a different request (see the module doc)."""

    def __init__(self, keys: IdempotencyKeys | None = None) -> None:
        self._keys = keys or IdempotencyKeys()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        request_class = getattr(handler.request_deserializer, "__self__", None)
        descriptor = getattr(request_class, "DESCRIPTOR", None)
        if descriptor is not None and REQUEST_ID_FIELD not in descriptor.fields_by_name:
            return handler  # no request_id: nothing to check, no wrapper to pay for
        method = handler_call_details.method
        inner = handler.unary_unary
        keys = self._keys

        async def unary_unary(request: Any, context: Any) -> Any:
            if not isinstance(request, pb_message.Message):
                return await inner(request, context)
            field = request.DESCRIPTOR.fields_by_name.get(REQUEST_ID_FIELD)
            request_id = getattr(request, REQUEST_ID_FIELD, "") if field is not None else ""
            if not isinstance(request_id, str) or not request_id:
                return await inner(request, context)
            digest = fingerprint(request)
            known = await keys.db(keys.get, method, request_id)
            if known is not None and known != digest:
                raise _reused(request_id)
            response = await inner(request, context)
            if known is None and await keys.db(keys.record, method, request_id, digest) != digest:
                raise _reused(request_id)
            return response

        return grpc.unary_unary_rpc_method_handler(
            unary_unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
