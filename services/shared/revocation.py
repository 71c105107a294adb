"""Per-token revocation: the mesh's list of revoked ``jti`` claims, kept in Valkey.

One sorted set, :data:`KEY` (``af:auth:revoked``): member = the token's ``jti``
(RFC 7519 §4.1.7), score = until when to remember it (the token's ``exp``, Unix
seconds). Nothing is kept past a token's own life: entries whose score is older than
``now - CLOCK_SKEW_S`` are pruned on every write and every refresh, since the token is
refused as expired by then anyway.

* :meth:`RevocationList.revoke` records one (``MonitoringService.RevokeToken``, the
  admin door; ``make revoke``). Valkey away → :class:`~services.shared.errors.Unavailable`:
  the revocation was NOT recorded and the caller is told so.
* Every service runs one :class:`RevocationList` (:func:`acquire`, by
  :func:`services.shared.server.build_server` when ``REDIS_URL`` is set): it reads the
  whole set every ``AF_REVOCATION_REFRESH_S`` (default 1 s) into memory, so checking a
  call costs no Valkey round trip; :class:`~services.shared.authz.AuthInterceptor`
  refuses a revoked ``jti`` with UNAUTHENTICATED, reason ``TOKEN_REVOKED``.
* Open streams: the interceptor registers each stream's ``jti`` (:meth:`watch`); when a
  refresh finds it revoked, the stream's event is set and the stream interceptor ends the
  stream with a last ``stream_end`` = UNAUTHENTICATED ``TOKEN_REVOKED``. So a revocation
  reaches every call and every stream within about one refresh interval.

**Valkey away: fail open on the last known list.** A refresh that fails keeps the list
already in memory (revocations made before the outage stay enforced) and is retried; a
WARNING is logged once per outage. Calls are not refused for the outage itself: every
service but the health checks already needs Valkey, and refusing all calls would also
take down the health page that shows the outage. The gap: a revocation cannot be made
during the outage (RevokeToken answers UNAVAILABLE), and a service that starts during
one admits tokens until its first successful read (logged). See docs/security.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator

from redis.asyncio import Redis

from services.shared.auth import CLOCK_SKEW_S
from services.shared.errors import as_domain_error

__all__ = ["DEFAULT_MAX_TTL_S", "KEY", "RevocationList", "acquire", "process_list", "release"]

_log = logging.getLogger(__name__)

#: The sorted set of revoked ``jti`` → expiry (Unix seconds).
KEY = "af:auth:revoked"
#: How long a revocation without a known expiry is kept: the longest token life allowed.
DEFAULT_MAX_TTL_S = 30 * 86400.0


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


class RevocationList:
    """The revoked ``jti`` set of one process: in memory, refreshed from Valkey.

    ``url``: the Valkey URL (``REDIS_URL``); ``client``: an existing ``redis.asyncio``
    client instead. ``refresh_s``: seconds between reads (``AF_REVOCATION_REFRESH_S``).
    """

    def __init__(self, url: str = "", *, client: Redis | None = None, key: str = KEY,
                 refresh_s: float | None = None, max_ttl_s: float | None = None) -> None:
        if client is None and not url:
            raise ValueError("a RevocationList needs a Valkey url or client")
        self._client = client or Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0,
                                                decode_responses=True)
        self._owns_client = client is None
        self.key = key
        self.refresh_s = refresh_s if refresh_s is not None else _env_float("AF_REVOCATION_REFRESH_S", 1.0)
        self.max_ttl_s = max_ttl_s if max_ttl_s is not None else _env_float("AF_REVOCATION_MAX_TTL_S",
                                                                             DEFAULT_MAX_TTL_S)
        self._revoked: dict[str, float] = {}
        self._watchers: dict[str, set[asyncio.Event]] = {}
        #: True once the list has been read from Valkey at least once.
        self.loaded = False
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    # -- checks (no I/O) ----------------------------------------------------------
    def is_revoked(self, jti: str) -> bool:
        """Whether ``jti`` is on the list as last read (an expired entry counts: harmless)."""
        return bool(jti) and jti in self._revoked

    @contextlib.contextmanager
    def watch(self, jti: str) -> Iterator[asyncio.Event]:
        """An event set when ``jti`` is found revoked, for the life of the block (a stream)."""
        event = asyncio.Event()
        if self.is_revoked(jti):
            event.set()
        watchers = self._watchers.setdefault(jti, set())
        watchers.add(event)
        try:
            yield event
        finally:
            watchers.discard(event)
            if not watchers:
                self._watchers.pop(jti, None)

    # -- Valkey ---------------------------------------------------------------------
    async def revoke(self, jti: str, expires_at: float | None = None) -> float:
        """Record ``jti`` as revoked until ``expires_at`` (Unix s; None: now + ``max_ttl_s``).

        Returns the expiry kept (the later of an earlier revocation's and this one's).
        Raises Unavailable (reason ``DEPENDENCY_UNAVAILABLE``) when Valkey is away: the
        revocation was not recorded. Also applies it to this process at once.
        """
        until = float(expires_at) if expires_at is not None else time.time() + self.max_ttl_s
        if not math.isfinite(until):
            raise ValueError("expires_at must be finite")
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zadd(self.key, {jti: until}, gt=True)  # adds, or keeps the later expiry
                pipe.zremrangebyscore(self.key, "-inf", time.time() - CLOCK_SKEW_S)
                pipe.zscore(self.key, jti)
                *_, kept = await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - only "Valkey away" is expected
            raise as_domain_error(exc) from exc
        kept_until = float(kept) if kept is not None else until
        self._apply({**self._revoked, jti: kept_until})
        return kept_until

    async def refresh(self) -> bool:
        """Read the whole list once; False (list kept as it was) when Valkey is away."""
        now = time.time()
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zremrangebyscore(self.key, "-inf", now - CLOCK_SKEW_S)
                pipe.zrange(self.key, 0, -1, withscores=True)
                _, rows = await pipe.execute()
        except Exception as exc:  # noqa: BLE001
            if not self._failing:
                _log.warning("cannot read the token revocation list (%r); enforcing the last one read "
                             "(%d entries)%s", exc, len(self._revoked),
                             "" if self.loaded else " — none yet: no token is refused as revoked until then")
            self._failing = True
            return False
        if self._failing:
            _log.info("token revocation list readable again (%d entries)", len(rows))
        self._failing = False
        self.loaded = True
        self._apply({str(jti): float(score) for jti, score in rows})
        return True

    def _apply(self, revoked: dict[str, float]) -> None:
        self._revoked = revoked
        for jti, watchers in self._watchers.items():
            if jti in revoked:
                for event in watchers:
                    event.set()

    async def run(self) -> None:
        """Refresh every ``refresh_s`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.refresh_s)

    async def start(self, first_read_budget_s: float = 2.0) -> None:
        """Read once (within ``first_read_budget_s``), then keep refreshing in a task."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.refresh(), first_read_budget_s)
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="token revocation list")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_client:
            await self._client.aclose()


_process_list: RevocationList | None = None
_users = 0


def process_list() -> RevocationList | None:
    """This process's list (None when the service runs without Valkey: none revoked)."""
    return _process_list


async def acquire(url: str) -> RevocationList:
    """The process's list for ``url``, started on first use (one per process, shared by
    the servers a process runs); pair with :func:`release`."""
    global _process_list, _users
    if _process_list is None:
        _process_list = RevocationList(url)
        await _process_list.start()
    _users += 1
    return _process_list


async def release() -> None:
    """One user less; the last one stops the refresh and closes the connection."""
    global _process_list, _users
    _users = max(0, _users - 1)
    if _users == 0 and _process_list is not None:
        revocations, _process_list = _process_list, None
        await revocations.aclose()


# -- command line (make revoke) ----------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m services.shared.revocation --jti J [--exp S] | --token T``: revoke
    through the edge (``MonitoringService.RevokeToken``, REST), as an admin whose token
    is minted from the development key (so: run where ``.secrets/`` is)."""
    import argparse
    import datetime as dt
    import sys

    import httpx

    from services.shared import auth

    parser = argparse.ArgumentParser(prog="make revoke", description=main.__doc__)
    parser.add_argument("--jti", default="", help="the token's jti claim")
    parser.add_argument("--exp", type=float, default=None, help="the token's exp (Unix s); default: the longest life")
    parser.add_argument("--token", default="", help="the token itself: its jti and exp are read from it")
    parser.add_argument("--reason", default="")
    parser.add_argument("--edge", default=f"http://127.0.0.1:{os.environ.get('EDGE_PORT', '8080')}",
                        help="the edge's URL (default http://127.0.0.1:$EDGE_PORT)")
    args = parser.parse_args(argv)
    jti, exp = args.jti, args.exp
    if args.token:
        try:
            claims = auth.decode_claims_header(args.token.strip().split(".")[1])
        except (IndexError, ValueError) as exc:
            print(f"revoke: not a JWT: {exc}", file=sys.stderr)
            return 2
        jti = jti or str(claims.get("jti") or "")
        exp = exp if exp is not None else (float(claims["exp"]) if isinstance(claims.get("exp"), (int, float))
                                           else None)
    if not jti:
        print("usage: make revoke JTI=<jti> [EXP=<unix seconds>] | make revoke TOKEN=<token>", file=sys.stderr)
        return 2
    body: dict[str, str] = {"jti": jti, "reason": args.reason}
    if exp is not None:
        try:  # a Timestamp is 0001-01-01 .. 9999-12-31 (google/protobuf/timestamp.proto)
            body["expireTime"] = dt.datetime.fromtimestamp(exp, dt.UTC).isoformat().replace("+00:00", "Z")
        except (ValueError, OverflowError, OSError):
            print(f"revoke: EXP={exp!r} is not a Unix time in seconds before the year 10000", file=sys.stderr)
            return 2
    admin = auth.mint_token("admin", subject="make-revoke", ttl_s=60)
    try:
        resp = httpx.post(f"{args.edge}/v1/revokedTokens", json=body, timeout=30,
                          headers={"authorization": f"Bearer {admin}"})
    except httpx.HTTPError as exc:
        print(f"revoke: cannot reach the edge at {args.edge}: {exc} (is `make up` running?)", file=sys.stderr)
        return 1
    if resp.status_code != 200:
        print(f"revoke: {resp.status_code} {resp.text}", file=sys.stderr)
        return 1
    print(resp.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
